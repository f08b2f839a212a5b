"""Record formats -> ``Sample``: LLaVA / ShareGPT conversations, TRL ``messages``, the_cauldron
(``images`` + ``texts`` user/assistant pairs), Mantis-Instruct (``conversation`` turns + ``images``
as ``{bytes, path}``), VQA and caption records.

Every converter returns a ``Sample`` whose messages are ``{"role", "content": [blocks]}`` with
``{"type": "image"}`` blocks in the place of each image, or raises ``SkipSample``:
``unknown_role``, ``no_assistant_turn``, ``empty_answer``, ``bad_text`` (text that is not valid
UTF-8: undecodable bytes read as surrogates, or lone surrogate escapes), ``image_count_mismatch``
(``<image>`` placeholders and images disagree), ``too_many_images`` (over ``max_images``),
``bad_record``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from taid_vlm.data.images import DEFAULT_MAX_PIXELS, ImageRef, image_ref
from taid_vlm.data.types import Sample, SkipSample

IMAGE_PLACEHOLDER = "<image>"
FORMATS = ("llava", "sharegpt", "messages", "cauldron", "mantis", "vqa", "caption")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class RecordOptions:
    """How records become samples.

    Attributes:
        image_root: folder relative image paths are resolved in (and must stay inside).
        allow_outside_root: accept image paths outside ``image_root``.
        max_pixels, min_side, max_side: passed to every ``ImageRef``.
        caption_prompt: user prompt of caption records.
        vqa_template: user prompt of VQA records, with ``{question}``.
        max_images: records with more images are skipped (``too_many_images``); ``None``: no cap.
    """

    image_root: str | None = None
    allow_outside_root: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 1
    max_side: int | None = None
    caption_prompt: str = "Describe the image."
    vqa_template: str = "{question}"
    max_images: int | None = None

    def image(self, value: Any) -> ImageRef:
        return image_ref(value, root=self.image_root, allow_outside_root=self.allow_outside_root,
                         max_pixels=self.max_pixels, min_side=self.min_side, max_side=self.max_side)


def detect_format(rec: dict[str, Any]) -> str:
    """The format of one record from its fields; ``SkipSample('bad_record')`` if none fits."""
    if "conversations" in rec:
        return "llava"
    if "messages" in rec:
        return "messages"
    if "conversation" in rec:
        return "mantis"
    if "texts" in rec:
        return "cauldron"
    if "question" in rec and ("answers" in rec or "answer" in rec):
        return "vqa"
    if "captions" in rec or "caption" in rec:
        return "caption"
    raise SkipSample("bad_record", f"no known fields among {sorted(rec)[:8]}")


def check_text(value: Any, what: str = "text") -> str:
    """A str, checked to be valid UTF-8 text (bytes are decoded strictly)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise SkipSample("bad_text", f"{what}: {err}") from None
    if not isinstance(value, str):
        raise SkipSample("bad_record", f"{what} is {type(value).__name__}, not text")
    if _SURROGATE.search(value):
        raise SkipSample("bad_text", f"{what} is not valid UTF-8")
    return value


def text_blocks(text: str) -> list[dict[str, Any]]:
    """``"<image>\\nWhat is it?"`` -> ``[{"type": "image"}, {"type": "text", "text": "What is it?"}]``.

    Whitespace around placeholders is dropped (each model's template adds its own separators).
    """
    parts = text.split(IMAGE_PLACEHOLDER)
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if i > 0:
            blocks.append({"type": "image"})
        if len(parts) > 1:
            part = part.strip()
        if part:
            blocks.append({"type": "text", "text": part})
    return blocks


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _images(value: Any) -> list[Any]:
    """Image field -> list, with ``None`` / ``""`` entries (text-only rows of mixed files) dropped."""
    return [v for v in _as_list(value) if v is not None and not (isinstance(v, str) and not v)]


def _count_images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages for b in m["content"] if b.get("type") == "image")


