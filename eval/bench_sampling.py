"""Step-time cost of training on student generations: none vs mixed (GKD) vs adaptive (DistiLLM).

    python eval/bench_sampling.py            # default demo models
    python eval/bench_sampling.py --quick    # tiny preset (used by a test)

Writes ``bench_sampling.json`` to --output: per mode the mean step time, the share of time spent
generating, and the final scores.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from taid_vlm.demo.studies import open_study, provenance, study_parser
from taid_vlm.train.run_log import read_log

MODES = {
    "none": {},
    "mixed": {"sampling": {"mode": "mixed", "lam": 0.5, "max_new_tokens": 16}},
    "adaptive": {"sampling": {"mode": "adaptive", "p_init": 0.2, "p_step": 0.2, "max_new_tokens": 16}},
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/bench_sampling")
    args = ap.parse_args(argv)
    study = open_study(args)
    teacher = study.teacher()
    steps = study.preset["student_train"]["max_steps"]
    results = {}
    for mode, extra in MODES.items():
        if mode == "adaptive":  # adaptive needs a validation loss to react to
            extra = {**extra, "data": {"val": study.paths["val_vqa"], "format": "auto"},
                     "eval": {"every": max(1, steps // 5), "max_batches": 2}}
        # A live teacher: generated responses cannot be read from the preset's teacher cache.
        extra = {**extra, "teacher": {"cache": None}}
        res = study.student("taid", 0, teacher, name=f"student_{mode}", overrides=extra)
        log = read_log(study.run_dir(res) / "logs" / "train.jsonl")
        steps_s = [r["tokens"] / r["tokens_per_s"] for r in log if r.get("tokens_per_s")]
        total = res["train_seconds"]
        gen = log[-1].get("sampling_seconds", 0.0)
        # The trainer times generation apart from the optimizer step; the cost of a mode is both.
        results[mode] = {**res, "mean_step_seconds": statistics.fmean(steps_s) + gen / len(steps_s),
                         "mean_step_seconds_without_generation": statistics.fmean(steps_s),
                         "generation_seconds": gen, "generation_share": gen / total if total else 0.0}
    for mode in results:
        results[mode]["step_time_vs_none"] = results[mode]["mean_step_seconds"] / results["none"]["mean_step_seconds"]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {**provenance(argv, "eval/bench_sampling.py"), "preset": study.preset_name, "modes": results}
    (out / "bench_sampling.json").write_text(json.dumps(report, indent=2))
    for mode, r in results.items():
        print(f"{mode:9s} step {r['mean_step_seconds']:.3f}s (x{r['step_time_vs_none']:.2f}), "
              f"generation {r['generation_share']:.0%} of train time, VQA {r['vqa_accuracy']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
