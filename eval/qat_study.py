"""Quantization-aware distillation (#33): does distilling the student as the quantized model it
will become beat quantizing it afterwards?

    python eval/qat_study.py --task pretrain        # Lee raw-text study (eval/pretrain_study.py's set-up)
    python eval/qat_study.py --task demo            # the demo task (composed VLM students, teacher M)
    python eval/qat_study.py --quick                # both, a few steps, 1 seed (used by a test)

Five students per seed, all deployed as int8-dynamic-activation / int4-grouped-weight models
(torchao; ``student.quantization`` scheme ``int8_dynamic_int4_weight``, group size 32; 16 with
--quick, whose tiny widths 32 does not divide), plus the float TAID student for reference:
(a) float TAID, (b) it quantized after training (post-training quantization, PTQ), (c) QAT
trained on labels only (SFT), (d) QAT distilled with TAID, (e) QAT with forward KL. Every student
has the same data, steps, optimiser and seeds as its task's study; only the loss and
quantization differ. The setting (scheme, group size, targets = the LM's linears, steps, seeds)
was fixed before any result was seen. Scores are of the saved model as it ships: the quantized
checkpoint reloaded by transformers (the float one for (a)). Pre-training task: held-out
perplexity on the 50 Lee articles (the saved model over 128-token rows of the packed text);
demo task: held-out VQA accuracy, response NLL and CIDEr (``Study.evaluate``). Differences paired
by seed with 95% t-intervals. Size: bytes of the safetensors weights; speed: greedy decoding of
``--gen-tokens`` tokens from a 16-token text prompt, batch 1, best of 3 (the machine was shared
with other jobs: speeds are indicative). Writes ``qat_study.{json,md,png}`` to --output.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from taid_vlm.demo.scoring import ci95

SCHEME = {"scheme": "int8_dynamic_int4_weight", "group_size": 32, "targets": ["lm"]}
# Cell -> (loss, quantization-aware?). "ptq" is cell "taid" quantized after training.
CELLS = {"taid": ("taid", False), "ptq": ("taid", False), "qat_sft": ("sft", True), "qat_taid": ("taid", True),
         "qat_fkl": ("fkl", True)}
LABELS = {"taid": "(a) float TAID", "ptq": "(b) TAID + post-training quantization",
          "qat_sft": "(c) QAT, labels only (SFT)", "qat_taid": "(d) QAT + TAID", "qat_fkl": "(e) QAT + forward KL"}


def ptq_copy(float_final: Path, dest: Path, scheme: dict[str, Any]) -> Path:
    """``dest``: a copy of the float student ``float_final`` converted by the same export as a QAT run
    (``train.qat.export_quantized``), so (b) and (c)-(e) ship in one format. Reused when newer."""
    from taid_vlm.config import StudentQuantizationConfig
    from taid_vlm.train.qat import export_quantized

    marker = dest / "quantization.json"
    if marker.is_file() and marker.stat().st_mtime >= (float_final / "model.safetensors").stat().st_mtime:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(float_final, dest)
    export_quantized(dest, StudentQuantizationConfig(**scheme))
    (dest / "metrics.json").touch()  # Study.evaluate reuses scores only while they are newer than this
    return dest


def footprint(model_dir: Path, gen_tokens: int, repeats: int = 3) -> dict[str, float]:
    """``weight_bytes`` (safetensors files) and ``tokens_per_s``: greedy decoding of exactly
    ``gen_tokens`` new tokens after a fixed 16-token prompt, batch 1, best of ``repeats``."""
    import torch

    from taid_vlm.adapters import build_adapter
    from taid_vlm.train.qat import dir_bytes

    model = build_adapter("auto", path=str(model_dir)).model.eval()
    ids = torch.arange(3, 19).unsqueeze(0)  # ordinary vocabulary ids of every tokenizer here
    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen_tokens,
                           min_new_tokens=gen_tokens, do_sample=False)
            best = min(best, time.perf_counter() - t0)
    return {"weight_bytes": dir_bytes(model_dir), "tokens_per_s": gen_tokens / best}


def packed_ppl(model_dir: Path, text_file: str, rows: int = 128) -> float:
    """Perplexity of the saved model on ``text_file``: documents (blank-line separated) tokenized,
    joined with EOS and cut into ``rows``-token rows, every token a target (as ``data.format: text``)."""
    import torch

    from taid_vlm.adapters import build_adapter

    ad = build_adapter("auto", path=str(model_dir))
    tok, model = ad.tokenizer, ad.model.eval()
    ids: list[int] = []
    for doc in Path(text_file).read_text().split("\n\n"):
        if doc.strip():
            ids += tok(doc.strip())["input_ids"] + [tok.eos_token_id]
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, rows):
            x = torch.tensor(ids[start:start + rows + 1]).unsqueeze(0)
            if x.shape[1] < 2:
                continue
            logits = model(input_ids=x[:, :-1]).logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
            n += x.shape[1] - 1
    return math.exp(nll / n)


def _cells(args: argparse.Namespace) -> list[tuple[str, tuple[str, bool]]]:
    """The cells to run, in CELLS order (``--cells``; "ptq" needs "taid", whose run it quantizes)."""
    wanted = set(args.cells.split(",")) if args.cells else set(CELLS)
    if "ptq" in wanted:
        wanted.add("taid")
    return [(c, spec) for c, spec in CELLS.items() if c in wanted]


def _qat_overrides(cell: str, scheme: dict[str, Any]) -> dict[str, Any]:
    return {"student": {"quantization": dict(scheme)}} if CELLS[cell][1] else {}


def pretrain_task(args: argparse.Namespace, scheme: dict[str, Any]) -> tuple[list[dict[str, Any]], Path]:
    """Rows ``{cell, seed, run, heldout_ppl}`` on the Lee raw-text set-up (``run`` relative to the
    returned work folder, as the other studies record it); the float TAID students
    and the teacher are eval/pretrain_study.py's runs (reused when --work is that study's folder)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pretrain_study as ps

    from taid_vlm.demo.run import stage_train

    steps, t_steps = (3, 4) if args.quick else (150, 400)
    work = Path(args.work) / "pretrain"
    paths = ps.prepare(Path(args.data), 60, 512 if args.quick else 2048)
    teacher = work / "teacher"
    stage_train(teacher, ps.run_config(teacher, paths, ps.LM_TEACHER, paths["teacher"], "sft", 0, t_steps, None),
                "teacher")
    rows = []
    for seed in range(args.seeds):
        for cell, (loss, qat) in _cells(args):
            if cell == "ptq":
                run = work / f"taid_s{seed}_ptq"
                final = ptq_copy(work / f"taid_s{seed}" / "final", run / "final", scheme)
            else:
                run = work / (f"qat_{loss}_s{seed}" if qat else f"{loss}_s{seed}")
                cfg = ps.run_config(run, paths, ps.LM_SMALL, paths["student"], loss, seed, steps,
                                    None if loss == "sft" else str(teacher / "final"))
                if qat:
                    cfg["student"]["quantization"] = dict(scheme)
                stage_train(run, cfg, f"{cell} s{seed}")
                final = run / "final"
            rows.append({"cell": cell, "seed": seed, "run": str(run.relative_to(work)),
                         "heldout_ppl": packed_ppl(final, paths["heldout"])})
    return rows, work


