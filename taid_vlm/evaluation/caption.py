"""Captioning metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

Captions go through pycocoevalcap's PTB tokenizer (Stanford CoreNLP, lower-cased, punctuation
removed) exactly as the COCO caption server does, then each scorer. Keys and scales are
pycocoevalcap's (``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``; 0-1, CIDEr 0-10):
multiply by 100 for the usual tables. pycocoevalcap's ``Cider`` is CIDEr-D (clipped counts,
Gaussian length penalty). SPICE needs a model download and stays off.

The PTB tokenizer and METEOR run on the JVM: ``JavaMissingError`` says so before any work.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections.abc import Sequence

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
# Any line break Java might honour (\r, \u2028, \x85 ...) would split one caption into two lines
# of the tokenizer's line-per-caption output and shift every later caption: fold all whitespace.
_SPACE = re.compile(r"\s+")


class JavaMissingError(RuntimeError):
    """Raised when no ``java`` executable is on PATH."""


def check_java() -> str:
    """Path of the ``java`` executable; ``JavaMissingError`` with what to install otherwise."""
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError(
            "caption metrics need Java: pycocoevalcap's PTB tokenizer and METEOR are Java programs, "
            "and no `java` is on PATH. Install a Java runtime (e.g. `apt-get install "
            "openjdk-17-jre-headless`) or put it on PATH, or evaluate with --task vqa/text instead."
        )
    return java


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    """METEOR with its Java subprocess always closed (pycocoevalcap only closes it in ``__del__``,
    which may run late or never and leaves a JVM per call behind)."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, scores = scorer.compute_score(gts, res)
    finally:
        proc = scorer.meteor_p
        with scorer.lock:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
    return float(score), [float(s) for s in scores]


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   metrics: Sequence[str] = METRICS) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus scores and per-sample scores of generated captions.

    Args:
        predictions: one caption per sample.
        references: the reference captions of each sample (at least one each).
        metrics: subset of ``METRICS`` to compute (METEOR starts a JVM of ~2 GB; leave it out when
            not needed).
    Returns:
        ``(scores, per_sample)``: ``{metric: corpus value}`` and, per sample, ``{metric: value}``.
        Corpus BLEU is pycocoevalcap's corpus-level BLEU (not the mean of per-sample values).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown caption metrics {unknown}; valid: {', '.join(METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    empty = [i for i, refs in enumerate(references) if not any(_clean(r) for r in refs)]
    if empty:
        raise ValueError(f"samples {empty[:10]} have no non-empty reference caption")
    if not predictions:
        return {m: 0.0 for m in metrics}, []
    check_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": _clean(r)} for r in refs] for i, refs in enumerate(references)})
    res = tok.tokenize({i: [{"caption": _clean(p)}] for i, p in enumerate(predictions)})
    # The tokenizer pairs its output lines with captions by position; if Java failed or split a
    # line, captions would be scored against the wrong references, so check the counts.
    if len(res) != len(predictions) or any(len(gts.get(i, ())) != len(r) for i, r in enumerate(references)):
        raise RuntimeError("the PTB tokenizer (Java) returned a different number of captions than it was given; "
                           "see its messages above")
    scores: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    if any(m.startswith("Bleu") for m in metrics):
        from pycocoevalcap.bleu.bleu import Bleu

        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
            bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            scores[f"Bleu_{n + 1}"], per[f"Bleu_{n + 1}"] = float(bleu[n]), [float(x) for x in bleu_each[n]]
    if "METEOR" in metrics:
        scores["METEOR"], per["METEOR"] = _meteor(gts, res)
    if "ROUGE_L" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        value, each = Rouge().compute_score(gts, res)
        scores["ROUGE_L"], per["ROUGE_L"] = float(value), [float(x) for x in each]
    if "CIDEr" in metrics:
        from pycocoevalcap.cider.cider import Cider

        value, each = Cider().compute_score(gts, res)
        scores["CIDEr"], per["CIDEr"] = float(value), [float(x) for x in each]
    scores = {m: scores[m] for m in metrics}
    per_sample = [{m: per[m][i] for m in metrics} for i in range(len(predictions))]
    return scores, per_sample
