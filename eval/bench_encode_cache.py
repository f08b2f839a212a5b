"""The encoding cache on the demo's run: encode cost per batch and whole-run time, cache off vs on.

    python eval/bench_encode_cache.py                 # demo preset, forward KL student, 200 steps
    python eval/bench_encode_cache.py --quick         # tiny preset, 20 steps (used by a test)

Two measures, side by side in one process so machine load hits both alike:

- ``collate``: the demo's ``PairCollator`` (student and teacher sides) over the batches of
  ``--steps`` optimizer steps in the trainer's order, one thread, with ``data.encode_cache_mb`` 0
  and the default; seconds per batch, and a check that both give identical batches.
- ``train``: the whole run (``train(cfg)``, the demo's loader worker, torch's default threads),
  cache off then on, wall seconds and seconds per step.

The demo's set has 2,000 records and 32 per batch, so a 400-step run draws each record about 6
times: only the first draw is encoded with the cache. Writes ``bench_encode_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _config(work: Path, name: str, steps: int, cache_mb: int, quick: bool) -> dict:
    from taid_vlm.demo.presets import PRESETS
    from taid_vlm.demo.run import stage_data, student_config

    preset = PRESETS["tiny" if quick else "default"]
    paths = stage_data(work, preset)
    # A live teacher (no teacher cache): both sides are encoded, as in any run without a cache.
    return student_config(work / name, paths, preset, "fkl", 0, paths["teacher"], None,
                          {"data": {"encode_cache_mb": cache_mb}, "train": {"max_steps": steps}})


def time_collate(cfg_dict: dict, steps: int) -> dict:
    """Seconds per batch of the run's collator, cache off and on, over the same batches."""
    from taid_vlm.config_io import config_from_dict
    from taid_vlm.train.data_order import micro_batch_loader
    from taid_vlm.train.setup import build_run

    torch.set_num_threads(1)
    out: dict = {}
    batches = {}
    for label, mb in (("off", 0), ("on", 512)):
        cfg = {**cfg_dict, "data": {**cfg_dict["data"], "encode_cache_mb": mb},
               "train": {**cfg_dict["train"], "output_dir": f"{cfg_dict['train']['output_dir']}_{label}",
                         "overwrite": True}}
        parts = build_run(config_from_dict(cfg))
        loader = micro_batch_loader(parts.plan, parts.samples, 0, steps, None, 0)
        draws = list(loader)
        t0 = time.perf_counter()
        batches[label] = [parts.collate(d) for d in draws]
        out[f"{label}_s_per_batch"] = (time.perf_counter() - t0) / len(draws)
        if mb:
            out["hits"], out["misses"] = parts.collate.cache.hits, parts.collate.cache.misses
            out["cache_mb"] = parts.collate.cache.bytes / 2**20
    out["identical_batches"] = all(
        torch.equal(a[side][k], b[side][k]) for a, b in zip(batches["off"], batches["on"])
        for side in ("student", "teacher") for k in a[side])
    out["speedup"] = out["off_s_per_batch"] / out["on_s_per_batch"]
    return out


def time_train(work: Path, steps: int, quick: bool) -> dict:
    """Wall seconds of the whole run, cache off then on (fresh output folders)."""
    import shutil

    from taid_vlm.config_io import config_from_dict
    from taid_vlm.train.loop import train

    torch.set_num_threads(torch.get_num_threads())
    out = {}
    for label, mb in (("off", 0), ("on", 512)):
        cfg = _config(work, f"train_{label}", steps, mb, quick)
        shutil.rmtree(cfg["train"]["output_dir"], ignore_errors=True)
        t0 = time.perf_counter()
        train(config_from_dict(cfg))
        out[f"{label}_s"] = time.perf_counter() - t0
    out["speedup"] = out["off_s"] / out["on_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 200, quick 20)")
    ap.add_argument("--work", default="runs/bench_encode_cache")
    ap.add_argument("--output", default="eval/results")
    args = ap.parse_args(argv)
    from taid_vlm.demo.studies import provenance

    steps = args.steps or (20 if args.quick else 200)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    report = {**provenance(argv, "eval/bench_encode_cache.py"), "steps": steps,
              "preset": "tiny" if args.quick else "default", "torch_threads_train": threads}
    report["collate"] = time_collate(_config(work, "collate", steps, 0, args.quick), steps)
    torch.set_num_threads(threads)
    report["train"] = time_train(work, steps, args.quick)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_encode_cache.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
