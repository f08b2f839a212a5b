"""The demo's numbers with their uncertainty: per-item scores of each model, the blind prior,
bootstrap 95% intervals over the held-out items, paired differences and the verdicts in words.

Every interval resamples the held-out items (questions for VQA accuracy and agreement, held-out
conversations for the per-token NLL); differences between two models resample the same items for
both (paired), so they are much tighter than the two models' own intervals suggest.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

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


def paired_stats(items: dict[str, dict[str, list]], prior: list[float], seed: int = 0) -> dict[str, dict]:
    """Paired differences: each comparison of ``COMPARISONS`` whose two models exist, on VQA accuracy
    and on NLL per token, and the best student against the blind prior (VQA accuracy)."""
    out: dict[str, dict] = {}
    for label, a, b in COMPARISONS:
        if a in items and b in items:
            ia, ib = items[a], items[b]
            if len(ia["tokens"]) != len(ib["tokens"]) or ia["tokens"] != ib["tokens"]:
                raise ValueError(f"{a} and {b} were scored on different held-out responses; rerun the evaluation")
            out[label] = {"vqa": bootstrap_ci(ia["vqa"], ib["vqa"], seed=seed),
                          "nll": bootstrap_ci(ia["nll"], ib["nll"], weights=ia["tokens"], seed=seed)}
    students = [n for n in items if n.startswith("student_")]
    if students:
        best = max(students, key=lambda n: sum(items[n]["vqa"]))
        out["best student - blind prior"] = {"model": best, "vqa": bootstrap_ci(items[best]["vqa"], prior, seed=seed)}
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
        # Measured by eval/methods.py: at the demo's scale the seed-to-seed spread of one student is as
        # large as the differences between methods, so a separated pair here is not yet a ranking.
        lines.append("- These intervals resample the held-out items of one training run per student; they do "
                     "not cover training noise. Another seed, or another thread count (it changes the "
                     "floating-point order), moves a single student by a few points: for a ranking, compare "
                     "several seeds per method (eval/methods.py).")
    if "best student - blind prior" in diffs:
        d = diffs["best student - blind prior"]
        margin = d["vqa"]
        lines.append(f"- The best student ({labels.get(d['model'], d['model'])}) is "
                     f"{format_ci(margin, signed=True)} points of VQA accuracy above the blind prior: "
                     + ("a margin of 15 points or more, even at the interval's lower bound." if margin["low"] >= 15
                        else "not a clear margin of 15 points (the interval's lower bound is below 15)."))
    return "\n".join(lines)
