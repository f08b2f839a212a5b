"""Command line: ``taid-vlm train | eval | compare | cache-teacher | make-synthetic | plan | demo``.

Each command is a ``main``-style function taking ``argv`` and returning an exit status, so tests
call them directly (STYLE.md 9).
"""

from __future__ import annotations

import argparse
import os
import sys

COMMANDS = {
    "train": "distil (or SFT) a student: taid-vlm train CONFIG.yaml [key.sub=value ...] [--resume auto]",
    "eval": "score a model on VQA, captioning or text: taid-vlm eval --model DIR --task vqa --data FILE",
    "compare": "table + bar chart of several results files: taid-vlm compare A.json B.json",
    "cache-teacher": "run the teacher once, store its top-k: taid-vlm cache-teacher CONFIG.yaml --output DIR",
    "make-synthetic": "write the built-in synthetic VQA/caption set: taid-vlm make-synthetic --output DIR",
    "plan": "per-device memory of each teacher placement: taid-vlm plan CONFIG.yaml --gpus 8 --gpu-memory 80GB",
    "demo": "the whole job on the synthetic set: data, teacher, TAID/FKL/SFT students, evaluation",
}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The ``CONFIG.yaml [key.sub=value ...]`` positionals of train, plan and cache-teacher."""
    # nargs="?": argparse would otherwise call the optional overrides "required" too when the
    # config is missing; parse_config_args says that the config alone is.
    parser.add_argument("config", nargs="?", help="YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", help="optional dotted overrides, e.g. train.lr=3e-4 loss.name=fkl")


def parse_config_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parse_intermixed_args`` (overrides may follow options) with a clear error for a missing config."""
    args = parser.parse_intermixed_args(argv)
    if args.config is None:
        parser.error("the following argument is required: config (a YAML recipe, e.g. configs/tiny_vlm_taid.yaml)")
    return args


def train_main(argv: list[str]) -> int:
    """``taid-vlm train CONFIG.yaml [key.sub=value ...] [--resume auto|DIR]``."""
    parser = argparse.ArgumentParser(prog="taid-vlm train", description=COMMANDS["train"])
    add_config_args(parser)
    parser.add_argument("--resume", default=None, help="'auto' (latest checkpoint in output_dir) or a folder")
    args = parse_config_args(parser, argv)
    from taid_vlm.config import ConfigError
    from taid_vlm.config_io import load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"taid-vlm train: config error: {err}", file=sys.stderr)
        return 2
    from taid_vlm.data.preflight import DataError
    from taid_vlm.data.types import SkipSample
    from taid_vlm.train.checkpoint import StorageError
    from taid_vlm.train.loop import DivergedError, train

    try:
        metrics = train(cfg, resume=args.resume)
    except DataError as err:  # no usable record, or too many bad ones: nothing (more) was trained
        print(f"taid-vlm train: data error: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"taid-vlm train: config error: {err}", file=sys.stderr)
        return 2
    except SkipSample as err:  # only data.strict=true lets a bad record stop the run
        print(f"taid-vlm train: data error (data.strict=true stops at the first bad record; set "
              f"data.strict=false to skip and count such records): {err}", file=sys.stderr)
        return 2
    except StorageError as err:
        print(f"taid-vlm train: storage error: {err.strerror or err}", file=sys.stderr)
        return 2
    except DivergedError as err:
        print(f"taid-vlm train: training diverged: {err}; the last checkpoint is kept "
              f"(resume with --resume auto after the fix)", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line per run, not per process
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        empty = metrics.get("empty_steps", 0)
        steps = f"{metrics.get('trained_steps', '?')} optimizer steps trained" + (
            f" ({empty} more held no usable record and changed nothing)" if empty else "")
        print(f"taid-vlm train: done; {steps}; final student in {cfg.train.output_dir}/final; {shown}")
    return 0


def _dispatch(command: str, rest: list[str]) -> int:
    if command == "train":
        return train_main(rest)
    if command == "eval":
        from taid_vlm.evaluation.runner import eval_main

        return eval_main(rest)
    if command == "compare":
        from taid_vlm.evaluation.compare import compare_main

        return compare_main(rest)
    if command == "cache-teacher":
        from taid_vlm.cache.writer import cache_main

        return cache_main(rest)
    if command == "make-synthetic":
        from taid_vlm.data.synthetic import main_make_synthetic

        return main_make_synthetic(rest)
    if command == "plan":
        from taid_vlm.train.plan import plan_main

        return plan_main(rest)
    if command == "demo":
        from taid_vlm.demo.run import demo_main

        return demo_main(rest)
    raise AssertionError(command)


def main(argv: list[str] | None = None) -> int:
    """Run the ``taid-vlm`` command line; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
        print("usage: taid-vlm COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ntaid-vlm: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from taid_vlm.config import ConfigError

    try:
        return _dispatch(argv[0], argv[1:])
    except ConfigError as err:  # any command: a bad setting is a message naming it and exit 2
        print(f"taid-vlm {argv[0]}: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