def demo_task(args: argparse.Namespace, scheme: dict[str, Any]) -> tuple[list[dict[str, Any]], Path]:
    """Rows ``{cell, seed, run, vqa_accuracy, nll, cider}`` (``run`` relative to the study's work folder) on the demo task (``Study``: its data,
    shipped teacher M and students; the float TAID runs are eval/methods.py's when --work is shared)."""
    from taid_vlm.demo.studies import open_study

    study = open_study(argparse.Namespace(quick=args.quick, work=args.demo_work or str(Path(args.work) / "demo")))
    teacher = study.teacher()
    rows = []
    for seed in range(args.seeds):
        for cell, (loss, qat) in _cells(args):
            if cell == "ptq":
                run = study.work / f"student_taid_s{seed}_ptq"
                res = study.evaluate(ptq_copy(study.work / f"student_taid_s{seed}" / "final", run / "final", scheme))
                res = {"method": cell, "seed": seed, "run": str(run.relative_to(study.work)), **res}
            else:
                res = study.student(loss, seed, teacher, name=f"qat_{loss}_s{seed}" if qat else None,
                                    overrides=_qat_overrides(cell, scheme))
            rows.append({**res, "cell": cell})
    return rows, study.work


METRICS = {"pretrain": ("heldout_ppl",), "demo": ("vqa_accuracy", "nll", "cider")}
# Paired by seed: QAD against PTQ (the question), against labels only, TAID against forward KL
# under QAT, and what each quantized student gives up against the float one.
PAIRS = (("qat_taid", "ptq"), ("qat_fkl", "ptq"), ("qat_taid", "qat_sft"), ("qat_taid", "qat_fkl"),
         ("ptq", "taid"), ("qat_taid", "taid"))


