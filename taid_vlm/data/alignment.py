"""Teacher/student response alignment when the two do not share a tokenizer.

Two modes (``teacher.tokenizer_alignment``):

- ``byte_aligned``: each side's response tokens get character spans in the decoded response text;
  both texts must be equal. Walking both span lists, a *group* closes wherever a teacher token and
  a student token end at the same character, so every group covers the same text on both sides.
  A group of one teacher and one student token is *one-to-one*; any other group is *merged*.
- ``uld``: no text is needed: the k-th response token of the teacher pairs with the k-th of the
  student within each assistant turn (Boizard et al. 2024), up to the shorter side.

Row indices refer to the rows of ``ResponseHidden`` (response tokens ordered by sample, then
position), so the loss can gather the aligned rows of a batch without knowing samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from taid_vlm.data.types import IGNORE_INDEX, SkipSample
from taid_vlm.data.vocab_map import shared_vocab

MODES = ("shared", "uld", "byte_aligned")


def char_ends(tokenizer: Any, ids: list[int]) -> tuple[str, list[int]]:
    """Decoded text of ``ids`` (special tokens skipped) and the end character of each token in it.

    Special tokens (end of turn) have zero width. A fast tokenizer's offset mapping gives the ends
    in one pass when re-tokenizing the text gives back the same ids; otherwise ``prefix_ends``.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ends = offset_ends(tokenizer, ids, text)
    return text, (ends if ends is not None else prefix_ends(tokenizer, ids, text))