def finish(sid: str, messages: list[dict[str, Any]], images: list[Any], opts: RecordOptions,
           meta: dict[str, Any] | None = None, exact_placeholders: bool = False) -> Sample:
    """Common checks; puts images first in the first user turn when no placeholder names them
    (unless ``exact_placeholders``: then every image needs its placeholder)."""
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise SkipSample("no_assistant_turn", f"roles {roles}")
    for m in messages:
        if m["role"] == "assistant":
            text = "".join(b.get("text", "") for b in m["content"] if b.get("type") == "text")
            if not text.strip():
                raise SkipSample("empty_answer", "an assistant turn has no text")
    if opts.max_images is not None and len(images) > opts.max_images:
        raise SkipSample("too_many_images", f"{len(images)} images > data.max_images {opts.max_images}")
    n_blocks = _count_images(messages)
    if n_blocks == 0 and images and not exact_placeholders:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise SkipSample("bad_record", "images but no user turn to put them in")
        first_user["content"] = [{"type": "image"} for _ in images] + first_user["content"]
    elif n_blocks != len(images):
        raise SkipSample("image_count_mismatch", f"{n_blocks} image placeholders but {len(images)} images")
    refs = [opts.image(x) for x in images]
    return Sample(id=sid, messages=messages, images=refs, meta=meta or {})


def _turns(turns: Any) -> list[dict[str, Any]]:
    """``[{"from" | "role", "value" | "content"}]`` -> messages of blocks."""
    messages = []
    for i, turn in enumerate(_as_list(turns)):
        if not isinstance(turn, dict):
            raise SkipSample("bad_record", f"turn {i} is not an object")
        role = ROLES.get(check_text(turn.get("from", turn.get("role", "")), f"turn {i} role"))
        if role is None:
            raise SkipSample("unknown_role", f"turn {i}: {turn.get('from', turn.get('role'))!r}")
        text = check_text(turn.get("value", turn.get("content", "")), f"turn {i}")
        messages.append({"role": role, "content": text_blocks(text)})
    return messages


def from_llava(rec: dict[str, Any], sid: str, opts: RecordOptions) -> Sample:
    """``{"id", "image": str | [str] | None, "conversations": [{"from", "value"}]}``."""
    return finish(sid, _turns(rec.get("conversations")), _images(rec.get("image", rec.get("images"))), opts)


def from_mantis(rec: dict[str, Any], sid: str, opts: RecordOptions) -> Sample:
    """TIGER-Lab/Mantis-Instruct: ``{"id", "images": [{"bytes", "path"}], "conversation": [{"role",
    "content"}], "source"}``; each image has its ``<image>`` in the text, in order (checked).

    Embedded bytes are decoded in memory; a bare ``path`` (the subsets' zip layout) is resolved under
    ``image_root``. ``meta["source"]``: the record's source set, when given.
    """
    meta = {"source": rec["source"]} if isinstance(rec.get("source"), str) else None
    return finish(sid, _turns(rec.get("conversation")), _images(rec.get("images")), opts, meta,
                  exact_placeholders=True)


def from_cauldron(rec: dict[str, Any], sid: str, opts: RecordOptions) -> Sample:
    """HuggingFaceM4/the_cauldron: ``{"images": [...], "texts": [{"user", "assistant", "source"?}]}``.

    Each pair is one user and one assistant turn; the images go first in the first user turn
    unless the user texts place them with ``<image>``.
    """
    messages = []
    for i, pair in enumerate(_as_list(rec.get("texts"))):
        if not isinstance(pair, dict):
            raise SkipSample("bad_record", f"texts[{i}] is not an object")
        for key, role in (("user", "user"), ("assistant", "assistant")):
            text = check_text(pair.get(key) or "", f"texts[{i}].{key}")
            messages.append({"role": role, "content": text_blocks(text)})
    return finish(sid, messages, _images(rec.get("images", rec.get("image"))), opts)