def summarise(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    """Per cell: mean and 95% t-interval half-width of each metric over seeds; per pair in PAIRS:
    the same of the seed-by-seed difference (first minus second) with the per-seed values."""
    cells = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        own = [r for r in rows if r["cell"] == cell]
        cells[cell] = {"n": len(own), **{f"{m}_{k}": v for m in metrics
                                         for k, v in zip(("mean", "ci95"), ci95([r[m] for r in own]))}}
    by = {(r["cell"], r["seed"]): r for r in rows}
    diffs = []
    for a, b in PAIRS:
        seeds = sorted(s for c, s in by if c == a and (b, s) in by)
        if seeds:
            d: dict[str, Any] = {"a": a, "b": b, "seeds": seeds}
            for m in metrics:
                vals = [by[(a, s)][m] - by[(b, s)][m] for s in seeds]
                d[m], d[f"{m}_ci95"] = ci95(vals)
                d[f"{m}_diffs"] = vals
            diffs.append(d)
    return {"cells": cells, "differences": diffs}


def _fmt(x: float, ci: float, digits: int) -> str:
    return f"{x:.{digits}f} ± {ci:.{digits}f}"


def task_table(task: str, summary: dict[str, Any], sizes: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per cell (metrics mean ± 95% CI, weight MB, tokens/s), then the differences."""
    metrics = METRICS[task]
    digits = {"heldout_ppl": 1, "vqa_accuracy": 1, "nll": 3, "cider": 1}
    head = " | ".join(f"{m} (mean ± 95% CI)" for m in metrics)
    out = [f"| student | {head} | weights (MB) | decode tokens/s (CPU) | seeds |",
           "|---|" + "---|" * (len(metrics) + 3)]
    for cell, c in summary["cells"].items():
        sz = sizes.get(cell, {})
        mb = f"{sz['weight_bytes'] / 1e6:.2f}" if sz else "-"
        tps = f"{sz['tokens_per_s']:.0f}" if sz else "-"
        out.append(f"| {LABELS[cell]} | " + " | ".join(_fmt(c[f"{m}_mean"], c[f"{m}_ci95"], digits[m]) for m in metrics)
                   + f" | {mb} | {tps} | {c['n']} |")
    out += ["", "| difference, paired by seed | " + " | ".join(f"{m} [95% CI]; per seed" for m in metrics) + " |",
            "|---|" + "---|" * len(metrics)]
    for d in summary["differences"]:
        cells = []
        for m in metrics:
            k = digits[m]
            lo, hi = d[m] - d[f"{m}_ci95"], d[m] + d[f"{m}_ci95"]
            cells.append(f"{d[m]:+.{k}f} [{lo:+.{k}f}, {hi:+.{k}f}]; "
                         + ", ".join(f"{v:+.{k}f}" for v in d[f"{m}_diffs"]))
        out.append(f"| {d['a']} - {d['b']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per task and metric: each cell's mean with its 95% interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, m) for t in results for m in METRICS[t]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (task, m) in zip(axes[0], panels):
        cells = results[task]["summary"]["cells"]
        names = list(cells)
        ax.bar(range(len(names)), [cells[c][f"{m}_mean"] for c in names],
               yerr=[cells[c][f"{m}_ci95"] for c in names], capsize=3,
               color=["tab:grey" if c == "taid" else "tab:red" if c.startswith("qat") else "tab:blue" for c in names])
        ax.set_xticks(range(len(names)), names, rotation=45)
        ax.set_title(f"{task}: {m}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _earlier_tasks(path: Path, scheme: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """The entries of ``keep`` in an earlier ``qat_study.json`` made with the same scheme, each given
    its own provenance (a file written before per-task provenance: the file's)."""
    if not keep or not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("scheme") != scheme:
        return {}
    own = {k: earlier.get(k) for k in ("command", "date", "machine")}
    return {task: {"seeds": earlier.get("seeds"), "gen_tokens": earlier.get("gen_tokens"), "provenance": own, **r}
            for task, r in earlier.get("tasks", {}).items() if task in keep}


def main(argv: list[str] | None = None) -> int:
    from taid_vlm.demo.studies import provenance, write_study

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few steps, 1 seed, tiny demo preset (the test)")
    ap.add_argument("--task", choices=("pretrain", "demo", "both"), default="both")
    ap.add_argument("--work", default="runs/qat_study", help="runs: <work>/pretrain and <work>/demo")
    ap.add_argument("--demo-work", default=None, help="the demo task's Study folder (default <work>/demo; "
                    "eval/methods.py's folder reuses its float TAID students)")
    ap.add_argument("--data", default="data/lee", help="the Lee corpus and tokenizer (eval/pretrain_study.py)")
    ap.add_argument("--output", default="eval/results")
    ap.add_argument("--seeds", type=int, default=None, help="default 3 (quick 1)")
    ap.add_argument("--cells", default=None, help=f"comma-separated subset of {','.join(CELLS)} (default all; "
                    "finished runs are reused, so a subset reports what an interrupted study finished)")
    ap.add_argument("--gen-tokens", type=int, default=None, help="tokens decoded for the speed (default 64, quick 8)")
    args = ap.parse_args(argv)
    bad = set((args.cells or "taid").split(",")) - set(CELLS)
    if bad:
        ap.error(f"--cells: unknown {sorted(bad)}; valid: {', '.join(CELLS)}")
    args.seeds = args.seeds or (1 if args.quick else 3)
    gen = args.gen_tokens or (8 if args.quick else 64)
    scheme = {**SCHEME, "group_size": 16} if args.quick else dict(SCHEME)
    tasks = ("pretrain", "demo") if args.task == "both" else (args.task,)
    here = provenance(argv, "eval/qat_study.py")
    # One task at a time keeps the other task's results already in --output (each task's entry
    # carries the command, date and machine that made it).
    results = _earlier_tasks(Path(args.output) / "qat_study.json", scheme, keep=set(METRICS) - set(tasks))
    for task in tasks:
        rows, base = (pretrain_task if task == "pretrain" else demo_task)(args, scheme)
        first = {r["cell"]: base / r["run"] / "final" for r in rows if r["seed"] == 0}
        sizes = {cell: footprint(final, gen) for cell, final in first.items()}
        summary = summarise(rows, METRICS[task])
        results[task] = {"runs": rows, "summary": summary, "footprint_seed0": sizes, "seeds": args.seeds,
                         "gen_tokens": gen, "provenance": here}
    tables = [f"## {task}\n\n`{r['provenance']['command']}`, {r['provenance']['date']}\n\n"
              + task_table(task, r["summary"], r["footprint_seed0"]) for task, r in results.items()]
    report = {**here, "scheme": scheme, "gen_tokens": gen, "seeds": args.seeds, "tasks": results}
    out = write_study(args.output, "qat_study", "Quantization-aware distillation (int8 dynamic / int4 weights)",
                      report, "\n\n".join(tables))
    plot(results, out / "qat_study.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
