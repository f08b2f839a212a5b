"""Start-up checks: teacher and student must share the text tokenizer; LM heads must cover it."""

from __future__ import annotations

from typing import Any

from taid_vlm.models.factory import check_vocab  # noqa: F401  (re-exported: the start-up checks in one place)

# Strings whose token ids must agree: chat markup, digits, punctuation, mixed scripts, spaces.
PROBE_STRINGS = (
    "Hello, world! How are you today?",
    "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n",
    "The answer is 42. 3.14159 + 2 = 5.14159",
    "  leading spaces\tand\ttabs\nnew lines",
    "Ünïcödé: 日本語のテキスト, emoji 🙂, Привет",
    "def f(x):\n    return x ** 2  # code",
)


def _differences(a: dict[str, int], b: dict[str, int], limit: int = 5) -> list[str]:
    """The first tokens (by id) that are missing or map to another id in ``b``."""
    out = []
    for tok, i in sorted(a.items(), key=lambda kv: kv[1]):
        if b.get(tok) != i:
            out.append(f"{tok!r}: id {i} vs {b.get(tok)}")
            if len(out) >= limit:
                break
    return out


def _standard_special_tokens(tok: Any) -> dict[str, str]:
    """The named special tokens every tokenizer class has (bos, eos, unk, pad, ...). transformers 5
    also lists a processor's markup names there (``image_token``, ``boi_token``): those belong to
    one side's image format, which may differ, and the vocabulary check already covers their ids."""
    standard = getattr(type(tok), "SPECIAL_TOKENS_ATTRIBUTES", None)
    return {k: v for k, v in tok.special_tokens_map.items() if standard is None or k in standard}


def _added_tokens_hint(teacher_tok: Any, student_tok: Any, tv: dict[str, int], sv: dict[str, int]) -> str | None:
    """The fix when only added tokens differ: one tokenizer for both sides (e.g. the teacher's)."""
    try:
        ta, sa = teacher_tok.get_added_vocab(), student_tok.get_added_vocab()
    except (AttributeError, NotImplementedError):
        return None
    if {t: i for t, i in tv.items() if t not in ta} != {t: i for t, i in sv.items() if t not in sa}:
        return None
    only_t = sorted((t for t in ta if sv.get(t) != ta[t]), key=ta.get)[:4]
    only_s = sorted((t for t in sa if tv.get(t) != sa[t]), key=sa.get)[:4]
    return (f"both share their base vocabulary and differ only in added tokens (teacher: {only_t}, student: "
            f"{only_s}); give both sides one tokenizer that has them all: set student.tokenizer to the teacher's "
            "tokenizer (its directory), so the student's image token keeps the teacher's id (the student LM's "
            "embeddings grow if they are short)")


def check_tokenizers(teacher_tok: Any, student_tok: Any) -> None:
    """Raise ValueError (showing the first differing tokens) unless both tokenizers are the same.

    Compares lengths, the full vocabularies (token -> id, added tokens included), the standard
    named special tokens (bos/eos/unk/pad/...), and the ids of a set of probe strings (which also
    catches different merges or normalisers behind identical vocabularies). When the two share
    their base vocabulary and differ only in added tokens (a Qwen2 text LM's tokenizer against
    Qwen2-VL's, which adds the vision tokens), the message says to use the one that has them all.
    """
    problems = []
    if len(teacher_tok) != len(student_tok):
        problems.append(f"length {len(teacher_tok)} (teacher) vs {len(student_tok)} (student)")
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    diff = _differences(tv, sv) or _differences(sv, tv)
    if diff:
        problems.append("vocabulary differs, first differing tokens (teacher token: teacher id vs student id): "
                        + "; ".join(diff))
        hint = _added_tokens_hint(teacher_tok, student_tok, tv, sv)
        if hint:
            problems.append(hint)
    ts, ss = _standard_special_tokens(teacher_tok), _standard_special_tokens(student_tok)
    for key in sorted(set(ts) | set(ss)):
        if ts.get(key) != ss.get(key):
            problems.append(f"special token {key}: {ts.get(key)!r} (teacher) vs {ss.get(key)!r} (student)")
    for text in PROBE_STRINGS:
        a = teacher_tok(text, add_special_tokens=False)["input_ids"]
        b = student_tok(text, add_special_tokens=False)["input_ids"]
        if a != b:
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(
                f"{text!r} tokenizes differently from token {k}: teacher "
                f"{teacher_tok.convert_ids_to_tokens(a[k:k + 3])} vs student {student_tok.convert_ids_to_tokens(b[k:k + 3])}"
            )
            break
    if problems:
        raise ValueError("teacher and student tokenizers differ (distillation needs the same text tokenizer):\n  - "
                         + "\n  - ".join(problems))
