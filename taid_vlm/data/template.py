"""Chat template -> token ids with labels on the assistant tokens only, for any template.

No ``{% generation %}`` markers are needed. For assistant turn ``i`` the response starts where
``render(messages[:i], add_generation_prompt=True)`` ends and stops where
``render(messages[:i + 1])`` ends, trailing whitespace (the template's newline after the
end-of-turn token) cut. Both renderings are tokenized and must be token prefixes of the full
conversation; a template that breaks this (e.g. one that rewrites earlier turns once a later turn
exists) raises ``TemplateError`` rather than producing wrong labels.

Truncation to ``max_length`` keeps whole assistant turns only: the conversation is cut after
the last assistant turn that fits (and re-encoded, so images in dropped turns go too), right after
that turn's last labelled token. If the
first assistant response does not fit, ``SkipSample("response_truncated")``. Cutting in the
middle of a response is avoided on purpose: the teacher and student of a pair, with different
templates, would keep different response prefixes and could not be aligned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from taid_vlm.data.types import IGNORE_INDEX, SkipSample

Render = Callable[[list[dict[str, Any]], bool], str]
Process = Callable[[str, int], dict[str, Any]]


class TemplateError(ValueError):
    """The chat template cannot be split into prompt / response by prefix rendering."""


def count_images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if not isinstance(m["content"], str)
               for b in m["content"] if b.get("type") == "image")


def _ids(out: dict[str, Any]) -> torch.Tensor:
    ids = torch.as_tensor(out["input_ids"], dtype=torch.long)
    return ids.reshape(-1) if ids.dim() > 1 and ids.shape[0] == 1 else ids


def _content_text(message: dict[str, Any]) -> str:
    c = message["content"]
    return c if isinstance(c, str) else "".join(b.get("text", "") for b in c if b.get("type") == "text")


def _prefix_len(messages: list[dict[str, Any]], text: str, full: torch.Tensor, process: Process,
                fallback: str | None = None) -> int:
    """Token length of ``text`` after checking it is a token prefix of ``full``."""
    for candidate in (text, fallback):
        if candidate is None:
            continue
        ids = _ids(process(candidate, count_images(messages)))
        if len(ids) <= len(full) and torch.equal(full[: len(ids)], ids):
            return len(ids)
    raise TemplateError(
        "chat template is not prefix-stable: rendering the conversation up to an assistant turn "
        f"does not tokenize to a prefix of the whole conversation (at {text[-60:]!r}); "
        "set a chat_template whose earlier turns render the same whatever follows them"
    )


def assistant_spans(messages: list[dict[str, Any]], full: torch.Tensor, *, render: Render, process: Process,
                    eos_in_labels: bool = True) -> list[tuple[int, int]]:
    """``[(start, end)]`` token spans of each assistant response in ``full`` (end exclusive)."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = messages[:i]
        prompt = render(head, True)
        # A prompt ending in a space ("ASSISTANT: ") tokenizes apart from the " answer" token
        # that follows it in the full text; the stripped prompt is then the prefix.
        start = _prefix_len(head, prompt, full, process, fallback=prompt.rstrip())
        upto = messages[: i + 1]
        text = render(upto, False)
        if eos_in_labels:
            end = _prefix_len(upto, text.rstrip(), full, process, fallback=text)
        else:
            answer = _content_text(m).rstrip()
            cut = text.rfind(answer) + len(answer) if answer and answer in text else len(text.rstrip())
            end = _prefix_len(upto, text[:cut], full, process)
        if end <= start:
            raise TemplateError(f"assistant turn {i} renders to no tokens (start {start}, end {end})")
        spans.append((start, end))
    return spans


def _encode_full(messages, render, process, eos_in_labels):
    out = dict(process(render(messages, False), count_images(messages)))
    ids = _ids(out)
    spans = assistant_spans(messages, ids, render=render, process=process, eos_in_labels=eos_in_labels)
    return out, ids, spans


