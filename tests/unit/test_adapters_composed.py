"""The composed adapter: encode/collate, response rows equal the full forward, generate, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from taid_vlm.adapters import IGNORE_INDEX, build_adapter
from taid_vlm.data.types import Sample, SkipSample
from taid_vlm.models.tiny import tiny_composed_config


class _Ref:
    """Stands in for the data layer's ImageRef: opened lazily through .load()."""

    def __init__(self, image: Image.Image) -> None:
        self.image, self.loads = image, 0

    def load(self) -> Image.Image:
        self.loads += 1
        return self.image


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8))


def _sample(i: int, n_images: int = 1, answer: str = "The circle is red.") -> Sample:
    user = [{"type": "image"}] * n_images + [{"type": "text", "text": "What colour is the circle?"}]
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return Sample(id=f"s{i}", messages=msgs, images=[_Ref(_image(10 * i + k)) for k in range(n_images)])


@pytest.fixture
def adapter(tiny_tokenizer):
    torch.manual_seed(0)
    cfg = tiny_composed_config("hf_siglip", "pixel_shuffle_mlp", vocab_pad=6, tokenizer_len=len(tiny_tokenizer))
    a = build_adapter("composed", config=cfg, tokenizer=tiny_tokenizer)
    a.model.eval()
    return a


def test_encode_labels_only_the_answer_and_expands_image_slots(adapter, tiny_tokenizer):
    s = _sample(0, n_images=2)
    enc = adapter.encode(s, max_length=256)
    assert [r.loads for r in s.images] == [1, 1]
    assert enc["pixel_values"].shape == (2, 3, 32, 32)
    assert int((enc["input_ids"] == adapter.model.config.image_token_id).sum()) == 2 * 4
    kept = enc["labels"][enc["labels"] != IGNORE_INDEX]
    assert tiny_tokenizer.decode(kept) == "The circle is red.<|im_end|>"


def test_truncation_skips_when_the_answer_cannot_fit(adapter):
    full = adapter.encode(_sample(0), max_length=256)
    with pytest.raises(SkipSample) as err:
        adapter.encode(_sample(0), max_length=len(full["input_ids"]) - 3)
    assert err.value.reason == "response_truncated"
    bad = _sample(1, n_images=2)
    bad.images = bad.images[:1]
    with pytest.raises(SkipSample, match="bad_record"):
        adapter.encode(bad, max_length=256)


def test_response_rows_give_the_full_models_logits(adapter, tiny_tokenizer):
    samples = [_sample(0, 1), _sample(1, 2, answer="Yes."), _sample(2, 0, answer="No, there are 3.")]
    samples[1].images[1] = samples[1].images[1].image  # plain PIL images are accepted too
    batch = adapter.collate([adapter.encode(s, 256) for s in samples])
    assert batch["pixel_values"].shape[0] == 3
    rh = adapter.response_hidden(batch)
    V = len(tiny_tokenizer)
    assert rh.weight.shape[0] == V < adapter.model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        out = adapter.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                            attention_mask=batch["attention_mask"], output_hidden_states=True)
    b, p = torch.nonzero(batch["labels"][:, 1:] != IGNORE_INDEX, as_tuple=True)
    torch.testing.assert_close(rh.logits(), out.logits[b, p, :V], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rh.hidden, out.hidden_states[-1][b, p], rtol=1e-5, atol=1e-5)
    assert torch.equal(rh.targets, batch["labels"][b, p + 1]) and torch.equal(rh.sample_index, b)
    assert rh.sample_index.bincount().tolist() == [
        len(tiny_tokenizer(a + "<|im_end|>", add_special_tokens=False)["input_ids"])
        for a in ("The circle is red.", "Yes.", "No, there are 3.")
    ]


def test_generate_returns_the_greedy_continuation(adapter, tiny_tokenizer):
    samples = [_sample(0, 1), _sample(1, 2)]
    texts = adapter.generate(samples, max_new_tokens=5)
    assert len(texts) == 2
    enc = adapter.encode(samples[1], 256)
    prompt_len = int(torch.nonzero(enc["labels"] != IGNORE_INDEX)[0])
    ids = enc["input_ids"][None, :prompt_len]
    for _ in range(5):
        with torch.no_grad():
            nxt = adapter.model(input_ids=ids, pixel_values=enc["pixel_values"]).logits[:, -1, :len(tiny_tokenizer)]
        ids = torch.cat([ids, nxt.argmax(-1, keepdim=True)], 1)
        if int(ids[0, -1]) == tiny_tokenizer.eos_token_id:
            break
    assert texts[1] == tiny_tokenizer.decode(ids[0, prompt_len:], skip_special_tokens=True)


def test_parts_and_save_load_round_trip(adapter, tmp_path):
    assert set(adapter.parts()) == {"vision", "projector", "lm"}
    adapter.save(str(tmp_path))
    again = build_adapter("auto", path=str(tmp_path))
    assert again.name == "composed" and again.model.config.num_image_tokens == 4
    again.model.eval()
    batch = adapter.collate([adapter.encode(_sample(0), 256)])
    with torch.no_grad():
        assert torch.equal(adapter.response_hidden(batch).logits(), again.response_hidden(batch).logits())


def test_missing_processor_is_a_clear_error(adapter, tmp_path):
    adapter.model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no processor"):
        build_adapter("composed", path=str(tmp_path))


def test_data_layer_image_refs_are_loaded_and_their_skips_propagate(adapter, tmp_path):
    images = pytest.importorskip("taid_vlm.data.images")
    _image(3).save(tmp_path / "a.png")
    s = _sample(0)
    s.images = [images.ImageRef(path="a.png", root=str(tmp_path))]
    enc = adapter.encode(s, 256)
    direct = adapter.processor.preprocess_images([_image(3)])
    torch.testing.assert_close(enc["pixel_values"], direct)
    s.images = [images.ImageRef(path="missing.png", root=str(tmp_path))]
    with pytest.raises(SkipSample) as err:
        adapter.encode(s, 256)
    assert err.value.reason == "missing_image"
