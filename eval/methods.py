"""TAID and every baseline on the same data, teacher, budget and seeds (small-scale table 2/3).

    python eval/methods.py                 # full: default preset, 3 seeds, all methods
    python eval/methods.py --quick         # minutes: tiny preset, 1 seed (used by a test)

Writes ``methods.json``, ``methods.md`` and ``methods.png`` to --output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taid_vlm.demo.studies import (
    METHOD_SPECS,
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


def _table(summary: dict[str, dict]) -> str:
    rows = [f"| method | {SCORE_HEADER} |", "|---|---|---|---|---|"]
    for m, s in sorted(summary.items(), key=lambda kv: -kv[1]["vqa_mean"]):
        rows.append(f"| {m} | {score_cells(s)} |")
    return "\n".join(rows)


def _differences(rows: list[dict], summary: dict[str, dict]) -> list[dict]:
    """Paired by seed: every method against SFT (does distillation pay?), TAID against every other
    loss (the paper's claim), and the best method by mean VQA accuracy against the next (is the top
    of the ranking separated?)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    pairs = [(m, "sft") for m in methods if m != "sft"]
    if "taid" in methods:
        pairs += [("taid", m) for m in methods if m not in ("taid", "sft")]
    ranked = sorted(summary, key=lambda m: -summary[m]["vqa_mean"])
    if len(ranked) > 1:
        pairs.append((ranked[0], ranked[1]))
    kept: list[tuple[str, str]] = []
    for a, b in pairs:  # each unordered pair once, in its first direction
        if (a, b) not in kept and (b, a) not in kept:
            kept.append((a, b))
    return [d for d in (paired_by_seed(rows, a, b) for a, b in kept) if d is not None]


def _plot(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(summary, key=lambda m: -summary[m]["vqa_mean"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, title in ((axes[0], "vqa", "VQA accuracy"), (axes[1], "cider", "CIDEr x100")):
        ax.bar(names, [summary[m][f"{key}_mean"] for m in names], yerr=[summary[m][f"{key}_sd"] for m in names],
               color=["tab:red" if m.startswith("taid") else "tab:blue" for m in names], capsize=3)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/eval_methods")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3, quick 1)")
    ap.add_argument("--methods", default=",".join(METHOD_SPECS))
    ap.add_argument("--student-steps", type=int, default=None)
    args = ap.parse_args(argv)
    study = open_study(args, student_steps=args.student_steps)
    teacher = study.teacher()
    seeds = range(args.seeds or (1 if args.quick else 3))
    rows = [study.student(m, s, teacher) for m in args.methods.split(",") for s in seeds]
    summary = {m: score_summary([r for r in rows if r["method"] == m])
               for m in dict.fromkeys(r["method"] for r in rows)}
    teacher_res = study.evaluate_teacher()
    diffs = _differences(rows, summary)
    report = {**provenance(argv, "eval/methods.py"), "preset": study.preset_name, "runs": rows,
              "summary": summary, "differences": diffs, "teacher": teacher_res}
    out = write_study(args.output, "methods", f"Methods ({study.preset_name} preset)", report,
                      _table(summary) + "\n\n" + difference_table(diffs))
    _plot(summary, out / "methods.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
