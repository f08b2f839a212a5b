"""Short-answer metrics: VQAv2 accuracy (official answer normalisation), exact match, ANLS.

All three return scores on a 0-100 scale, per sample, so averages over samples are the numbers
published tables report.

VQAv2 normalisation (GT-Vision-Lab ``vqaEval.py``, written here from its definition):

1. newlines/tabs -> spaces, strip;
2. punctuation: each character of ``PUNCT`` is deleted when it touches a space in the text (or
   when the text has a digit-comma-digit group, so ``10,000`` -> ``10000``), otherwise replaced
   by a space (``yes/no`` -> ``yes no``); then periods not followed by a digit are deleted
   (``1.5`` stays);
3. lower-case, split on whitespace, number words ``none``/``zero`` .. ``ten`` -> digits, articles
   ``a``/``an``/``the`` dropped, apostrophe-less contractions restored (``dont`` -> ``don't``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern is written as "(?!<=\d)(\.)(?!\d)": its first group is a look-*ahead* for the
# two characters "<=" (always true before a "."), so in effect a period is deleted unless a digit
# follows it. Kept as written so the behaviour stays identical.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official call passes re.UNICODE (= 32) positionally, where ``re.sub`` expects ``count``: at most
# 32 periods are removed per answer. Reproduced for identical scores on pathological outputs.
_PERIOD_COUNT = 32
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Contracted forms the official table restores. Each key of the table is the form with one of its
# apostrophes left out ("couldn't've" <- "couldnt've" and "couldn'tve"); real words such as
# "well", "were", "its", "wed" are absent on purpose. The capitalised ones never match after
# lower-casing but are part of the official table.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am
mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't
she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll
who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've
you'd you'd've you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for form in _CONTRACTED:
        cuts = [i for i, ch in enumerate(form) if ch == "'"]
        for i in cuts:
            table[form[:i] + form[i + 1:]] = form
    # The official table also maps "somebody'd" the wrong way round (to "somebodyd").
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contraction_table()


def process_punctuation(text: str) -> str:
    """Step 2 of the module docstring (the official ``processPunctuation``)."""
    out = text
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCT:
        # The test looks at the original text, not the partly cleaned one, as the official code does.
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Step 3 of the module docstring (the official ``processDigitArticle``)."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean_space(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The full VQAv2 answer normalisation: ``"Two dogs."`` -> ``"2 dogs"``."""
    return process_digit_article(process_punctuation(_clean_space(text)))


def vqa_accuracy(prediction: str, answers: Sequence[str], *, official_quirks: bool = False) -> float:
    """VQAv2 accuracy of one prediction against the annotators' answers, in [0, 100].

    With 10 or more answers: the mean over the leave-one-out subsets (each answer left out once,
    by position) of ``min(1, matches / 3)``; with fewer: ``min(1, matches / 3)``.

    Args:
        prediction: the model's answer.
        answers: ground-truth answers (VQAv2 has 10).
        official_quirks: normalise exactly when the official script does, i.e. the prediction and
            the answers only when the answers disagree (so with 10 identical answers "Yes." does
            not match "yes"). The default normalises the prediction and the answers always, which
            is what LLaVA / lmms-eval pipelines effectively score (they normalise predictions
            before the official scorer) and gives the same numbers on VQAv2's normalised answers.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    pred = _clean_space(prediction)
    gts = [_clean_space(a) for a in answers]
    if not official_quirks or len(set(gts)) > 1:
        pred = normalize_answer(pred)
        gts = [normalize_answer(a) for a in gts]
    hits = [g == pred for g in gts]
    total = sum(hits)
    if len(gts) < 10:
        return 100.0 * min(3, total) / 3
    # Integer sums, one division: 1..4 of 10 agreeing give exactly 30, 60, 90, 100.
    capped = sum(min(3, total - h) for h in hits)
    return 100.0 * capped / (3 * len(gts))


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """100 when the normalised prediction equals any normalised answer, else 0."""
    pred = normalize_answer(prediction)
    return 100.0 if any(pred == normalize_answer(a) for a in answers) else 0.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: Sequence[str], tau: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one prediction, in [0, 100].

    Per answer: ``nl = lev(p, g) / max(len(p), len(g))`` on lower-cased stripped strings; the
    similarity is ``1 - nl`` when ``nl < tau`` and 0 otherwise; the best answer counts.
    """
    pred = prediction.strip().lower()
    best = 0.0
    for ans in answers:
        gt = ans.strip().lower()
        longest = max(len(pred), len(gt))
        nl = levenshtein(pred, gt) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < tau else 0.0)
    return 100.0 * best


def vqa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> tuple[dict[str, float], list[dict]]:
    """Mean ``vqa_accuracy``, ``exact_match`` and ``anls`` (0-100) plus the per-sample values."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    per = [{"vqa_accuracy": vqa_accuracy(p, a), "exact_match": exact_match(p, a), "anls": anls(p, a)}
           for p, a in zip(predictions, answers)]
    n = max(1, len(per))
    means = {k: sum(s[k] for s in per) / n for k in ("vqa_accuracy", "exact_match", "anls")}
    return means, per
