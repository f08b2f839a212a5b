"""TAID's t over training for several alpha / t_start values, and adaptive vs linear on the score.

    python eval/t_schedule.py            # default preset, 2 seeds per schedule
    python eval/t_schedule.py --quick    # tiny preset (used by a test)

Writes ``t_schedule.json``, ``t_schedule.md`` and ``t_schedule.png`` to --output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taid_vlm.demo.studies import (
    SCORE_HEADER,
    open_study,
    provenance,
    score_cells,
    score_summary,
    study_parser,
    write_study,
)
from taid_vlm.losses import TAIDSchedule
from taid_vlm.train.run_log import read_log

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

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    for r in runs:
        ax.plot(r["steps"], r["t"], label=r["name"])
    ax.set(xlabel="optimizer step", ylabel="t", title="TAID interpolation parameter t (seed 0)", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    bx.barh([r["name"] for r in runs], [r["vqa_mean"] for r in runs], xerr=[r["vqa_sd"] for r in runs],
            color=["tab:gray" if not r["adaptive"] else "tab:red" for r in runs], capsize=3)
    bx.set(xlabel="student VQA accuracy (mean ± sd over seeds)")
    bx.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_name(t0: float, alpha: float, adaptive: bool, seed: int) -> str | None:
    """Rows with TAID's default t_start/alpha are eval/methods.py's taid / taid_linear runs (None
    keeps their names, so a shared --work folder reuses them); the others get their own folder."""
    default = TAIDSchedule()  # the loss's own defaults (loss.taid.* unset)
    if (t0, alpha) == (default.t_start, default.alpha):
        return None
    return f"student_taid_t{t0}_a{alpha:g}{'' if adaptive else '_linear'}_s{seed}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/eval_t_schedule")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per schedule (default 2, quick 1)")
    args = ap.parse_args(argv)
    study = open_study(args)
    teacher = study.teacher()
    grid = GRID[:3] if args.quick else GRID
    seeds = range(args.seeds or (1 if args.quick else 2))
    runs = []
    for name, t0, alpha, adaptive in grid:
        per_seed = []
        for s in seeds:
            run_name = _run_name(t0, alpha, adaptive, s)
            # A default row is methods.py's run: its config must be that run's (method spec alone, no
            # overrides), or the shared --work folder would hold two configs under one name and each
            # script would retrain the other's run.
            overrides = None if run_name is None else {"loss": {"taid": {"t_start": t0, "alpha": alpha,
                                                                          "adaptive": adaptive}}}
            per_seed.append(study.student("taid" if adaptive else "taid_linear", s, teacher, name=run_name,
                                          overrides=overrides))
        log = read_log(study.run_dir(per_seed[0]) / "logs" / "train.jsonl")
        runs.append({"name": name, "t_start": t0, "alpha": alpha, "adaptive": adaptive, "seeds": per_seed,
                     **score_summary(per_seed), "steps": [r["step"] for r in log], "t": [r["taid_t"] for r in log]})
    report = {**provenance(argv, "eval/t_schedule.py"), "preset": study.preset_name, "runs": runs}
    rows = [f"| schedule | t at 25% | t at 50% | final t | {SCORE_HEADER} |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        q, h = r["t"][len(r["t"]) // 4], r["t"][len(r["t"]) // 2]
        rows.append(f"| {r['name']} | {q:.3f} | {h:.3f} | {r['t'][-1]:.3f} | {score_cells(r)} |")
    out = write_study(args.output, "t_schedule", f"TAID schedule ({study.preset_name} preset)", report,
                      "\n".join(rows))
    _plot(runs, out / "t_schedule.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
