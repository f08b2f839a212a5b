"""Command-line entry point: ``taid-vlm <command> ...``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``taid-vlm`` command line; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    print("taid-vlm: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
