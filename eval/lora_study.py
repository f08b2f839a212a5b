"""LoRA students distilled with TAID, at small scale: LoRA+TAID vs LoRA SFT vs the fully trained TAID student.

    python eval/lora_study.py            # 3 seeds x 3 students on the Lee corpus (CPU, ~15 min loaded)
    python eval/lora_study.py --quick    # a few steps, 1 seed (used by a test)

Set-up: the corpus, tokenizer and teacher of ``eval/pretrain_study.py`` (a teacher LM trained on
all 300 Lee background articles; students see the first 60). LoRA adapts a pretrained model, so
every student starts from the same base: the small LM trained with the LM loss on the student's
60 articles (``pretrain_study``'s ``sft`` seed-0 run, reused when it exists). From that base, on
the same 60 articles and step budget: ``taid_lora`` (TAID, ``student.peft`` r=16 on every linear
but the head), ``sft_lora`` (the LM loss, same adapters, no teacher) and ``taid_full`` (TAID,
every weight trained). The seed changes the adapter init and the data order. Score: perplexity
on the 50 held-out articles (``lee.cor``), mean and 95% t-interval over seeds, and each pair's
per-seed difference. Writes ``lora_study.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from taid_vlm.demo.studies import ci95, provenance, write_study

ROWS = {"taid_lora": ("taid", {"r": 16}), "sft_lora": ("sft", {"r": 16}), "taid_full": ("taid", None)}
NAMES = {"taid_lora": "LoRA + TAID", "sft_lora": "LoRA + LM loss (SFT)", "taid_full": "full weights + TAID",
         "base": "base (start of every row)"}


def _pretrain_study():
    spec = importlib.util.spec_from_file_location("pretrain_study", Path(__file__).resolve().parent / "pretrain_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row_config(ps: Any, out: Path, paths: dict, base: Path, row: str, seed: int, steps: int, teacher: Path) -> dict:
    """One student's recipe: ``pretrain_study``'s, started from ``base`` with the row's loss and adapters."""
    loss, peft = ROWS[row]
    cfg = ps.run_config(out, paths, ps.LM_SMALL, paths["student"], loss, seed, steps,
                        None if loss == "sft" else str(teacher / "final"))
    cfg["student"] = {"family": "text", "path": str(base / "final")}
    if peft:
        cfg["student"]["peft"] = dict(peft)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="runs/pretrain_study", help="shared with pretrain_study (teacher, base)")
    ap.add_argument("--data", default="data/lee")
    ap.add_argument("--output", default="eval/results")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--student-docs", type=int, default=60)
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=150, help="steps of the base and of every row")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.teacher_steps, args.steps = 1, 4, 3
    ps = _pretrain_study()
    from taid_vlm.demo.run import stage_train

    work = Path(args.work)
    paths = ps.prepare(Path(args.data), args.student_docs, 512 if args.quick else 2048)
    teacher, base = work / "teacher", work / "sft_s0"
    stage_train(teacher, ps.run_config(teacher, paths, ps.LM_TEACHER, paths["teacher"], "sft", 0, args.teacher_steps,
                                       None), "teacher")
    stage_train(base, ps.run_config(base, paths, ps.LM_SMALL, paths["student"], "sft", 0, args.steps, None), "base")
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in ROWS:
        for seed in range(args.seeds):
            run = work / f"lora_study_{row}_s{seed}"
            secs = stage_train(run, row_config(ps, run, paths, base, row, seed, args.steps, teacher), f"{row} s{seed}")
            runs.setdefault(row, []).append({"seed": seed, "heldout_ppl": ps.heldout_ppl(run), "train_s": secs})
    cells = {row: dict(zip(("ppl_mean", "ppl_ci95"), ci95([r["heldout_ppl"] for r in rs])), n=len(rs))
             for row, rs in runs.items()}
    pairs = {}
    for a, b in (("taid_lora", "sft_lora"), ("taid_lora", "taid_full")):
        diff = [x["heldout_ppl"] - y["heldout_ppl"] for x, y in zip(runs[a], runs[b])]
        mean, half = ci95(diff)
        pairs[f"{a} - {b}"] = {"mean": mean, "ci95": half, "per_seed": diff,
                               "separated": len(diff) > 1 and abs(mean) > half}
    base_ppl = ps.heldout_ppl(base)
    table = "| student | held-out perplexity (mean ± 95% CI) | seeds |\n|---|---|---|\n" + "".join(
        f"| {NAMES[k]} | {c['ppl_mean']:.1f} ± {c['ppl_ci95']:.1f} | {c['n']} |\n" for k, c in cells.items())
    table += f"| {NAMES['base']} | {base_ppl:.1f} | 1 |\n\n| difference (per seed) | mean ± 95% CI | separated |\n" \
             "|---|---|---|\n" + "".join(f"| {k} | {v['mean']:+.2f} ± {v['ci95']:.2f} | {v['separated']} |\n"
                                         for k, v in pairs.items())
    report = {**provenance(argv, "eval/lora_study.py"), "corpus": "Lee news corpus (gensim wheel test data)",
              "data": {k: v for k, v in paths.items() if k.endswith("_docs")}, "steps": args.steps,
              "base_heldout_ppl": base_ppl, "rows": {k: {"loss": v[0], "peft": v[1]} for k, v in ROWS.items()},
              "cells": cells, "pairs": pairs, "runs": runs}
    write_study(args.output, "lora_study", "LoRA students distilled with TAID (Lee corpus)", report, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