def encode_conversation(messages: list[dict[str, Any]], *, render: Render, process: Process, max_length: int,
                        eos_in_labels: bool = True) -> dict[str, Any]:
    """Tokenize a conversation with labels on assistant tokens only.

    Args:
        messages: ``[{"role", "content": str | [blocks]}]`` (see ``Sample``).
        render: ``render(messages, add_generation_prompt) -> str`` (a chat template).
        process: ``process(text, num_images) -> dict`` with ``input_ids`` (``[L]`` or ``[1, L]``)
            and any image tensors, using the first ``num_images`` images of the sample.
        max_length: token budget; see the module docstring for the truncation rule.
        eos_in_labels: include the end-of-turn token(s) after each response in the labels.
    Returns:
        ``process``'s dict for the (possibly cut) conversation with ``input_ids [L]``,
        ``attention_mask [L]`` (ones) and ``labels [L]`` (``-100`` outside responses), int64.
    Raises:
        SkipSample: ``no_assistant_turn``; ``response_truncated`` when the first response does
            not fit in ``max_length``.
        TemplateError: the template is not prefix-stable.
    """
    if not any(m["role"] == "assistant" for m in messages):
        raise SkipSample("no_assistant_turn", "nothing to learn from")
    out, ids, spans = _encode_full(messages, render, process, eos_in_labels)
    if len(ids) > max_length:
        if spans[0][1] > max_length:
            raise SkipSample("response_truncated", f"first response ends at token {spans[0][1]} > max_length "
                                                   f"{max_length}")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        keep = max(k for k, (_, e) in enumerate(spans) if e <= max_length)
        messages = messages[: turns[keep] + 1]
        out, ids, spans = _encode_full(messages, render, process, eos_in_labels)
        # Cut right after the last kept response: the template's epilogue (a newline after the
        # end-of-turn token, say) carries no label and may not fit. Per-token tensors follow.
        cut, width = spans[-1][1], len(ids)
        for key, value in list(out.items()):
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[-1] == width:
                out[key] = value[..., :cut]
        ids = ids[:cut]
    labels = torch.full_like(ids, IGNORE_INDEX)
    for s, e in spans:
        labels[s:e] = ids[s:e]
    out.update(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    return out


def prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All turns before the final assistant turn (what a model must answer)."""
    return list(messages[:-1]) if messages and messages[-1]["role"] == "assistant" else list(messages)


def encode_prompt(messages: list[dict[str, Any]], *, render: Render, process: Process) -> dict[str, Any]:
    """Generation input: the final assistant turn dropped, generation prompt added.

    Returns ``process``'s dict with ``input_ids [L]`` and ``attention_mask [L]``.
    """
    msgs = prompt_messages(messages)
    out = dict(process(render(msgs, True), count_images(msgs)))
    ids = _ids(out)
    out.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out


def flatten_content(messages: list[dict[str, Any]], image_placeholder: str | None = "<image>") -> list[dict]:
    """Block lists -> strings (most text chat templates want strings); image blocks become
    ``image_placeholder`` (dropped when ``None``), text blocks are joined as they are."""
    out = []
    for m in messages:
        c = m["content"]
        if not isinstance(c, str):
            c = "".join(b.get("text", "") if b.get("type") == "text" else (image_placeholder or "") for b in c)
        out.append({**m, "content": c})
    return out


class TokenizerTemplate:
    """``render`` / ``process`` for a plain HF tokenizer and its (or a given) chat template.

    Args:
        tokenizer: a ``PreTrainedTokenizer(Fast)``.
        chat_template: Jinja template; default the tokenizer's own.
        flatten: turn block contents into strings before rendering (image blocks ->
            ``image_placeholder``); off for templates that read block lists themselves.
        add_special_tokens: passed to the tokenizer (templates usually write BOS themselves).
    """

    def __init__(self, tokenizer: Any, chat_template: str | None = None, *, flatten: bool = True,
                 image_placeholder: str | None = "<image>", add_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template; set `chat_template` in the model config")
        self.flatten, self.image_placeholder = flatten, image_placeholder
        self.add_special_tokens = add_special_tokens

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        msgs = flatten_content(messages, self.image_placeholder) if self.flatten else messages
        return self.tokenizer.apply_chat_template(msgs, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def process(self, text: str, num_images: int = 0) -> dict[str, Any]:
        ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.long)}

    def encode(self, messages: list[dict[str, Any]], max_length: int, eos_in_labels: bool = True) -> dict[str, Any]:
        return encode_conversation(messages, render=self.render, process=self.process, max_length=max_length,
                                   eos_in_labels=eos_in_labels)

    def encode_prompt(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return encode_prompt(messages, render=self.render, process=self.process)
