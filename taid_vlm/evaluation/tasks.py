"""Evaluation tasks: which fields each needs, default prompts, and checks made before generation.

Every check here runs before a single token is generated, so bad input fails in seconds with the
record and field named, not after an hour of decoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from taid_vlm.data.types import Sample

TASKS = ("vqa", "caption", "text")
IMAGE_TASKS = ("vqa", "caption")
DEFAULT_PROMPTS = {
    "vqa": "{question}\nAnswer the question using a single word or phrase.",
    "caption": "Describe the image.",
}
# Raw-record fields per task; each entry lists accepted spellings (the data layer's aliases).
REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "vqa": (("image", "images"), ("question",), ("answers", "answer")),
    "caption": (("image", "images"), ("captions", "caption")),
    "text": (("conversations", "messages"),),
}


def check_task(task: str) -> None:
    """ValueError listing the valid tasks for an unknown one."""
    if task not in TASKS:
        raise ValueError(f"unknown evaluation task {task!r}; valid: {', '.join(TASKS)}")


def _record_name(rec: Any, index: int) -> str:
    if isinstance(rec, dict):
        for key in ("id", "question_id", "image_id"):
            if rec.get(key) is not None:
                return f"record {index} (id {rec[key]!r})"
    return f"record {index}"


def _present(rec: dict, key: str) -> bool:
    value = rec.get(key)
    return value is not None and value != "" and value != []


def check_records(records: Iterable[Any], task: str, source: str = "data", limit: int | None = None) -> int:
    """Check that every raw record has the fields ``task`` needs; returns the number checked.

    Raises:
        ValueError: naming the first record that lacks a field (and the fields it does have).
    """
    check_task(task)
    n = 0
    for index, rec in enumerate(records):
        if limit is not None and n >= limit:
            break
        n += 1
        if isinstance(rec, Exception):  # an unreadable line: the reader counts and skips it
            continue
        if not isinstance(rec, dict):
            raise ValueError(f"{source} {_record_name(rec, index)} is a {type(rec).__name__}, not an object")
        for spellings in REQUIRED_FIELDS[task]:
            if not any(_present(rec, k) for k in spellings):
                raise ValueError(
                    f"{source} {_record_name(rec, index)} has no {' / '.join(map(repr, spellings))} field, "
                    f"which the {task!r} task needs (fields present: {sorted(rec)[:12]})"
                )
    return n


def check_samples(samples: Sequence[Sample], task: str, supports_images: bool) -> None:
    """Checks on loaded samples and on the model before generation.

    Raises ValueError for: an unknown task; an image task with a model that cannot take images; a
    VQA sample without ``meta['question']`` / ``meta['answers']``; a caption sample without
    ``meta['captions']``; an image-task sample without an image; image samples for a text-only
    model in the text task.
    """
    check_task(task)
    if task in IMAGE_TASKS and not supports_images:
        raise ValueError(f"the {task!r} task needs images, but this model cannot take images "
                         "(a text-only family); evaluate a VLM or composed model, or use --task text")
    need = {"vqa": ("question", "answers"), "caption": ("captions",), "text": ()}[task]
    for s in samples:
        for key in need:
            if not s.meta.get(key):
                raise ValueError(f"sample {s.id!r} has no {key!r}, which the {task!r} task needs "
                                 f"(read {task} records: image, {', '.join(need)})")
        if task in IMAGE_TASKS and not s.images:
            raise ValueError(f"sample {s.id!r} has no image, which the {task!r} task needs")
        if task == "text" and s.images and not supports_images:
            raise ValueError(f"sample {s.id!r} has images but the model is text-only; use text-only data")


def render_prompt(task: str, prompt: str | None, question: str = "") -> str:
    """The user text of one sample.

    For VQA a prompt containing ``{question}`` is a template; any other prompt is an instruction put
    on the line after the question (``"What colour?\\nAnswer in one word."``).
    """
    text = DEFAULT_PROMPTS[task] if prompt is None else prompt
    if task != "vqa":
        return text
    if "{question}" in text:
        return text.replace("{question}", question)  # not str.format: user braces stay literal
    return f"{question}\n{text}" if text else question


def prompt_sample(sample: Sample, task: str, prompt: str | None) -> Sample:
    """A copy of ``sample`` with one user turn: its images, then the task prompt (no answer turn)."""
    text = render_prompt(task, prompt, sample.meta.get("question", ""))
    content = [{"type": "image"} for _ in sample.images] + [{"type": "text", "text": text}]
    return Sample(id=sample.id, messages=[{"role": "user", "content": content}], images=sample.images,
                  meta=sample.meta)
