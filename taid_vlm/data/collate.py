"""Batches for distillation: the same records encoded by the student and the teacher adapters.

``PairCollator`` encodes each sample on both sides, skips (and counts) samples that either side
cannot use, checks that both sides label the same response tokens, and lets each adapter pad its
own batch.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

import torch

from taid_vlm.data.lazy import BadRecord
from taid_vlm.data.report import FIXES, DataReport
from taid_vlm.data.types import IGNORE_INDEX, Sample, SkipSample


def pad_sequences(seqs: list[torch.Tensor], pad_value: int | float, side: str = "right") -> torch.Tensor:
    """Stack 1-D tensors ``[L_i]`` into ``[B, max L_i]``, padding on ``side`` (``right``/``left``)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not seqs:
        raise ValueError("pad_sequences: no sequences")
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = s
        else:
            out[i, width - len(s):] = s
    return out


def response_ids(encoding: dict[str, Any]) -> torch.Tensor:
    """``[R]`` the labelled (response) token ids of one unbatched encoding, in order."""
    labels = torch.as_tensor(encoding["labels"])
    return labels[labels != IGNORE_INDEX]


def predicted_labels(encoding: dict[str, Any]) -> torch.Tensor:
    """``[L - 1]`` the labels a causal LM predicts (position 0 has no preceding token); the
    response rows of ``ResponseHidden`` and of the teacher cache are these, in order."""
    return torch.as_tensor(encoding["labels"])[1:]


def _keep_first_responses(encoding: dict[str, Any], n: int) -> None:
    """Unlabel every response token after the first ``n`` (in place)."""
    labels = torch.as_tensor(encoding["labels"]).clone()
    pos = torch.nonzero(labels != IGNORE_INDEX).flatten()
    labels[pos[n:]] = IGNORE_INDEX
    encoding["labels"] = labels


def _token(tokenizer: Any, tid: int) -> str:
    try:
        return repr(tokenizer.convert_ids_to_tokens(int(tid)))
    except Exception:  # noqa: BLE001 - the message must not fail for an exotic tokenizer
        return "?"


def response_runs(encoding: dict[str, Any]) -> int:
    """Number of contiguous labelled spans (one per assistant turn kept by the template)."""
    m = (torch.as_tensor(encoding["labels"]) != IGNORE_INDEX).to(torch.int8)
    return int(m[0]) + int((m[1:] > m[:-1]).sum()) if len(m) else 0


def check_pair(sample_id: str, student: dict[str, Any], teacher: dict[str, Any], *, num_turns: int | None = None,
               tokenizer: Any = None) -> None:
    """Raise ``ValueError`` naming the sample unless both sides label the same response ids.

    One exception: truncation keeps whole assistant turns, so one side may keep fewer turns than
    the other. When the shorter side kept fewer than the sample's ``num_turns`` assistant turns
    and its response ids are a prefix of the other side's, the longer side's extra labels are
    removed in place, so both sides train on the same responses.
    """
    rs, rt = response_ids(student), response_ids(teacher)
    if torch.equal(rs, rt):
        return
    n = min(len(rs), len(rt))
    same = rs[:n] == rt[:n]
    if bool(same.all()):
        short, long_ = (student, teacher) if len(rs) < len(rt) else (teacher, student)
        if num_turns is not None and response_runs(short) < num_turns:
            _keep_first_responses(long_, n)
            return
        raise ValueError(f"sample {sample_id!r}: the student labels {len(rs)} response tokens, the teacher "
                         f"{len(rt)}; the shorter is a prefix of the longer but truncation does not explain it")
    k = int(torch.nonzero(~same).flatten()[0])
    raise ValueError(
        f"sample {sample_id!r}: response tokens differ between student and teacher at response position {k}: "
        f"student id {int(rs[k])} {_token(tokenizer, rs[k])} vs teacher id {int(rt[k])} {_token(tokenizer, rt[k])}; "
        "teacher and student must share the text tokenizer and render responses identically"
    )


