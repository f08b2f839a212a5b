"""Every tiny HF VLM family, saved as a checkpoint, distils into the composed student through
``taid-vlm train`` (``family: auto``, TAID, 2 optimizer steps): the run finishes, the losses are
finite, every sample's response tokens pair up with the teacher's (none skipped) and the
student's weights move."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from taid_vlm.adapters import build_adapter
from taid_vlm.adapters.registry import family_for_model_type
from taid_vlm.cli import main
from taid_vlm.models.tiny import tiny_composed_config
from taid_vlm.models.tiny_hf import TINY_VARIANTS, VARIANT_FAMILY, tiny_vlm, vlm_tokenizer

from .conftest import read_jsonl

# Width x height: wide, tall, square and very wide images, so anyres (LLaVA-NeXT / OneVision),
# Pixtral's aspect-ratio-keeping and Idefics3's splitting give each sample another shape.
SIZES = [(40, 32), (32, 40), (32, 32), (48, 24)]
QA = [("What colour is the circle?", "The circle is red."), ("How many shapes are there?", "There are 3 shapes."),
      ("Is there a blue square?", "Yes."), ("Where is the triangle?", "The triangle is on the left.")]


# One intra-op thread: see one_thread in conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer) -> dict:
    """A 4-record LLaVA-format set (two turns each) and a saved composed student (native LLaVA)."""
    root = tmp_path_factory.mktemp("family_train")
    records = []
    for i, (w, h) in enumerate(SIZES):
        pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        (q1, a1), (q2, a2) = QA[i], QA[(i + 1) % len(QA)]
        records.append({"id": f"r{i}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{q1}"}, {"from": "gpt", "value": a1},
            {"from": "human", "value": q2}, {"from": "gpt", "value": a2}]})
    (root / "train.json").write_text(json.dumps(records))
    tok = vlm_tokenizer(tiny_tokenizer)  # the vocabulary every tiny family shares
    torch.manual_seed(0)
    cfg = tiny_composed_config("hf_siglip", "mlp", vocab_pad=7, tokenizer_len=len(tok))
    build_adapter("composed", config=cfg, tokenizer=tok).save(str(root / "student"))
    return {"root": root, "train": str(root / "train.json"), "student": str(root / "student")}


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_saved_family_teacher_distils_through_the_cli(variant, env, tmp_path, tiny_tokenizer):
    model, processor = tiny_vlm(variant, tiny_tokenizer)
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    processor.save_pretrained(teacher)
    model_type = json.loads((teacher / "config.json").read_text())["model_type"]
    assert family_for_model_type(model_type) == VARIANT_FAMILY[variant]  # what `family: auto` will pick
    out = tmp_path / "out"
    cfg = {
        "student": {"family": "composed", "path": env["student"]},
        "teacher": {"family": "auto", "path": str(teacher)},
        "data": {"train": env["train"], "max_length": 256},
        "loss": {"name": "taid"},
        "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 2, "lr": 1e-2, "cpu": True, "seed": 0},
        "logging": {"report_to": [], "progress": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0

    log = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["distil_loss"]) and r["distil_loss"] > 0 for r in log)
    assert log[0]["taid_t"] == pytest.approx(0.4) and log[1]["taid_t"] > 0.4
    report = json.loads((out / "final" / "metrics.json").read_text())["data_report"]
    assert report["skipped"] == {} and report["used"] == 4  # every sample's responses paired with the teacher's
    before, after = load_file(Path(env["student"]) / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    for part in ("multi_modal_projector.", "language_model.", "vision_tower."):  # the head is tied to the embeddings
        assert any(part in k for k in moved), part


def test_flagship_shape_a_text_lm_student_takes_the_teacher_tokenizer(env, tmp_path, tiny_tokenizer, capsys):
    """configs/composed_vlm_qwen2vl72b.yaml in miniature: a Qwen2-VL teacher; the student is a pretrained text LM
    whose own tokenizer lacks the vision tokens, with the teacher's <|image_pad|> as its image token."""
    from taid_vlm.models.factory import build_text_lm
    from taid_vlm.models.tiny import tiny_text_config

    model, processor = tiny_vlm("qwen2_vl", tiny_tokenizer)
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    processor.save_pretrained(teacher)
    lm = build_text_lm({"config": tiny_text_config("qwen2")}, tiny_tokenizer)  # vocab = the text tokenizer's
    lm.save_pretrained(tmp_path / "lm")
    tiny_tokenizer.save_pretrained(tmp_path / "lm")
    student = {"family": "composed", "tokenizer": str(teacher), "config": {
        **tiny_composed_config("hf_siglip", "pixel_shuffle_mlp"), "text": {"path": str(tmp_path / "lm")},
        "image_token": "<|image_pad|>"}}
    cfg = {
        "student": student, "teacher": {"family": "qwen2_vl", "path": str(teacher)},
        "data": {"train": env["train"], "max_length": 256}, "loss": {"name": "taid"},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "batch_size": 2, "cpu": True},
        "logging": {"report_to": [], "progress": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    final = tmp_path / "out" / "final"
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(final)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert saved.convert_tokens_to_ids("<|image_pad|>") == image_pad and len(saved) == len(processor.tokenizer)
    rows = load_file(final / "model.safetensors")["language_model.model.embed_tokens.weight"].shape[0]
    assert rows >= len(processor.tokenizer) > len(tiny_tokenizer)  # the LM's embeddings grew, and were saved
    # With the LM's own tokenizer the image token would get another id than the teacher's: refused at
    # start-up, with the fix.
    student["tokenizer"] = str(tmp_path / "lm")
    cfg["train"]["output_dir"] = str(tmp_path / "out2")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "set student.tokenizer to the teacher's tokenizer" in capsys.readouterr().err
