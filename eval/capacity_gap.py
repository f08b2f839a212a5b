"""Capacity gap: does the student improve as the teacher grows? TAID vs forward KL vs a baseline.

    python eval/capacity_gap.py            # default preset, the three shipped teachers S < M < L
    python eval/capacity_gap.py --quick    # tiny preset (used by a test)

The paper's claim: with TAID, students keep improving with larger teachers; with KL-type
baselines they stall or degrade. The teachers (``presets.TEACHERS``, built once by
eval/build_demo_teachers.py) grow in parameters and in training, and each is scored here, so the
table shows whether the larger teacher is also the better one. Writes ``capacity_gap.json/.md/.png`` to --output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from taid_vlm.demo.presets import TEACHERS
from taid_vlm.demo.studies import (
    difference_table,
    open_study,
    paired_by_seed,
    provenance,
    score_summary,
    study_parser,
    write_study,
)


def best_other_baseline(methods_json: Path) -> str:
    """The best baseline of eval/methods.py other than TAID, forward KL and SFT (skew_fkl if none)."""
    if methods_json.is_file():
        summary = json.loads(methods_json.read_text())["summary"]
        others = {m: s["vqa_mean"] for m, s in summary.items() if m not in ("taid", "taid_linear", "fkl", "sft")}
        if others:
            return max(others, key=others.get)
    return "skew_fkl"


def teacher_steps(runs: list[dict], teachers: list[str], methods: list[str]) -> list[dict]:
    """Paired by seed, for each step up the teacher ladder (``teachers[i]`` to ``teachers[i + 1]``):
    each method's change in its students' scores (``kind`` "change"), and the first method's change
    minus each other method's (``kind`` "interaction": < 0 on NLL means the first method gains more,
    or loses less, from the larger teacher; the paper's claim for TAID against KL). ``runs`` are
    study.student records with a ``teacher`` key; each entry is a ``paired_by_seed`` result plus
    ``kind``, ``method`` and the two teachers (``small``, ``large``)."""
    out = []
    for small, large in zip(teachers, teachers[1:]):
        changes = []
        for m in methods:
            tagged = [{**r, "method": f"{r['method']}@{r['teacher']}"} for r in runs if r["method"] == m]
            d = paired_by_seed(tagged, f"{m}@{large}", f"{m}@{small}")
            if d is None:
                continue
            out.append({**d, "kind": "change", "method": m, "small": small, "large": large})
            changes += [{"method": m, "seed": s, "vqa_accuracy": v, "nll": n}
                        for s, v, n in zip(d["seeds"], d["vqa_diffs"], d["nll_diffs"])]
        for other in methods[1:]:
            d = paired_by_seed(changes, methods[0], other)
            if d is not None:
                out.append({**d, "kind": "interaction", "method": f"{methods[0]} - {other}", "small": small,
                            "large": large})
    return out


def _steps_table(steps: list[dict]) -> str:
    labels = [f"{d['method']}: {d['large']} - {d['small']}" if d["kind"] == "change"
              else f"change {d['small']} to {d['large']}, {d['method']}" for d in steps]
    return difference_table(steps, labels, per_seed="nll", nll_note="< 0: better with the larger teacher")


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    sizes = [t["params"] for t in report["teachers"]]
    for ax, key, teacher_key, label in ((axes[0], "vqa", "vqa_accuracy", "student VQA accuracy"),
                                        (axes[1], "nll", "nll", "student held-out NLL/token (lower is better)")):
        for m in report["methods"]:
            cells = [report["scores"][t["name"]][m] for t in report["teachers"]]
            ax.errorbar(sizes, [c[f"{key}_mean"] for c in cells], yerr=[c[f"{key}_sd"] for c in cells], fmt="o-",
                        capsize=3, label=m)
        ax.plot(sizes, [t[teacher_key] for t in report["teachers"]], "k--", label="teacher itself")
        ax.set(xscale="log", xlabel="teacher parameters", ylabel=label, title="Student vs teacher size")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/eval_capacity_gap")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 2, quick 1)")
    ap.add_argument("--methods", default=None,
                    help="comma list (default: taid, fkl and the best other baseline of methods.json)")
    ap.add_argument("--teachers", default=None, help="comma list of teacher names to run (default all)")
    args = ap.parse_args(argv)
    study = open_study(args)
    preset = study.preset_name
    methods = (args.methods.split(",") if args.methods
               else ["taid", "fkl", best_other_baseline(Path(args.output) / "methods.json")])
    seeds = range(args.seeds or (1 if args.quick else 2))
    wanted = args.teachers.split(",") if args.teachers else list(TEACHERS)
    teachers, scores, all_runs = [], {}, []
    for name in TEACHERS:
        if name not in wanted:
            continue
        # The preset's own teacher: its runs carry eval/methods.py's names, so a --work folder
        # shared with methods.py reuses those students instead of training them again.
        own = name == study.preset["teacher"]
        tdir = study.teacher(name)
        teachers.append(study.evaluate_teacher(name))
        scores[name] = {}
        for m in methods:
            runs = [study.student(m, s, tdir, name=None if own else f"student_{name}_{m}_s{s}") for s in seeds]
            scores[name][m] = score_summary(runs)
            all_runs += [{**r, "teacher": name} for r in runs]
    report = {**provenance(argv, "eval/capacity_gap.py"), "preset": preset, "methods": methods,
              "teachers": teachers, "scores": scores, "runs": all_runs,
              "steps": teacher_steps(all_runs, [t["name"] for t in teachers], methods),
              "param_ratio": max(t["params"] for t in teachers) / min(t["params"] for t in teachers)}
    rows = ["| teacher | params | teacher VQA / NLL | " + " | ".join(f"{m} VQA / NLL" for m in methods) + " |",
            "|---" * (3 + len(methods)) + "|"]
    for t in teachers:
        cells = " | ".join(f"{c['vqa_mean']:.1f} ± {c['vqa_sd']:.1f} / {c['nll_mean']:.3f} ± {c['nll_sd']:.3f}"
                           for c in (scores[t["name"]][m] for m in methods))
        rows.append(f"| {t['name']} | {t['params'] / 1e6:.2f}M | {t['vqa_accuracy']:.1f} / {t['nll']:.3f} | {cells} |")
    out = write_study(args.output, "capacity_gap", f"Capacity gap ({preset} preset)", report,
                      "\n".join(rows) + "\n\n" + _steps_table(report["steps"]))
    _plot(report, out / "capacity_gap.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
