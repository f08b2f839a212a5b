"""HF VLM adapters: truncation, text-only samples, bad input and clear errors, save -> auto load."""

from __future__ import annotations

import json

import pytest
import torch
from test_adapters_hf_vlm import ANSWERS, two_turn

from taid_vlm.adapters import IGNORE_INDEX, build_adapter
from taid_vlm.adapters.registry import available_adapters, family_for_model_type
from taid_vlm.data.types import Sample, SkipSample


@pytest.fixture(scope="module")
def qwen(tiny_tokenizer):
    return build_adapter("qwen2_vl", config={"tiny": "qwen2_vl"}, tokenizer=tiny_tokenizer)


def test_every_family_is_registered_with_its_model_types():
    for fam in ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "idefics3",
                "paligemma", "gemma3", "mistral3"):
        assert fam in available_adapters()
        assert family_for_model_type(fam) == fam
    assert family_for_model_type("smolvlm") == "idefics3"


def test_truncation_keeps_whole_turns_or_skips(qwen, tiny_tokenizer):
    full = qwen.encode(two_turn(), 512)
    first_end = int(torch.nonzero(full["labels"] != IGNORE_INDEX)[len(tiny_tokenizer(ANSWERS[0])["input_ids"])]) + 1
    cut = qwen.encode(two_turn(), first_end + 2)  # room for turn 1 only
    kept = cut["labels"][cut["labels"] != IGNORE_INDEX]
    assert qwen.tokenizer.decode(kept) == ANSWERS[0] + "<|im_end|>"
    assert len(cut["input_ids"]) <= first_end + 2 and cut["image_grid_thw"].shape == (1, 3)
    with pytest.raises(SkipSample) as err:
        qwen.encode(two_turn(), first_end - 1)
    assert err.value.reason == "response_truncated"


def test_text_only_sample_in_a_batch_with_an_image_sample(qwen):
    text = Sample(id="t", messages=[{"role": "user", "content": "Hello!"},
                                    {"role": "assistant", "content": "Hi, how can I help you today?"}])
    enc = qwen.encode(text, 512)
    assert "pixel_values" not in enc
    batch = qwen.collate([enc, qwen.encode(two_turn(), 512)])
    assert batch["image_grid_thw"].shape == (1, 3)
    with torch.no_grad():
        rh = qwen.response_hidden(batch)
    assert torch.isfinite(rh.logits()).all() and set(rh.sample_index.tolist()) == {0, 1}


def test_image_count_mismatch_and_paligemma_without_image_are_skipped(tiny_tokenizer, qwen):
    bad = two_turn()
    bad.images = []
    with pytest.raises(SkipSample) as err:
        qwen.encode(bad, 512)
    assert err.value.reason == "bad_record"
    pali = build_adapter("paligemma", config={"tiny": "paligemma"}, tokenizer=tiny_tokenizer)
    text = Sample(id="t", messages=[{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi"}])
    with pytest.raises(SkipSample, match="needs an image"):
        pali.encode(text, 512)


def test_unknown_family_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*gemma3.*qwen2_vl"):
        build_adapter("qwen9_vl", config={"tiny": "qwen2_vl"})


def test_remote_code_model_without_the_flag_says_how_to_fix(tmp_path):
    cfg = {"model_type": "my_remote_vlm", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="trust_remote_code: true"):
        build_adapter("llava", path=str(tmp_path))


def test_missing_processor_pieces_are_named(qwen, tmp_path):
    qwen.model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"no image processor .* and no tokenizer .*processor.save_pretrained"):
        build_adapter("qwen2_vl", path=str(tmp_path / "m"))
    qwen.tokenizer.save_pretrained(tmp_path / "m")  # tokenizer alone: no image processor
    with pytest.raises(ValueError, match=r"no image processor \(processor_config.json\); save"):
        build_adapter("qwen2_vl", path=str(tmp_path / "m"))


def test_save_then_auto_load_gives_the_same_response_logits(qwen, tmp_path):
    qwen.save(str(tmp_path))
    again = build_adapter("auto", path=str(tmp_path))
    assert again.name == "qwen2_vl"
    batch = qwen.collate([qwen.encode(two_turn(), 512)])
    assert torch.equal(batch["input_ids"], again.collate([again.encode(two_turn(), 512)])["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(again.response_hidden(batch).logits(), qwen.response_hidden(batch).logits())
    with pytest.raises(ValueError, match="not one of the 'llava' family"):
        build_adapter("llava", path=str(tmp_path))


def test_idefics3_pads_missing_images_with_zero_images_the_model_drops(tiny_tokenizer):
    ide = build_adapter("idefics3", config={"tiny": "idefics3"}, tokenizer=tiny_tokenizer)
    text = Sample(id="t", messages=[{"role": "user", "content": "Hello!"},
                                    {"role": "assistant", "content": "Hi, how can I help you today?"}])
    encs = [ide.encode(text, 512), ide.encode(two_turn(), 512)]
    batch = ide.collate(encs)
    assert batch["pixel_values"].shape[:2] == (2, 5) and batch["pixel_values"][0].abs().sum() == 0
    with torch.no_grad():
        both = ide.response_hidden(batch).logits()
        alone = torch.cat([ide.response_hidden(ide.collate([e])).logits() for e in encs])
    torch.testing.assert_close(both, alone, atol=1e-4, rtol=1e-4)
