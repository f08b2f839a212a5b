"""The demo's report: a Markdown table of scores and the plots (loss curves, TAID t, score bars)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import METHODS
from taid_vlm.demo.scoring import model_stats, paired_stats, verdicts
from taid_vlm.evaluation.bootstrap import format_ci
from taid_vlm.train.run_log import read_log

LABELS = {"teacher": "Teacher (SFT)", **{f"student_{k}": f"Student: {v}" for k, v in METHODS.items()}}


def _row(name: str, res: dict[str, Any], stats: dict[str, dict], seconds: float) -> str:
    c = res["caption"]
    agree = format_ci(stats["agreement"]) if "agreement" in stats else "-"
    return (f"| {LABELS.get(name, name)} | {format_ci(stats['vqa'])} | {format_ci(stats['nll'], digits=3)} | "
            f"{agree} | {c['CIDEr'] * 100:.1f} | {c['Bleu_4'] * 100:.1f} | {res['params'] / 1e6:.2f}M | "
            f"{seconds:.0f} s |")


def score_table(results: dict[str, dict], times: dict[str, float], stats: dict[str, dict]) -> str:
    """Markdown table: VQA accuracy, response NLL per token and agreement with the teacher (each
    with its bootstrap 95% interval), CIDEr, BLEU-4 (x100), parameters, train time."""
    head = ("| model | VQA acc [95% CI] | NLL/token [95% CI] | agrees with teacher [95% CI] | CIDEr | BLEU-4 "
            "| params | train time |\n|---|---|---|---|---|---|---|---|")
    rows = [_row(n, results[n], stats[n], times[n]) for n in results]
    rows.append(f"| Blind prior (question only, no image) | {format_ci(stats['blind_prior']['vqa'])} "
                "| - | - | - | - | - | - |")
    return "\n".join([head, *rows])


def diff_table(diffs: dict[str, dict]) -> str:
    """Markdown table of the paired differences (estimate and bootstrap 95% interval)."""
    rows = ["| paired difference | VQA acc (points) | NLL/token (nats; < 0: first is better) |",
            "|---|---|---|"]
    for label, d in diffs.items():
        nll = format_ci(d["nll"], digits=3, signed=True) if "nll" in d else "-"
        rows.append(f"| {label} | {format_ci(d['vqa'], signed=True)} | {nll} |")
    return "\n".join(rows)


def machine_line() -> str:
    """The machine a result was obtained on, for reports and results files (thread count included:
    it changes the floating-point order, hence a run's numbers)."""
    import torch

    return (f"{platform.machine()}, {platform.system()}, {os.cpu_count()} cores, python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def mean_by_type(scores: list[float], question_types: list[str]) -> dict[str, float]:
    """Mean of ``scores[i]`` per ``question_types[i]``, types in order of first appearance (``zip``:
    the shorter list decides how many questions count)."""
    groups: dict[str, list[float]] = {}
    for s, t in zip(scores, question_types):
        groups.setdefault(t, []).append(s)
    return {t: sum(v) / len(v) for t, v in groups.items()}


def type_table(results: dict[str, dict], question_types: list[str]) -> str:
    """Markdown table of VQA accuracy per question type (``question_types[i]`` is the type of
    held-out question ``i``): what the teacher knows that the students did or did not take."""
    kinds = list(dict.fromkeys(question_types))
    rows = ["| model | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for name, res in results.items():
        means = mean_by_type(res["items"]["vqa"], question_types)
        cells = [f"{means[k]:.1f}" if k in means else "-" for k in kinds]
        rows.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _plot_curves(out: Path, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        log = out / name / "logs" / "train.jsonl"
        if not log.is_file():
            continue
        recs = read_log(log)
        steps = [r["step"] for r in recs if r.get("loss") is not None]
        ax_loss.plot(steps, [r["lm_loss"] for r in recs if r.get("loss") is not None], label=LABELS.get(name, name))
        t_recs = [r for r in recs if "taid_t" in r]
        if t_recs:
            ax_t.plot([r["step"] for r in t_recs], [r["taid_t"] for r in t_recs], label=LABELS.get(name, name))
    ax_loss.set(title="LM loss on the training responses", xlabel="optimizer step", ylabel="cross-entropy")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_t.set(title="TAID interpolation t", xlabel="optimizer step", ylabel="t", ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)


def write_report(out: Path, results: dict, times: dict, prior: list[float], preset: dict, args: Any,
                 stages: dict[str, float] | None = None, question_types: list[str] | None = None) -> str:
    """Write ``report.md``, ``summary.json``, ``curves.png`` and ``scores.png``; returns the text
    printed at the end of the run (scores, differences, verdicts)."""
    items = {n: r["items"] for n, r in results.items()}
    stats, diffs = model_stats(items, prior, seed=args.seed), paired_stats(items, prior, seed=args.seed)
    table, words = score_table(results, times, stats), verdicts(diffs, LABELS)
    _plot_curves(out, list(results))
    from taid_vlm.evaluation.compare import compare_results

    flat = {LABELS.get(n, n): {"VQA acc": r["vqa"]["vqa_accuracy"], "CIDEr x100": r["caption"]["CIDEr"] * 100,
                               "BLEU-4 x100": r["caption"]["Bleu_4"] * 100} for n, r in results.items()}
    compare_results(list(flat.values()), names=list(flat), output=out / "scores")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = machine_line()
    from taid_vlm.demo.teachers import build_info

    d, n_q = preset["data"], len(prior)
    n_conv = len(next(iter(items.values()))["tokens"])
    built = build_info(preset["teacher"])
    spec = built["spec"]
    setup = (f"Teacher: the shipped teacher {preset['teacher']}, trained once by SFT on {spec['data']['n_train']} "
             f"images ({spec['train']['max_steps']} steps; {built['date']}, eval/build_demo_teachers.py; its "
             f"train time in the table is that build's). Students: the first {d['n_train']} images of the same "
             f"set, {preset['student_train']['max_steps']} steps each, seed {args.seed}. Held out: {n_q} questions (VQA accuracy, agreement), {n_conv} "
             f"conversations (response NLL per token, teacher forcing), "
             f"{preset['eval'].get('caption_limit', preset['eval']['limit'])} images (captions).")
    printed = f"{table}\n\n{diff_table(diffs)}\n\n{words}"
    if question_types:
        printed += "\n\nVQA accuracy by question type:\n\n" + type_table(results, question_types)
    times_txt = ", ".join(f"{k} {v:.0f} s" for k, v in (stages or {}).items())
    text = (f"# taid-vlm demo ({args.preset} preset, seed {args.seed})\n\n{stamp}; {machine}\n\n{setup}\n\n"
            f"{printed}\n\n"
            "VQA accuracy is the official VQAv2 metric (x100) on the held-out synthetic questions; NLL/token "
            "is the mean negative log-likelihood (nats) of the reference responses; agreement is the share "
            "of questions where the student gives the teacher's (normalised) answer. Intervals: percentile "
            "bootstrap over the held-out items (2,000 resamples); differences are paired (same resampled "
            "items for both models). Captions are scored with pycocoevalcap (PTB tokenizer). "
            "Curves: curves.png; score bars: scores/.\n\n"
            f"Stage times (wall, this invocation; train times of reused runs are their original ones): {times_txt}\n")
    (out / "report.md").write_text(text)
    slim = {n: {k: v for k, v in r.items() if k != "items"} for n, r in results.items()}
    (out / "summary.json").write_text(json.dumps(
        {"results": slim, "train_seconds": times, "stage_seconds": stages or {},
         "blind_prior_vqa": stats["blind_prior"]["vqa"]["estimate"], "intervals": stats, "differences": diffs,
         "preset": preset, "date": stamp, "machine": machine}, indent=2))
    return printed