def _encoding_key(sample: Sample) -> tuple | None:
    """What decides a sample's encodings: its id, messages and image sources (a path with the
    settings that open it, or a digest of the bytes); None for an in-memory image (not cached)."""
    refs = []
    for ref in sample.images:
        path, data = getattr(ref, "path", None), getattr(ref, "data", None)
        if path is not None:
            refs.append((path, ref.root, ref.min_side, ref.max_side, ref.max_pixels))
        elif data is not None:
            refs.append(hashlib.blake2b(data, digest_size=16).digest())
        else:
            return None
    return sample.id, json.dumps(sample.messages, sort_keys=True, default=str), tuple(refs)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 64


class EncodingCache:
    """Least-recently-used encodings of samples, bounded in bytes.

    A run draws each record many times (an epoch per few hundred steps on a small set), and
    encoding one (decoding its images, rendering the chat template once per assistant turn to find
    the response spans, tokenizing; both sides with a teacher) costs more than a small model's
    step on a CPU. Encoding is deterministic (no augmentation), so a cached encoding is the one a
    fresh encode would give. ``datasets.map`` could pre-tokenize, but not through the adapters'
    image processors and templates without writing every pixel tensor to disk first.

    Args:
        max_bytes: bound on the tensors held (0 disables the cache).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.bytes = self.hits = self.misses = 0

    def get(self, key: tuple | None) -> Any:
        if key is None or key not in self.items:
            self.misses += key is not None
            return None
        self.items.move_to_end(key)
        self.hits += 1
        return self.items[key][0]

    def put(self, key: tuple | None, value: Any) -> None:
        size = _nbytes(value)
        if key is None or size > self.max_bytes:
            return
        self.items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, old) = self.items.popitem(last=False)
            self.bytes -= old


class PairCollator:
    """``samples -> {"student", "teacher", "ids", "num_tokens", "skipped"}``.

    Args:
        student: adapter with ``encode(sample, max_length)`` and ``collate(encodings)``.
        teacher: the same for the teacher, or ``None`` (SFT: ``"teacher"`` is then ``None``).
        max_length: token budget per sample of the student (and of the teacher unless
            ``teacher_max_length`` is given).
        report: ``DataReport`` that counts skipped samples (once per sample id).
        strict: re-raise ``SkipSample`` instead of skipping.
        teacher_cache: a ``TeacherCache`` standing in for the teacher; each sample's response ids
            are checked against the ids the cache was written for (with an aligner: aligned to them).
        aligner: a ``data.alignment.Aligner`` when the two tokenizers differ: it replaces the
            same-ids check, may skip a sample (``xtok_*`` reasons) and adds ``"alignment"`` to the batch.
            Its teacher side is the teacher adapter's encoding, or the cached teacher ids.
        encode_cache_bytes: bound of an ``EncodingCache`` of both sides' encodings (0: none).
            Encodings are reused as they are: the adapters' ``collate`` must not change them.
    Returns per call: ``student``/``teacher`` are the adapters' padded batches (``labels [B, L]``
    with -100 outside responses), ``ids`` the kept sample ids in order, ``num_tokens`` the number of
    response tokens the student predicts (``labels[:, 1:] != -100``), ``skipped`` the
    ``(sample_id, reason, detail)`` of the samples dropped from this batch. When every sample was
    skipped, ``student`` is ``None`` (and ``ids`` empty).

    The report is updated in the process that runs the collator; with DataLoader workers, call
    ``report.absorb(batch)`` in the main process (counting is once per sample id, so doing it
    without workers too is harmless).
    """

    def __init__(self, student: Any, teacher: Any = None, *, max_length: int, report: DataReport | None = None,
                 strict: bool = False, teacher_max_length: int | None = None, teacher_cache: Any = None,
                 aligner: Any = None, encode_cache_bytes: int = 0) -> None:
        self.student, self.teacher, self.teacher_cache = student, teacher, teacher_cache
        self.cache = EncodingCache(encode_cache_bytes)
        self.aligner = aligner
        self.max_length = max_length
        self.teacher_max_length = teacher_max_length or max_length
        self.report = report if report is not None else DataReport()
        self.strict = strict

    def _skip(self, sample_id: str, reason: str, detail: str, skipped: list | None) -> None:
        if reason == "path_escape":
            detail += f"; {FIXES[reason]}"
        if self.strict:
            raise SkipSample(reason, f"sample {sample_id!r}: {detail}")
        self.report.skip(reason, detail, sample_id=sample_id)
        if skipped is not None:
            skipped.append((sample_id, reason, detail))

    def encode(self, sample: Sample | BadRecord, skipped: list | None = None) -> tuple[dict, dict | None] | None:
        """Both sides' encodings of one sample, or ``None`` when skipped (counted, and appended to
        ``skipped`` as ``(sample_id, reason, detail)``). A ``BadRecord`` (a record that could not be
        converted when the loader read it) is skipped the same way. With an aligner, a third item: the
        alignment."""
        if isinstance(sample, BadRecord):
            self._skip(sample.id, sample.reason, sample.detail, skipped)
            return None
        key = _encoding_key(sample) if self.cache.max_bytes else None
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        pair = self._encode(sample, skipped)
        if pair is not None:
            self.cache.put(key, pair)
        return pair

    def _encode(self, sample: Sample, skipped: list | None) -> tuple | None:
        try:
            s = self.student.encode(sample, self.max_length)
            t = self.teacher.encode(sample, self.teacher_max_length) if self.teacher is not None else None
            if self.aligner is not None and t is not None:
                return s, t, self.aligner.align(sample.id, s, t)
            if self.aligner is not None and self.teacher_cache is not None and sample.id in self.teacher_cache:
                # The cache stands in for the teacher: its response ids (teacher tokenizer) by turn.
                cached = {"labels": self.teacher_cache.teacher_labels(sample.id)}
                return s, None, self.aligner.align(sample.id, s, cached)
        except SkipSample as skip:
            self._skip(sample.id, skip.reason, skip.detail, skipped)
            return None
        # The one teacher/student alignment check of a run: here, on the CPU, once per sample (the
        # training step trusts it and never syncs the device to compare ids again).
        tokenizer = getattr(self.student, "tokenizer", None)
        if t is not None:
            turns = sum(1 for m in sample.messages if m["role"] == "assistant")
            check_pair(sample.id, s, t, num_turns=turns, tokenizer=tokenizer)
        elif self.teacher_cache is not None and self.aligner is None and sample.id in self.teacher_cache:
            cached = {"labels": self.teacher_cache.rows([sample.id])["targets"]}
            check_pair(sample.id, {"labels": predicted_labels(s)}, cached, tokenizer=tokenizer)
        return s, t

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        enc_s, enc_t, ids, skipped, aligned = [], [], [], [], []
        for sample in samples:
            pair = self.encode(sample, skipped)
            if pair is None:
                continue
            enc_s.append(pair[0])
            enc_t.append(pair[1])
            aligned.extend(pair[2:])
            ids.append(sample.id)
        if not ids:
            return {"student": None, "teacher": None, "ids": [], "num_tokens": 0, "skipped": skipped}
        batch = self.student.collate(enc_s)
        labels = batch["labels"]
        # Row offsets need every kept sample aligned; a batch with samples outside the teacher cache
        # (validation data) gets none, and only its LM loss is measured.
        extra = {"alignment": self.aligner.collate(aligned)} if aligned and len(aligned) == len(ids) else {}
        return {
            **extra,
            "student": batch,
            "teacher": self.teacher.collate(enc_t) if self.teacher is not None else None,
            "ids": ids,
            "num_tokens": int((labels[:, 1:] != IGNORE_INDEX).sum()),
            "skipped": skipped,
        }
