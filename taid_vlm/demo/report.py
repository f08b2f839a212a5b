"""The demo's report: a Markdown table of scores and the plots (loss curves, TAID t, score bars)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import METHODS
from taid_vlm.train.run_log import read_log

LABELS = {"teacher": "Teacher (SFT)", **{f"student_{k}": f"Student: {v}" for k, v in METHODS.items()}}


def _row(name: str, res: dict[str, Any], seconds: float) -> str:
    v, c = res["vqa"], res["caption"]
    return (f"| {LABELS.get(name, name)} | {v['vqa_accuracy']:.1f} | {v['exact_match']:.1f} | "
            f"{c['CIDEr'] * 100:.1f} | {c['Bleu_4'] * 100:.1f} | {res['params'] / 1e6:.2f}M | {seconds:.0f} s |")


def score_table(results: dict[str, dict], times: dict[str, float], chance: float) -> str:
    """Markdown table: VQA accuracy, exact match, CIDEr, BLEU-4 (x100), parameters, train time."""
    head = ("| model | VQA acc | exact match | CIDEr | BLEU-4 | params | train time |\n"
            "|---|---|---|---|---|---|---|")
    rows = [_row(n, results[n], times[n]) for n in results]
    rows.append(f"| Blind prior (question only, no image) | {chance:.1f} | - | - | - | - | - |")
    return "\n".join([head, *rows])


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


def write_report(out: Path, results: dict, times: dict, chance: float, preset: dict, args: Any) -> str:
    """Write ``report.md``, ``summary.json``, ``curves.png`` and ``scores.png``; returns the table."""
    table = score_table(results, times, chance)
    _plot_curves(out, list(results))
    from taid_vlm.evaluation.compare import compare_results

    flat = {LABELS.get(n, n): {"VQA acc": r["vqa"]["vqa_accuracy"], "CIDEr x100": r["caption"]["CIDEr"] * 100,
                               "BLEU-4 x100": r["caption"]["Bleu_4"] * 100} for n, r in results.items()}
    compare_results(list(flat.values()), names=list(flat), output=out / "scores")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"
    text = (f"# taid-vlm demo ({args.preset} preset, seed {args.seed})\n\n{stamp}; {machine}\n\n{table}\n\n"
            "VQA accuracy is the official VQAv2 metric (x100) on the held-out synthetic questions; captions "
            "are scored with pycocoevalcap (PTB tokenizer). Curves: curves.png; score bars: scores/.\n")
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        {"results": results, "train_seconds": times, "blind_prior_vqa": chance, "preset": preset,
         "date": stamp, "machine": machine}, indent=2))
    return table
