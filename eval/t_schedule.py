"""TAID's t over training for several alpha / t_start values, and adaptive vs linear on the score.

    python eval/t_schedule.py            # default preset
    python eval/t_schedule.py --quick    # tiny preset (used by a test)

Writes ``t_schedule.json``, ``t_schedule.md`` and ``t_schedule.png`` to --output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taid_vlm.studies import open_study, provenance, study_parser, write_study
from taid_vlm.train_log import read_log

GRID = [  # (name, t_start, alpha, adaptive)
    ("linear t0=0.4", 0.4, 5e-4, False),
    ("adaptive t0=0.4 a=5e-4", 0.4, 5e-4, True),
    ("adaptive t0=0.4 a=5e-3", 0.4, 5e-3, True),
    ("adaptive t0=0.4 a=5e-2", 0.4, 5e-2, True),
    ("adaptive t0=0.2 a=5e-3", 0.2, 5e-3, True),
    ("adaptive t0=0.6 a=5e-3", 0.6, 5e-3, True),
]


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        ax.plot(r["steps"], r["t"], label=f"{r['name']} (VQA {r['vqa_accuracy']:.1f})")
    ax.set(xlabel="optimizer step", ylabel="t", title="TAID interpolation parameter t", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/eval_t_schedule")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    study = open_study(args)
    teacher = study.teacher()
    grid = GRID[:3] if args.quick else GRID
    runs = []
    for i, (name, t0, alpha, adaptive) in enumerate(grid):
        res = study.student("taid", args.seed, teacher, name=f"taid_{i}",
                            overrides={"taid": {"t_start": t0, "alpha": alpha, "adaptive": adaptive}})
        log = read_log(Path(res["run"]) / "logs" / "train.jsonl")
        runs.append({**res, "name": name, "t_start": t0, "alpha": alpha, "adaptive": adaptive,
                     "steps": [r["step"] for r in log], "t": [r["taid_t"] for r in log]})
    report = {**provenance(argv, "eval/t_schedule.py"), "preset": study.preset_name, "runs": runs}
    rows = ["| schedule | final t | t at 25% | VQA acc | CIDEr x100 |", "|---|---|---|---|---|"]
    for r in runs:
        q = r["t"][len(r["t"]) // 4]
        rows.append(f"| {r['name']} | {r['t'][-1]:.3f} | {q:.3f} | {r['vqa_accuracy']:.1f} | {r['cider']:.1f} |")
    out = write_study(args.output, "t_schedule", f"TAID schedule ({study.preset_name} preset)", report,
                      "\n".join(rows))
    _plot(runs, out / "t_schedule.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
