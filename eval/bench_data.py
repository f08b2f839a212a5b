"""Data at corpus scale: time and peak memory of a run to 2 optimizer steps vs the number of records.

    python eval/bench_data.py                      # 64, 200,000 and 2,000,000 LLaVA records
    python eval/bench_data.py --quick              # 64 and 2,000 records (used by a test)
    python eval/bench_data.py --sizes 64 200000 --repeats 2

Each size is a LLaVA JSON list whose records cycle over the same 64 synthetic images (ids unique).
Each run is a fresh process (``taid-vlm train``, tiny composed TAID student and teacher, 2 steps,
batch 4) with a fresh ``datasets`` cache, so the one-time JSON -> Arrow conversion is included;
``warm`` repeats it with that cache kept. Peak RSS is the process's ``ru_maxrss``; ``cpu_s`` its
user + system CPU time, which contention on a shared machine does not inflate as it does wall time
(torch runs 2 threads, so on a quiet machine wall time is at most the CPU time). Writes
``bench_data.json`` to --output, with the machine's load average: the machine is shared, so
compare sizes measured side by side in one file, not across files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from taid_vlm.demo.presets import _composed
from taid_vlm.demo.studies import provenance

STUDENT = _composed(32, 1, 32, 1, 32, 8, "mlp")
TEACHER = _composed(48, 1, 64, 1, 32, 8, "mlp")
GOALS = {"seconds_200k": 20.0, "peak_rss_mb_200k": 1500.0, "rss_growth_2m_vs_200k_mb": 100.0}

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from taid_vlm.cli import main
rc = main(["train", sys.argv[1]])
ru = resource.getrusage(resource.RUSAGE_SELF)
print("BENCH " + json.dumps({"rc": rc, "in_process_s": time.perf_counter() - t0,
      "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}))
"""


def write_records(path: Path, base: list[dict], n: int) -> None:
    """``n`` records cycling over ``base`` (each a new id), written one at a time."""
    with open(path, "w") as fh:
        fh.write("[\n")
        for i in range(n):
            rec = dict(base[i % len(base)], id=f"r{i}")
            fh.write(("," if i else "") + json.dumps(rec) + "\n")
        fh.write("]\n")


def setup(work: Path) -> dict[str, str]:
    """64 synthetic records + images and a tokenizer (made once per --output)."""
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    data = work / "data"
    if not (work / "tokenizer").is_dir():
        generate_synthetic(data, seed=0, n_train=64, n_val=8, image_size=32)
        train_bpe_tokenizer(synthetic_corpus(data), vocab_size=320).save_pretrained(work / "tokenizer")
    return {"base": str(data / "train.json"), "tokenizer": str(work / "tokenizer")}


def run_once(work: Path, env: dict[str, str], data_file: Path, cache: Path, name: str) -> dict:
    cfg = {
        "student": {"family": "composed", "config": STUDENT, "tokenizer": env["tokenizer"]},
        "teacher": {"family": "composed", "config": TEACHER},
        "data": {"train": str(data_file), "image_root": str(Path(env["base"]).parent), "max_length": 128,
                 "cache_dir": str(cache)},
        "loss": {"name": "taid"},
        "train": {"output_dir": str(work / "runs" / name), "max_steps": 2, "batch_size": 4, "lr": 1e-3,
                  "cpu": True, "overwrite": True},
        "logging": {"report_to": [], "progress": False},
    }
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(cfg_path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"run {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(line[6:])
    report = json.loads((work / "runs" / name / "final" / "metrics.json").read_text())["data_report"]
    return {"seconds": wall, **out, "data_read": report["read"], "load_avg_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default="eval/results")
    ap.add_argument("--work", default="runs/bench_data")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 200_000, 2_000_000])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="64 and 2,000 records")
    args = ap.parse_args(argv)
    sizes = [64, 2000] if args.quick else args.sizes
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = setup(work)
    base = json.loads(Path(env["base"]).read_text())
    rows = []
    for n in sizes:
        data_file = Path(env["base"]).parent / f"bench_{n}.json"
        if not data_file.is_file():
            write_records(data_file, base, n)
        for r in range(args.repeats):
            cache = work / f"cache_{n}"
            shutil.rmtree(cache, ignore_errors=True)
            cold = run_once(work, env, data_file, cache, f"n{n}_r{r}")
            warm = run_once(work, env, data_file, cache, f"n{n}_r{r}_warm")
            rows.append({"records": n, "repeat": r, "file_mb": data_file.stat().st_size / 2**20,
                         "cold": cold, "warm": warm})
            print(f"{n:>9} records  cold {cold['seconds']:.1f} s (cpu {cold['cpu_s']:.1f} s) "
                  f"{cold['peak_rss_mb']:.0f} MB   warm {warm['seconds']:.1f} s (cpu {warm['cpu_s']:.1f} s) "
                  f"{warm['peak_rss_mb']:.0f} MB   load {cold['load_avg_1m']:.1f}", flush=True)
    report = {**provenance(argv, "eval/bench_data.py"), "goals": GOALS, "rows": rows,
              "note": "shared 2-core machine: load_avg_1m is the 1-minute load average when each run ended"}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_data.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