def offset_ends(tokenizer: Any, ids: list[int], text: str) -> list[int] | None:
    """Token ends from the offset mapping of ``text`` re-tokenized, or None when that does not give
    back ``ids`` (a token inside the chat template may merge differently) or the ends are not
    strictly increasing (tokens sharing a multi-byte character share its offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    special = set(tokenizer.all_special_ids)
    plain = [i for i in ids if i not in special]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != plain:
        return None
    plain_ends = [int(e) for _, e in enc["offset_mapping"]]
    if any(b <= a for a, b in zip(plain_ends, plain_ends[1:])) or (plain_ends and plain_ends[-1] != len(text)):
        return None
    out, k, last = [], 0, 0
    for i in ids:
        if i not in special:
            last, k = plain_ends[k], k + 1
        out.append(last)
    return out


def prefix_ends(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """Token ends from decoding growing prefixes (any tokenizer; O(R^2) decodes).

    A token whose prefix text is not a prefix of the whole text (it ends inside a multi-byte
    character, or a decoder cleans up spaces) gets the previous end: it cannot close a group alone.
    """
    ends, last = [], 0
    for k in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if text.startswith(prefix) and not prefix.endswith("\ufffd") and len(prefix) >= last:
            last = len(prefix)
        ends.append(last)
    return ends


def span_groups(t_ends: list[int], s_ends: list[int]) -> list[tuple[int, int, int, int]]:
    """Groups ``(t0, t1, s0, s1)`` (token index ranges, end exclusive) covering the same text.

    A group closes when a teacher token and a student token end at the same character beyond the
    group's start. Trailing zero-width tokens (the end-of-turn markup) form one last group.
    """
    groups, i, j, t0, s0, start = [], 0, 0, 0, 0, 0
    nt, ns = len(t_ends), len(s_ends)
    while i < nt and j < ns:
        if t_ends[i] == s_ends[j] and t_ends[i] > start:
            groups.append((t0, i + 1, s0, j + 1))
            start, t0, s0 = t_ends[i], i + 1, j + 1
            i, j = i + 1, j + 1
        elif t_ends[i] <= s_ends[j]:
            i += 1
        else:
            j += 1
    if t0 < nt or s0 < ns:
        if t0 < nt and s0 < ns:
            groups.append((t0, nt, s0, ns))
        elif groups:  # one side has zero-width leftovers: they belong to the last group
            a, _, c, _ = groups.pop()
            groups.append((a, nt, c, ns))
    return groups


def label_runs(labels: torch.Tensor) -> list[torch.Tensor]:
    """The labelled ids ``[R_k]`` of each contiguous response run (one per assistant turn)."""
    m = labels != IGNORE_INDEX
    runs, cur = [], []
    for k in range(len(labels)):
        if m[k]:
            cur.append(int(labels[k]))
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [torch.tensor(r, dtype=torch.long) for r in runs]


def _keep_runs(encoding: dict[str, Any], n: int) -> None:
    """Unlabel the response runs after the first ``n`` (in place): truncation kept more turns here."""
    labels = torch.as_tensor(encoding["labels"]).clone()
    m = (labels != IGNORE_INDEX).to(torch.int8)
    starts = torch.nonzero(torch.diff(m, prepend=m.new_zeros(1)) == 1).flatten()
    if len(starts) > n:
        labels[int(starts[n]):] = IGNORE_INDEX
    encoding["labels"] = labels


@dataclass
class SampleAlignment:
    """Groups of one sample in response-token indices ``(t0, t1, s0, s1)`` and its token counts."""

    groups: list[tuple[int, int, int, int]]
    n_teacher: int
    n_student: int


@dataclass
class BatchAlignment:
    """Aligned rows of a batch (indices into each side's ``ResponseHidden`` rows).

    Attributes:
        pair_t, pair_s: ``[P]`` rows compared position by position (one-to-one groups; every pair in
            ``uld``); pair_w: ``[P]`` fp32 weight (student tokens the pair stands for).
        span_t, span_s: ``[Mt]``, ``[Ms]`` rows of the merged groups; span_t_group, span_s_group:
            the group index of each row; span_w: ``[G]`` weight of each merged group.
        counts: student response tokens in one-to-one groups / merged groups / unaligned (uld tails).
        mode: ``byte_aligned`` or ``uld``; vocab_t, vocab_s: ``[S]`` the shared-token id pairs.
        teacher_rows: ``[B]`` teacher response rows each sample keeps (all its turns unless truncation
            dropped some on the student side); a teacher cache reads these first rows of each sample.
    """

    pair_t: torch.Tensor
    pair_s: torch.Tensor
    pair_w: torch.Tensor
    span_t: torch.Tensor
    span_t_group: torch.Tensor
    span_s: torch.Tensor
    span_s_group: torch.Tensor
    span_w: torch.Tensor
    counts: dict[str, float] = field(default_factory=dict)
    mode: str = "byte_aligned"
    vocab_t: torch.Tensor | None = None
    vocab_s: torch.Tensor | None = None
    teacher_rows: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> BatchAlignment:
        """A copy with every tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return BatchAlignment(**moved)

    @property
    def num_groups(self) -> int:
        return int(self.span_w.numel())


STAT_KEYS = ("xtok_one_to_one", "xtok_merged", "xtok_unaligned")


class Aligner:
    """Aligns one sample's teacher and student encodings (in the collator, on the CPU).

    Args:
        mode: ``uld`` or ``byte_aligned``.
        teacher_tokenizer, student_tokenizer: the two HF tokenizers.
    """

    stat_keys = STAT_KEYS

    def __init__(self, mode: str, teacher_tokenizer: Any, student_tokenizer: Any) -> None:
        if mode not in ("uld", "byte_aligned"):
            raise ValueError(f"tokenizer_alignment: an Aligner takes 'uld' or 'byte_aligned', got {mode!r}")
        self.mode, self.teacher_tok, self.student_tok = mode, teacher_tokenizer, student_tokenizer
        self.vocab_t = self.vocab_s = None
        if mode == "byte_aligned":
            self.vocab_t, self.vocab_s = shared_vocab(teacher_tokenizer, student_tokenizer)
            if self.vocab_t.numel() == 0:
                raise ValueError("teacher.tokenizer_alignment: byte_aligned needs tokens that both tokenizers "
                                 "write the same way, and these share none; use uld")

    def align(self, sample_id: str, student: dict[str, Any], teacher: dict[str, Any]) -> SampleAlignment:
        """Groups of one sample; may unlabel surplus turns of one side (truncation). Raises
        ``SkipSample`` (``xtok_no_text``, ``xtok_text_mismatch``, ``xtok_no_response``)."""
        rs, rt = label_runs(torch.as_tensor(student["labels"])), label_runs(torch.as_tensor(teacher["labels"]))
        n = min(len(rs), len(rt))
        if n == 0:
            raise SkipSample("xtok_no_response", "one side labels no response tokens")
        if len(rs) != len(rt):  # whole turns dropped by truncation on one side only
            _keep_runs(student if len(rs) > n else teacher, n)
            rs, rt = rs[:n], rt[:n]
        groups, ot, os_ = [], 0, 0
        for k, (s_ids, t_ids) in enumerate(zip(rs, rt)):
            groups += [(a + ot, b + ot, c + os_, d + os_) for a, b, c, d in self._run_groups(sample_id, k, t_ids, s_ids)]
            ot, os_ = ot + len(t_ids), os_ + len(s_ids)
        return SampleAlignment(groups, ot, os_)

    def _run_groups(self, sample_id: str, turn: int, t_ids: torch.Tensor, s_ids: torch.Tensor):
        if self.mode == "uld":
            return [(i, i + 1, i, i + 1) for i in range(min(len(t_ids), len(s_ids)))]
        t_text, t_ends = char_ends(self.teacher_tok, t_ids.tolist())
        s_text, s_ends = char_ends(self.student_tok, s_ids.tolist())
        if not t_text.strip() or not s_text.strip():
            raise SkipSample("xtok_no_text", f"turn {turn}: the {'teacher' if not t_text.strip() else 'student'} "
                                             "response decodes to no text (no common alphabet)")
        # Templates differ in where a response's leading space goes ("ASSISTANT: x" vs "\nx").
        lt, ls = len(t_text) - len(t_text.lstrip()), len(s_text) - len(s_text.lstrip())
        if t_text.strip() != s_text.strip():
            a, b = t_text.strip(), s_text.strip()
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise SkipSample("xtok_text_mismatch", f"turn {turn}: teacher and student response texts differ at "
                                                   f"character {k}: {a[k:k + 12]!r} vs {b[k:k + 12]!r}")
        t_ends = [max(0, e - lt) for e in t_ends]
        s_ends = [max(0, e - ls) for e in s_ends]
        return span_groups(t_ends, s_ends)

    def collate(self, aligned: list[SampleAlignment]) -> BatchAlignment:
        """Batch rows of the kept samples (in collation order)."""
        pt, ps, pw, st, stg, ss, ssg, sw = [], [], [], [], [], [], [], []
        counts = dict.fromkeys(STAT_KEYS, 0.0)
        ot = os_ = 0
        for al in aligned:
            covered = 0
            for a, b, c, d in al.groups:
                covered += d - c
                if b - a == 1 and d - c == 1:
                    pt.append(ot + a)
                    ps.append(os_ + c)
                    pw.append(1.0)
                    counts["xtok_one_to_one"] += 1
                else:
                    g = len(sw)
                    st += range(ot + a, ot + b)
                    stg += [g] * (b - a)
                    ss += range(os_ + c, os_ + d)
                    ssg += [g] * (d - c)
                    sw.append(float(d - c))
                    counts["xtok_merged"] += d - c
            counts["xtok_unaligned"] += al.n_student - covered
            ot, os_ = ot + al.n_teacher, os_ + al.n_student

        def li(x):
            return torch.tensor(x, dtype=torch.long)

        return BatchAlignment(li(pt), li(ps), torch.tensor(pw), li(st), li(stg), li(ss), li(ssg), torch.tensor(sw),
                              counts, self.mode, self.vocab_t, self.vocab_s, li([al.n_teacher for al in aligned]))
