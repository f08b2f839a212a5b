"""``taid-vlm compare``: several results side by side as a Markdown table and a PNG bar chart."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Counters, not scores: they would dwarf the scores in a bar chart and mean nothing side by side.
_NOT_SCORES = {"num_tokens", "num_skipped"}


def _load(item: str | Path | dict) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    p = Path(item)
    if not p.is_file():
        raise FileNotFoundError(f"results file {str(p)!r} does not exist")
    return json.loads(p.read_text(encoding="utf-8"))


def flat_scores(result: dict[str, Any]) -> dict[str, float]:
    """Numeric scores of one result: a ``runner`` results dict (``scores``, prefixed with the task
    when several are nested), or a plain ``{metric: value}`` dict."""
    if isinstance(result.get("scores"), dict):
        src = result["scores"]
    else:
        src = result
    out: dict[str, float] = {}
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(value.get("scores", value), dict):
            inner = flat_scores(value)
            out.update({f"{key}/{k}": v for k, v in inner.items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in _NOT_SCORES:
            out[key] = float(value)
    return out


def _default_name(item: Any, index: int) -> str:
    if isinstance(item, (str, Path)):
        p = Path(item)
        return p.parent.name if p.stem.startswith("results") and p.parent.name else p.stem
    model = item.get("model") if isinstance(item, dict) else None
    return Path(model).name if model else f"run {index + 1}"


def markdown_table(names: Sequence[str], rows: Sequence[dict[str, float]]) -> str:
    """One row per run, one column per metric (union, first-seen order); '-' where a run lacks it."""
    metrics: list[str] = []
    for r in rows:
        metrics += [m for m in r if m not in metrics]
    lines = ["| run | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, r in zip(names, rows):
        cells = [f"{r[m]:.4g}" if m in r else "-" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(names: Sequence[str], rows: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per metric, one bar per run; saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    metrics: list[str] = []
    for r in rows:
        metrics += [m for m in r if m not in metrics]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(metrics) * max(1, len(names)) ** 0.5 + 2), 4))
    for i, (name, r) in enumerate(zip(names, rows)):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        vals = [r.get(m, 0.0) for m in metrics]
        bars = ax.bar(xs, vals, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.3g}" if m in r else "" for v, m in zip(vals, metrics)], fontsize=7)
    tilt = len(metrics) > 4  # long metric names overlap when there are many
    ax.set_xticks(range(len(metrics)), metrics, rotation=20 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel("score")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_results(items: Sequence[str | Path | dict], names: Sequence[str] | None = None,
                    output: str | Path = "compare") -> tuple[str, Path]:
    """Table + chart of several results.

    Args:
        items: results JSON paths or dicts (``runner`` results or flat ``{metric: value}``).
        names: one label per item (default: the model folder / file name).
        output: folder for ``compare.md`` and ``compare.png``.
    Returns:
        ``(markdown table, path of the PNG)``.
    """
    if not items:
        raise ValueError("compare needs at least one results file")
    if names is not None and len(names) != len(items):
        raise ValueError(f"{len(names)} names for {len(items)} results")
    rows = [flat_scores(_load(x)) for x in items]
    names = list(names) if names is not None else [_default_name(x, i) for i, x in enumerate(items)]
    empty = [n for n, r in zip(names, rows) if not r]
    if empty:
        raise ValueError(f"no numeric scores in: {', '.join(empty)}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(names, rows)
    (out / "compare.md").write_text(table + "\n", encoding="utf-8")
    return table, bar_chart(names, rows, out / "compare.png")


def compare_main(argv: list[str] | None = None) -> int:
    """``taid-vlm compare RESULTS.json... [--output DIR] [--names A B ...]``; returns an exit status."""
    p = argparse.ArgumentParser(prog="taid-vlm compare", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="results JSON files written by taid-vlm eval")
    p.add_argument("--output", default="compare", help="folder for compare.md and compare.png")
    p.add_argument("--names", nargs="+", default=None, help="one label per results file")
    args = p.parse_args(argv)
    try:
        table, png = compare_results(args.results, args.names, args.output)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as err:
        print(f"taid-vlm compare: error: {err}", file=sys.stderr)
        return 2
    print(table)
    print(f"taid-vlm compare: table in {Path(args.output) / 'compare.md'}, chart in {png}")
    return 0
