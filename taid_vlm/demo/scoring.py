"""The demo's numbers with their uncertainty: per-item scores of each model, the blind prior,
intervals, differences paired by seed and the verdicts in words.

A student's interval is over its seeds (a 95% t-interval of the per-seed scores), so it covers the
training noise; differences between two methods pair the runs of the same seed. The teacher and
the blind prior (one model each) get bootstrap intervals over the held-out items.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from taid_vlm.evaluation.bootstrap import bootstrap_ci, format_ci, separated

# (label, model, baseline) pairs whose paired differences the demo reports, when both were trained.
COMPARISONS = (("TAID - SFT", "student_taid", "student_sft"),
               ("Forward KL - SFT", "student_fkl", "student_sft"),
               ("TAID - Forward KL", "student_taid", "student_fkl"))


def blind_prior(train_file: str, val_vqa_file: str, limit: int) -> list[float]:
    """Per-question VQA accuracy ``[N]`` of answering each held-out question with its most common
    training answer, image unseen: the level a model reaches from the question text alone."""
    from taid_vlm.evaluation.vqa import vqa_accuracy

    answers: dict[str, Counter] = defaultdict(Counter)
    for rec in json.loads(Path(train_file).read_text()):
        turns = rec["conversations"]
        for q, a in zip(turns[::2], turns[1::2]):
            answers[q["value"].replace("<image>", "").strip()][a["value"].strip()] += 1
    overall = Counter(a for c in answers.values() for a in c.elements())
    val = json.loads(Path(val_vqa_file).read_text())[:limit]
    return [vqa_accuracy((answers.get(r["question"].strip()) or overall).most_common(1)[0][0], r["answers"])
            for r in val]


def agreement(preds: list[str], reference_preds: list[str]) -> list[float]:
    """Per-question agreement ``[N]`` (100 when two models give the same normalised answer, else 0)."""
    from taid_vlm.evaluation.vqa import normalize_answer

    if len(preds) != len(reference_preds):
        raise ValueError(f"{len(preds)} predictions against {len(reference_preds)}: score the same questions")
    return [100.0 * (normalize_answer(a) == normalize_answer(b)) for a, b in zip(preds, reference_preds)]


def model_stats(items: dict[str, dict[str, list]], prior: list[float], seed: int = 0) -> dict[str, dict]:
    """Interval of each model's VQA accuracy, response NLL per token and agreement with the teacher.

    Args:
        items: model name -> ``{"vqa": [N] accuracy, "pred": [N] answers, "nll": [M] per-sample
            mean NLL, "tokens": [M] response tokens}`` (the same N questions and M conversations
            for every model); ``teacher`` among them for the agreement.
        prior: ``[N]`` blind-prior accuracy of the same questions.
    Returns:
        name -> ``{"vqa", "nll", "agreement"}`` intervals (``bootstrap_ci`` dicts), plus
        ``blind_prior`` -> ``{"vqa"}``.
    """
    out: dict[str, dict] = {"blind_prior": {"vqa": bootstrap_ci(prior, seed=seed)}}
    teacher = items.get("teacher")
    for name, it in items.items():
        stats = {"vqa": bootstrap_ci(it["vqa"], seed=seed),
                 "nll": bootstrap_ci(it["nll"], weights=it["tokens"], seed=seed)}
        if teacher is not None and name != "teacher":
            stats["agreement"] = bootstrap_ci(agreement(it["pred"], teacher["pred"]), seed=seed)
        out[name] = stats
    return out


# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1 for n seeds); beyond 9, the normal's.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over ``values`` (e.g. one score per seed; 0 for one)."""
    m, sd = mean_spread(values)
    n = len(values)
    return m, (T975.get(n - 1, 1.96) * sd / math.sqrt(n)) if n > 1 else 0.0


def seed_interval(values: list[float]) -> dict[str, Any]:
    """``{"estimate", "low", "high", "n", "values"}``: the mean of ``values`` (one per seed) and its
    95% t-interval (``format_ci`` / ``separated`` read it like a bootstrap interval); with one value
    the interval is that value."""
    m, h = ci95(values)
    return {"estimate": m, "low": m - h, "high": m + h, "n": len(values), "values": list(values)}


def _per_run(result: dict[str, Any], teacher_pred: list[str] | None) -> dict[str, float]:
    out = {"vqa": result["vqa"]["vqa_accuracy"], "nll": result["nll"]["nll"],
           "cider": result["caption"]["CIDEr"] * 100, "bleu4": result["caption"]["Bleu_4"] * 100}
    if teacher_pred is not None:
        out["agreement"] = statistics.fmean(agreement(result["items"]["pred"], teacher_pred))
    return out


