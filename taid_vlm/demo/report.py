"""The demo's report: a Markdown table of scores and the plots (loss curves, TAID t, score bars)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import METHODS
from taid_vlm.demo.scoring import method_stats, model_stats, seed_differences, verdicts
from taid_vlm.evaluation.bootstrap import format_ci
from taid_vlm.train.run_log import read_log

LABELS = {"teacher": "Teacher (SFT)", **{f"student_{k}": f"Student: {v}" for k, v in METHODS.items()}}


def _student_row(method: str, st: dict[str, dict], params: int, seconds: float) -> str:
    return (f"| {LABELS.get('student_' + method)} | {format_ci(st['vqa'])} | {format_ci(st['nll'], digits=3)} | "
            f"{format_ci(st['agreement']) if 'agreement' in st else '-'} | {st['cider']['estimate']:.1f} | "
            f"{st['bleu4']['estimate']:.1f} | {params / 1e6:.2f}M | {seconds:.0f} s |")


def score_table(results: dict[str, dict], runs: dict[str, list[str]], times: dict[str, float],
                stats: dict[str, dict], teacher: dict[str, dict]) -> str:
    """Markdown table: VQA accuracy, response NLL per token and agreement with the teacher, CIDEr and
    BLEU-4 (x100), parameters and train time. Students: the mean over their seeds with the 95%
    t-interval over seeds (``stats``: ``method_stats``), train time per run; the teacher and the
    blind prior: bootstrap intervals over the held-out items (``teacher``: ``model_stats``)."""
    head = ("| model | VQA acc [95% CI] | NLL/token [95% CI] | agrees with teacher [95% CI] | CIDEr | BLEU-4 "
            "| params | train time |\n|---|---|---|---|---|---|---|---|")
    rows = []
    if "teacher" in results:
        r, c = results["teacher"], results["teacher"]["caption"]
        rows.append(f"| {LABELS['teacher']} | {format_ci(teacher['teacher']['vqa'])} | "
                    f"{format_ci(teacher['teacher']['nll'], digits=3)} | - | {c['CIDEr'] * 100:.1f} | "
                    f"{c['Bleu_4'] * 100:.1f} | {r['params'] / 1e6:.2f}M | {times['teacher']:.0f} s |")
    for m, names in runs.items():
        seconds = sum(times[n] for n in names) / len(names)
        rows.append(_student_row(m, stats[m], results[names[0]]["params"], seconds))
    rows.append(f"| Blind prior (question only, no image) | {format_ci(teacher['blind_prior']['vqa'])} "
                "| - | - | - | - | - | - |")
    return "\n".join([head, *rows])


def diff_table(diffs: dict[str, dict]) -> str:
    """Markdown table of the differences (estimate and 95% interval; per seed when paired by seed)."""
    rows = ["| difference, paired by seed | VQA acc (points) | NLL/token (nats; < 0: first is better) "
            "| per seed (VQA) |", "|---|---|---|---|"]
    for label, d in diffs.items():
        nll = format_ci(d["nll"], digits=3, signed=True) if "nll" in d else "-"
        per = ", ".join(f"{v:+.1f}" for v in d["vqa"].get("values", []))
        rows.append(f"| {label} | {format_ci(d['vqa'], signed=True)} | {nll} | {per} |")
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


def type_table(results: dict[str, dict], question_types: list[str], runs: dict[str, list[str]] | None = None) -> str:
    """Markdown table of VQA accuracy per question type (``question_types[i]`` is the type of
    held-out question ``i``): what the teacher knows that the students did or did not take. A row per
    model of ``results`` not in ``runs``, and one per method of ``runs`` (the mean over its seeds)."""
    kinds = list(dict.fromkeys(question_types))
    rows = ["| model | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    in_runs = {n for names in (runs or {}).values() for n in names}
    groups = {name: [name] for name in results if name not in in_runs}
    groups.update({f"student_{m}": names for m, names in (runs or {}).items()})
    for label, names in groups.items():
        per = [mean_by_type(results[n]["items"]["vqa"], question_types) for n in names]
        cells = [f"{sum(p[k] for p in per) / len(per):.1f}" if k in per[0] else "-" for k in kinds]
        rows.append(f"| {LABELS.get(label, label)} | " + " | ".join(cells) + " |")
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


def write_report(out: Path, results: dict, runs: dict[str, list[str]], times: dict, prior: list[float],
                 preset: dict, args: Any, stages: dict[str, float] | None = None,
                 question_types: list[str] | None = None) -> str:
    """Write ``report.md``, ``summary.json``, ``curves.png`` and ``scores.png``; returns the text
    printed at the end of the run (scores, differences, verdicts).

    ``results``: run name -> ``stage_eval`` result (``teacher`` and every student run); ``runs``:
    method -> its runs' names, one per seed, in seed order."""
    stats = method_stats(results, runs)
    teacher = model_stats({k: results[k]["items"] for k in ("teacher",) if k in results}, prior, seed=args.seed)
    diffs = seed_differences(results, runs, prior)
    table, words = score_table(results, runs, times, stats, teacher), verdicts(diffs, LABELS)
    _plot_curves(out, [names[0] for names in runs.values()])
    from taid_vlm.evaluation.compare import compare_results

    flat = {}
    if "teacher" in results:
        r = results["teacher"]
        flat[LABELS["teacher"]] = {"VQA acc": r["vqa"]["vqa_accuracy"], "CIDEr x100": r["caption"]["CIDEr"] * 100,
                                   "BLEU-4 x100": r["caption"]["Bleu_4"] * 100}
    for m in runs:
        st = stats[m]
        flat[LABELS[f"student_{m}"]] = {"VQA acc": st["vqa"]["estimate"], "CIDEr x100": st["cider"]["estimate"],
                                        "BLEU-4 x100": st["bleu4"]["estimate"]}
    compare_results(list(flat.values()), names=list(flat), output=out / "scores")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = machine_line()
    from taid_vlm.demo.teachers import build_info

    d, n_q = preset["data"], len(prior)
    n_conv = len(results["teacher"]["items"]["tokens"]) if "teacher" in results else 0
    built = build_info(preset["teacher"])
    spec = built["spec"]
    n_seeds = len(next(iter(runs.values()), []))  # every method has one run per seed from args.seed
    seed_txt = f"seeds {args.seed}-{args.seed + n_seeds - 1}" if n_seeds > 1 else f"seed {args.seed}"
    setup = (f"Teacher: the shipped teacher {preset['teacher']}, trained once by SFT on {spec['data']['n_train']} "
             f"images ({spec['train']['max_steps']} steps; {built['date']}, eval/build_demo_teachers.py; its "
             f"train time in the table is that build's). Students: the vision tower of the shipped model "
             f"{preset['tower']}, frozen; projector and LM trained on the first {d['n_train']} images of the same "
             f"set, {preset['student_train']['max_steps']} steps each, {seed_txt} per method (a seed fixes the "
             f"init and data order of every method's student). Held out: {n_q} questions (VQA accuracy, "
             f"agreement), {n_conv} conversations (response NLL per token, teacher forcing), "
             f"{preset['eval'].get('caption_limit', preset['eval']['limit'])} images (captions).")
    printed = f"{table}\n\n{diff_table(diffs)}\n\n{words}"
    if question_types:
        printed += "\n\nVQA accuracy by question type (students: mean over seeds):\n\n" + type_table(
            results, question_types, runs)
    times_txt = ", ".join(f"{k} {v:.0f} s" for k, v in (stages or {}).items())
    text = (f"# taid-vlm demo ({args.preset} preset, {seed_txt})\n\n{stamp}; {machine}\n\n{setup}\n\n"
            f"{printed}\n\n"
            "VQA accuracy is the official VQAv2 metric (x100) on the held-out synthetic questions; NLL/token "
            "is the mean negative log-likelihood (nats) of the reference responses; agreement is the share "
            "of questions where the student gives the teacher's (normalised) answer. Students' intervals: "
            "95% t-intervals over the seeds, differences paired by seed. Teacher and blind prior: percentile "
            "bootstrap over the held-out items (2,000 resamples). Captions are scored with pycocoevalcap "
            "(PTB tokenizer). Curves (first seed): curves.png; score bars: scores/.\n\n"
            f"Stage times (wall, this invocation; train times of reused runs are their original ones): {times_txt}\n")
    (out / "report.md").write_text(text)
    slim = {n: {k: v for k, v in r.items() if k != "items"} for n, r in results.items()}
    (out / "summary.json").write_text(json.dumps(
        {"results": slim, "runs": runs, "methods": stats, "train_seconds": times, "stage_seconds": stages or {},
         "blind_prior_vqa": teacher["blind_prior"]["vqa"]["estimate"], "intervals": teacher,
         "differences": diffs, "preset": preset, "date": stamp, "machine": machine}, indent=2))
    return printed
