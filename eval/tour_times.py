"""Wall time of the README's commands: start-up (help, a config error, plan) and the tour, in order.

    python eval/tour_times.py --workdir /tmp/tour            # every tour command, full length
    python eval/tour_times.py --workdir /tmp/tour --startup  # only the start-up commands
    python eval/tour_times.py --workdir /tmp/tour --start 5  # go on from the 6th tour command
    python eval/tour_times.py --markdown                     # the README's table from the JSON

Start-up: ``taid-vlm --help``, ``taid-vlm train RECIPE train.lrr=1`` (an unknown key), the same
with ``loss.name=taidd`` (checked against a torch-free name list), ``taid-vlm plan`` of the 1.5B recipe;
each a fresh process, 3 times, all numbers kept. Tour: every ``taid-vlm`` / ``accelerate launch``
line of the README's bash blocks, run as written (full length, no overrides) in ``--workdir`` with
a copy of ``configs/``, one after another; the first failure stops the tour (later commands need
its outputs). Writes ``tour_times.json`` to --output as it goes, with the machine's load average
before each command: the machine may be shared, and contention inflates wall time. ``--start N``
goes on in a --workdir that holds the outputs of the first N commands (a tour stopped part-way) and
keeps the rows already in the JSON for those N.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP = [["--help"], ["train", "configs/tiny_vlm_taid.yaml", "train.lrr=1"],
           ["train", "configs/tiny_vlm_taid.yaml", "loss.name=taidd"],
           ["plan", "configs/taid_llm_1p5b.yaml", "--gpus", "8", "--gpu-memory", "80GB"]]


def tour_commands() -> list[str]:
    """The ``taid-vlm`` / ``accelerate launch`` lines of the README's bash blocks, in order."""
    text = (ROOT / "README.md").read_text()
    lines = [ln.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for ln in b.splitlines()]
    return [ln for ln in lines if ln.startswith(("taid-vlm ", "accelerate launch "))]


def timed(argv: list[str], cwd: Path) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return {"seconds": round(time.perf_counter() - t0, 2), "returncode": proc.returncode, "load_1min_before": load,
            "stderr_tail": proc.stderr[-1500:] if proc.returncode != 0 else ""}


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def markdown(report: dict) -> str:
    """The tour as a Markdown table: each command, its wall time and the load average before it."""
    rows = ["| command | wall time | 1-min load before |", "|---|---|---|"]
    for r in report["tour"]:
        status = "" if r["returncode"] == 0 else f" (exit {r['returncode']})"
        rows.append(f"| `{r['command']}` | {_duration(r['seconds'])}{status} | {r['load_1min_before']:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir")
    ap.add_argument("--output", default=str(ROOT / "eval" / "results"))
    ap.add_argument("--startup", action="store_true", help="only the start-up commands")
    ap.add_argument("--start", type=int, default=0,
                    help="skip the first N tour commands (their outputs must be in --workdir already); "
                         "the JSON keeps its rows for them")
    ap.add_argument("--markdown", action="store_true", help="print the tour table of --output's tour_times.json")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads((Path(args.output) / "tour_times.json").read_text())))
        return 0
    if not args.workdir:
        ap.error("--workdir is required to time the commands")
    from taid_vlm.demo.studies import provenance

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "configs", work / "configs", dirs_exist_ok=True)
    out = Path(args.output) / ("startup_times.json" if args.startup else "tour_times.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {**provenance(argv if argv is not None else sys.argv[1:], "eval/tour_times.py"),
              "cpu_count": os.cpu_count(), "startup": [], "tour": []}
    commands = [] if args.startup else tour_commands()
    if args.start:
        if not out.is_file():
            ap.error(f"--start {args.start}: {out} holds no earlier rows to keep")
        earlier = json.loads(out.read_text())
        kept = [r for r in earlier.get("tour", []) if r["command"] in commands[:args.start]]
        if [r["command"] for r in kept] != commands[:args.start]:
            ap.error(f"--start {args.start}: {out} does not hold rows for the first {args.start} commands")
        report["tour"], report["startup"] = kept, earlier.get("startup", [])
        report["earlier_rows_from"] = {k: earlier.get(k) for k in ("date", "command", "machine")}
    for cmd in [] if args.start else STARTUP:
        runs = [timed([str(BIN / "taid-vlm"), *cmd], work) for _ in range(3)]
        report["startup"].append({"command": "taid-vlm " + " ".join(cmd), "runs": runs})
        out.write_text(json.dumps(report, indent=2))
    for line in commands[args.start:]:
        argv_ = shlex.split(line)
        argv_[0] = str(BIN / argv_[0])
        row = {"command": line, **timed(argv_, work)}
        report["tour"].append(row)
        out.write_text(json.dumps(report, indent=2))
        print(f"{row['seconds']:>8.1f} s  rc={row['returncode']}  {line}", flush=True)
        if row["returncode"] != 0:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