def _content_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, (str, bytes)):
        return text_blocks(check_text(content, f"message {i}"))
    blocks = []
    for b in _as_list(content):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": check_text(b.get("text", ""), f"message {i}")})
        elif kind == "image":
            blocks.append({"type": "image"})
        else:
            raise SkipSample("bad_record", f"message {i}: content block of type {kind!r}")
    return blocks


def from_messages(rec: dict[str, Any], sid: str, opts: RecordOptions) -> Sample:
    """TRL style: ``{"messages": [{"role", "content": str | [blocks]}], "images": [...]}``."""
    messages = []
    for i, m in enumerate(_as_list(rec.get("messages"))):
        if not isinstance(m, dict):
            raise SkipSample("bad_record", f"message {i} is not an object")
        role = check_text(m.get("role", ""), f"message {i} role")
        if role not in ("system", "user", "assistant"):
            raise SkipSample("unknown_role", f"message {i}: {role!r}")
        messages.append({"role": role, "content": _content_blocks(m.get("content", ""), i)})
    return finish(sid, messages, _images(rec.get("images", rec.get("image"))), opts)


def _answers(rec: dict[str, Any]) -> list[str]:
    raw = _as_list(rec.get("answers", rec.get("answer")))
    out = [check_text(a.get("answer", "") if isinstance(a, dict) else a, "answer") for a in raw]
    return [a for a in out if a.strip()]


def from_vqa(rec: dict[str, Any], sid: str, opts: RecordOptions) -> Sample:
    """``{"image", "question", "answers": [str | {"answer": str}]}`` -> question + most common answer.

    Ties go to the answer seen first. ``meta``: ``answers`` (all, for VQA accuracy), ``question``.
    """
    question = check_text(rec.get("question", ""), "question").strip()
    answers = _answers(rec)
    if not answers:
        raise SkipSample("empty_answer", "no non-empty answer")
    best = Counter(answers).most_common(1)[0][0]
    messages = [
        {"role": "user", "content": text_blocks(opts.vqa_template.format(question=question))},
        {"role": "assistant", "content": [{"type": "text", "text": best}]},
    ]
    meta = {"answers": answers, "question": question}
    return finish(sid, messages, _images(rec.get("image")), opts, meta)


def from_caption(rec: dict[str, Any], sid: str, opts: RecordOptions) -> Sample:
    """``{"image", "captions": [str]}`` -> ``caption_prompt`` + the first caption; ``meta["captions"]``."""
    caps = [check_text(c, "caption") for c in _as_list(rec.get("captions", rec.get("caption")))]
    caps = [c for c in caps if c.strip()]
    if not caps:
        raise SkipSample("empty_answer", "no non-empty caption")
    messages = [
        {"role": "user", "content": text_blocks(opts.caption_prompt)},
        {"role": "assistant", "content": [{"type": "text", "text": caps[0]}]},
    ]
    return finish(sid, messages, _images(rec.get("image")), opts, {"captions": caps})


# ShareGPT (``conversations`` of ``from``/``value`` or ``role``/``content``, with ``system``/``human``/
# ``gpt`` turns) is the LLaVA layout without the image; one converter reads both.
CONVERTERS = {"llava": from_llava, "sharegpt": from_llava, "messages": from_messages, "cauldron": from_cauldron,
              "mantis": from_mantis, "vqa": from_vqa, "caption": from_caption}


def record_id(rec: dict[str, Any], index: int) -> str:
    for key in ("id", "question_id", "image_id"):
        if rec.get(key) is not None:
            return str(rec[key])
    return str(index)


def record_to_sample(rec: Any, fmt: str, index: int, opts: RecordOptions) -> Sample:
    """One record -> ``Sample`` (``fmt`` in ``FORMATS`` or ``"auto"``)."""
    if not isinstance(rec, dict):
        raise SkipSample("bad_record", f"record {index} is {type(rec).__name__}, not an object")
    if fmt == "auto":
        fmt = detect_format(rec)
    return CONVERTERS[fmt](rec, record_id(rec, index), opts)
