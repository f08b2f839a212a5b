"""HF VLM family adapters on tiny random models: labels, response-only logits, generation, parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from taid_vlm.adapters import IGNORE_INDEX, build_adapter
from taid_vlm.adapters.base import response_positions
from taid_vlm.adapters.checks import check_tokenizers
from taid_vlm.data.images import ImageRef
from taid_vlm.data.types import Sample
from taid_vlm.models.tiny_hf import TINY_VARIANTS, VARIANT_FAMILY, vlm_tokenizer

ANSWERS = ("The circle is red.", "There are 3 shapes.")


def _image(seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def two_turn(i: int = 0, extra: str = "") -> Sample:
    """User (image + question) / answer / user (text) / answer; ``extra`` lengthens the 2nd question."""
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[0]}]},
        {"role": "user", "content": [{"type": "text", "text": "How many shapes are there?" + extra}]},
        {"role": "assistant", "content": ANSWERS[1]},
    ]
    return Sample(id=f"s{i}", messages=msgs, images=[ImageRef(image=_image(i))])


_CACHE: dict[str, object] = {}


@pytest.fixture(params=TINY_VARIANTS)
def adapter(request, tiny_tokenizer):
    # One build per variant for the whole module (building is the slow part).
    if request.param not in _CACHE:
        _CACHE[request.param] = build_adapter(VARIANT_FAMILY[request.param], config={"tiny": request.param},
                                              tokenizer=tiny_tokenizer)
    return _CACHE[request.param]


def test_labels_are_exactly_the_assistant_tokens_of_the_shared_tokenizer(adapter, tiny_tokenizer):
    enc = adapter.encode(two_turn(), max_length=512)
    kept = enc["labels"][enc["labels"] != IGNORE_INDEX].tolist()
    eos = tiny_tokenizer.eos_token_id
    expected = []
    for answer in ANSWERS:  # response text must tokenize as in the shared tokenizer, + end of turn
        expected += tiny_tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
    assert kept == expected
    assert adapter.tokenizer.decode(kept) == "The circle is red.<|im_end|>There are 3 shapes.<|im_end|>"
    assert (enc["labels"] == IGNORE_INDEX).sum() > 0 and len(enc["input_ids"]) == len(enc["labels"])
    # the family's image tokens are in the ids; pixel values came with them
    assert enc["pixel_values"].numel() > 0


def test_family_tokenizers_share_one_vocabulary(adapter, tiny_tokenizer):
    check_tokenizers(adapter.tokenizer, vlm_tokenizer(tiny_tokenizer))
    rows = adapter.model.get_output_embeddings().weight.shape[0]
    assert rows > len(adapter.tokenizer)  # padded head, like real checkpoints


def test_response_logits_equal_the_full_forward_at_response_positions(adapter, tiny_tokenizer):
    batch = adapter.collate([adapter.encode(two_turn(0), 512), adapter.encode(two_turn(1, " Yes. No."), 512)])
    assert batch["input_ids"].shape[0] == 2 and (batch["attention_mask"] == 0).any()  # right padding happened
    with torch.no_grad():
        rh = adapter.response_hidden(batch)
        full = adapter.model(**adapter.model_inputs(batch)).logits
    b, p = response_positions(batch["labels"])
    vocab = len(adapter.tokenizer)
    per_sample = sum(len(tiny_tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in ANSWERS)
    assert rh.weight.shape[0] == vocab and rh.hidden.shape[0] == len(b) == 2 * per_sample
    torch.testing.assert_close(rh.logits(), full[b, p, :vocab], atol=1e-4, rtol=1e-4)
    assert torch.equal(rh.targets, batch["labels"][b, p + 1])
    assert rh.sample_index.tolist() == b.tolist()
    assert rh.logit_softcap == (30.0 if adapter.name == "gemma3" else None)


def test_generate_batched_with_left_padding_equals_one_by_one(adapter):
    samples = [two_turn(0), two_turn(1, " Answer the question using a single word or phrase.")]
    both = adapter.generate(samples, max_new_tokens=3)
    assert len(both) == 2 and all(isinstance(t, str) for t in both)
    assert both == [adapter.generate([s], max_new_tokens=3)[0] for s in samples]


def test_parts_are_disjoint_and_cover_every_parameter(adapter):
    parts = adapter.parts()
    assert set(parts) == {"vision", "projector", "lm"}
    seen: dict[int, str] = {}
    for name, module in parts.items():
        params = list(module.parameters())
        assert params, name
        for prm in params:
            assert id(prm) not in seen, f"{name} shares a parameter with {seen.get(id(prm))}"
            seen[id(prm)] = name
    assert set(seen) == {id(p) for p in adapter.model.parameters()}


@pytest.mark.parametrize("variant", ["mistral3", "llava_next", "llava_onevision"])
def test_images_of_different_shapes_batch_as_each_alone(tiny_tokenizer, variant):
    # Pixtral keeps each image's aspect ratio, LLaVA-NeXT / OneVision cut a wide image into more anyres
    # crops than a tall one: a batch zero-pads them and image_sizes crops the padding off again.
    a = _CACHE.get(variant) or build_adapter(variant, config={"tiny": variant}, tokenizer=tiny_tokenizer)
    wide, tall = two_turn(0), two_turn(1)
    wide.images = [ImageRef(image=_image(0, (64, 32)))]
    tall.images = [ImageRef(image=_image(1, (16, 32)))]
    encs = [a.encode(s, 512) for s in (wide, tall)]
    assert encs[0]["pixel_values"].shape[1:] != encs[1]["pixel_values"].shape[1:]
    batch = a.collate(encs)
    assert batch["pixel_values"].shape[0] == 2 and batch["image_sizes"].shape == (2, 2)
    with torch.no_grad():
        together = a.response_hidden(batch).logits()
        alone = torch.cat([a.response_hidden(a.collate([e])).logits() for e in encs])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
