"""Does distillation still pay against SFT trained for its best number of steps?

    python eval/sft_steps.py --work runs/studies_v3    # default preset, shares the demo's runs
    python eval/sft_steps.py --quick                   # tiny preset (used by a test)

The demo and eval/methods.py train every method for the same steps, as the paper does. With few
labels SFT overfits on held-out NLL, so a reader may ask whether the distilled students only win
because SFT ran too long. This trains SFT students for several step counts (each a full run with
its own learning-rate schedule, seeds as in methods.py) and pairs the distilled students of the
preset's step count, seed by seed, with SFT at the step count that scored best on the held-out
set. Choosing that count on the held-out set itself favours SFT: the comparison is conservative
for distillation. Writes ``sft_steps.json/.md/.png`` to --output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taid_vlm.demo.studies import (
    SCORE_HEADER,
    difference_table,
    open_study,
    paired_by_seed,
    provenance,
    score_cells,
    score_summary,
    study_parser,
    write_study,
)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    steps = [c["steps"] for c in report["sft"]]
    for ax, key, label in ((axes[0], "nll", "held-out NLL/token (lower is better)"),
                           (axes[1], "vqa", "VQA accuracy")):
        ax.errorbar(steps, [c[f"{key}_mean"] for c in report["sft"]], yerr=[c[f"{key}_sd"] for c in report["sft"]],
                    fmt="o-", color="k", capsize=3, label="SFT (no teacher)")
        for i, (m, s) in enumerate(report["distilled"].items()):
            ax.axhline(s[f"{key}_mean"], color=f"C{i}", ls="--", label=f"{m}, {report['preset_steps']} steps")
        ax.set(xlabel="SFT optimizer steps", ylabel=label, title=f"SFT by steps vs distilled students: {label}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/eval_sft_steps")
    ap.add_argument("--steps", default=None, help="comma list of SFT step counts (default 125,250,350,500; "
                                                   "quick: half and all of the quick steps)")
    ap.add_argument("--methods", default="fkl,taid,dkd", help="distilled methods, at the preset's steps")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3, quick 1)")
    args = ap.parse_args(argv)
    study = open_study(args)
    preset_steps = study.preset["student_train"]["max_steps"]
    counts = ([int(x) for x in args.steps.split(",")] if args.steps
              else [preset_steps // 2, preset_steps] if args.quick else [125, 250, 350, 500])
    seeds = range(args.seeds or (1 if args.quick else 3))
    teacher = study.teacher()
    methods = args.methods.split(",")
    # The preset's step count keeps methods.py's run names and config, so a --work folder shared
    # with the demo and methods.py reuses those students.
    sft_runs = {n: [study.student("sft", s, None, name=None if n == preset_steps else f"student_sft_{n}steps_s{s}",
                                  overrides=None if n == preset_steps else {"train": {"max_steps": n}})
                    for s in seeds] for n in counts}
    distilled = {m: [study.student(m, s, teacher) for s in seeds] for m in methods}
    cells = [{"steps": n, **score_summary(runs)} for n, runs in sft_runs.items()]
    best = min(cells, key=lambda c: c["nll_mean"])["steps"]
    diffs = [paired_by_seed(distilled[m] + sft_runs[best], m, "sft") for m in methods]
    report = {**provenance(argv, "eval/sft_steps.py"), "preset": study.preset_name, "preset_steps": preset_steps,
              "sft": cells, "best_sft_steps": best, "runs": {str(n): r for n, r in sft_runs.items()},
              "distilled_runs": distilled, "distilled": {m: score_summary(r) for m, r in distilled.items()},
              "differences": diffs}
    rows = [f"| SFT steps | {SCORE_HEADER} |", "|---|---|---|---|---|"]
    rows += [f"| {c['steps']}{' (best NLL)' if c['steps'] == best else ''} | {score_cells(c)} |" for c in cells]
    rows += [f"| {m}, {preset_steps} steps | {score_cells(s)} |" for m, s in report["distilled"].items()]
    table = "\n".join(rows) + "\n\n" + difference_table(
        diffs, [f"{m} ({preset_steps} steps) - SFT ({best} steps)" for m in methods], per_seed="nll")
    out = write_study(args.output, "sft_steps", f"SFT by steps against distillation ({study.preset_name} preset)",
                      report, table)
    _plot(report, out / "sft_steps.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