def method_stats(results: dict[str, dict], runs: dict[str, list[str]]) -> dict[str, dict]:
    """Each method's scores over its seeds.

    Args:
        results: run name -> ``stage_eval`` result (``teacher`` among them for the agreement).
        runs: method -> the names of its runs, one per seed, in seed order.
    Returns:
        method -> ``{"vqa", "nll", "agreement", "cider", "bleu4"}``, each a ``seed_interval``.
    """
    teacher = results.get("teacher", {}).get("items", {}).get("pred")
    out = {}
    for m, names in runs.items():
        per = [_per_run(results[n], teacher) for n in names]
        out[m] = {k: seed_interval([p[k] for p in per]) for k in per[0]}
    return out


def seed_differences(results: dict[str, dict], runs: dict[str, list[str]], prior: list[float]) -> dict[str, dict]:
    """Differences paired by seed (a seed fixes a student's init and data order for every method, so
    a pair differs only in the loss): each comparison of ``COMPARISONS`` whose two methods were
    trained, on VQA accuracy and NLL per token (``seed_interval`` of the per-seed differences over
    the seeds both have), and the best method's students against the blind prior."""
    def method(name: str) -> str:
        return name.removeprefix("student_")

    out: dict[str, dict] = {}
    for label, a, b in COMPARISONS:
        ra, rb = runs.get(method(a), []), runs.get(method(b), [])
        if ra and rb:
            pairs = list(zip(ra, rb))
            out[label] = {"vqa": seed_interval([results[x]["vqa"]["vqa_accuracy"] - results[y]["vqa"]["vqa_accuracy"]
                                                for x, y in pairs]),
                          "nll": seed_interval([results[x]["nll"]["nll"] - results[y]["nll"]["nll"] for x, y in pairs])}
    if runs:
        best = max(runs, key=lambda m: statistics.fmean(results[n]["vqa"]["vqa_accuracy"] for n in runs[m]))
        p = statistics.fmean(prior)
        out["best student - blind prior"] = {
            "model": f"student_{best}", "vqa": seed_interval([results[n]["vqa"]["vqa_accuracy"] - p for n in runs[best]])}
    return out


def _verdict(label: str, diff: dict[str, dict]) -> str:
    a, b = (s.strip() for s in label.split(" - "))
    acc, nll = diff["vqa"], diff["nll"]
    acc_s, nll_s = separated(acc), -separated(nll)  # lower NLL is better
    words = {1: f"{a} beat {b}", -1: f"{b} beat {a}", 0: f"{a} and {b} are not separated"}
    acc_txt = (f"on VQA accuracy {words[acc_s]} ({format_ci(acc, signed=True)} points"
               + (", the interval contains 0)" if acc_s == 0 else ")"))
    nll_txt = (f"on held-out NLL per token {words[nll_s]} ({format_ci(nll, digits=3, signed=True)} nats"
               + (", the interval contains 0)" if nll_s == 0 else ")"))
    return f"- {label}: {acc_txt}; {nll_txt}."


def verdicts(diffs: dict[str, dict], labels: dict[str, str]) -> str:
    """The paired differences in words (Markdown bullets), from the numbers of this run."""
    lines = [_verdict(label, d) for label, d in diffs.items() if label != "best student - blind prior"]
    if lines:
        n = next(iter(diffs.values()))["vqa"]["n"]
        lines.append(
            f"- Intervals: 95% t-intervals over {n} seeds per method (differences paired by seed), on the same "
            "held-out items; they cover the training noise (a seed fixes the student's init and data order), "
            "not the choice of held-out items." if n > 1 else
            "- One seed per method: these numbers have no interval over training noise, which at this scale "
            "is a few points; run with --seeds 3 or more before reading a ranking from them.")
    if "best student - blind prior" in diffs:
        d = diffs["best student - blind prior"]
        margin = d["vqa"]
        lines.append(f"- The best student ({labels.get(d['model'], d['model'])}) is "
                     f"{format_ci(margin, signed=True)} points of VQA accuracy above the blind prior: "
                     + ("a margin of 15 points or more, even at the interval's lower bound." if margin["low"] >= 15
                        else "not a clear margin of 15 points (the interval's lower bound is below 15)."))
    return "\n".join(lines)
