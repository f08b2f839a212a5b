"""Every HF VLM family as the teacher of the composed student: one distillation forward/backward.

Teacher and student have different chat templates, image processors and numbers of image tokens;
they share the text tokenizer (``vlm_tokenizer``), so their response tokens must pair up 1:1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from taid_vlm.adapters import build_adapter
from taid_vlm.adapters.checks import check_tokenizers
from taid_vlm.data.images import ImageRef
from taid_vlm.data.types import Sample
from taid_vlm.models.tiny import tiny_composed_config
from taid_vlm.models.tiny_hf import TINY_VARIANTS, VARIANT_FAMILY, vlm_tokenizer
from taid_vlm.train.step import teacher_response


def two_turn(i: int, extra: str = "") -> Sample:
    """User (image + question) / answer / user (text) / answer."""
    image = Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The circle is red."}]},
        {"role": "user", "content": [{"type": "text", "text": "How many shapes are there?" + extra}]},
        {"role": "assistant", "content": "There are 3 shapes."},
    ]
    return Sample(id=f"s{i}", messages=msgs, images=[ImageRef(image=image)])


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Token-mean KL(softmax(t) || softmax(s)) of ``[N, V]`` logits, in fp32."""
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


@pytest.fixture(scope="module")
def student(tiny_tokenizer):
    torch.manual_seed(1)
    tok = vlm_tokenizer(tiny_tokenizer)
    cfg = tiny_composed_config("hf_siglip", "pixel_shuffle_mlp", vocab_pad=5, tokenizer_len=len(tok))
    adapter = build_adapter("composed", config=cfg, tokenizer=tok)
    adapter.model.train()
    # The vision tower is frozen (config, not code, in real runs): it must get no gradient.
    for p in adapter.parts()["vision"].parameters():
        p.requires_grad_(False)
    return adapter


def _samples():
    return [two_turn(0), two_turn(1, " Answer the question using a single word or phrase.")]


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_family_teacher_distils_into_the_composed_student(variant, student, tiny_tokenizer):
    teacher = build_adapter(VARIANT_FAMILY[variant], config={"tiny": variant}, tokenizer=tiny_tokenizer)
    check_tokenizers(teacher.tokenizer, student.tokenizer)
    samples = _samples()
    tb = teacher.collate([teacher.encode(s, 512) for s in samples])
    sb = student.collate([student.encode(s, 512) for s in samples])
    assert tb["input_ids"].shape != sb["input_ids"].shape  # different templates / image token counts

    t = teacher_response(teacher, tb)
    student.model.zero_grad(set_to_none=True)
    s = student.response_hidden(sb)
    # k-th teacher response token == k-th student one, sample by sample
    assert torch.equal(s.targets, t.targets) and torch.equal(s.sample_index, t.sample_index)
    assert len(s.targets) > 20

    loss = forward_kl(s.logits(), t.logits())
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    parts = student.parts()
    for name in ("projector", "lm"):
        grads = [p.grad for p in parts[name].parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in parts["vision"].parameters())
    assert all(p.grad is None for p in teacher.model.parameters())


@pytest.mark.parametrize("variant", ["qwen2_vl", "gemma3", "idefics3"])
def test_identical_teacher_and_student_give_zero_kl(variant, tiny_tokenizer):
    model = build_adapter(VARIANT_FAMILY[variant], config={"tiny": variant}, tokenizer=tiny_tokenizer)
    batch = model.collate([model.encode(s, 512) for s in _samples()])
    t = teacher_response(model, batch)
    s = model.response_hidden(batch)
    loss = forward_kl(s.logits(), t.logits())
    assert abs(loss.item()) < 1e-6
    loss.backward()
    grads = [p.grad for p in model.parts()["lm"].parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) < 1e-6  # at the minimum: zero gradient
