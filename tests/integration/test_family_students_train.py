"""HF VLM students: every tiny family, saved as a pretrained checkpoint, distils from a teacher of its
own family through ``taid-vlm train`` (``family: auto``, TAID, fused loss, vision tower frozen) on
Mantis-format multi-image records, and leaves training in its own transformers class with its
processor: it reloads with trust_remote_code off, the frozen tower unchanged, projector and LM moved."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from taid_vlm.cli import main
from taid_vlm.models.tiny_hf import TINY_VARIANTS, tiny_vlm

from .conftest import read_jsonl

# (images, question, answer): one to three images per record, each with its <image> in the text.
RECORDS = [(1, "What colour is the circle?", "The circle is red."), (2, "How many shapes are there?", "There are 3 shapes."),
           (3, "Is there a blue square?", "Yes."), (2, "Where is the triangle?", "The triangle is on the left.")]
SIZES = [(40, 32), (32, 40), (32, 32), (48, 24)]


# One intra-op thread: see one_thread in conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


def mantis_records(image_dir, n_extra_images: int = 0) -> list[dict]:
    """Mantis-Instruct records whose images are bare relative paths (its zip layout)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (n, q, a) in enumerate(RECORDS):
        images = []
        for k in range(n + (n_extra_images if i == 0 else 0)):
            w, h = SIZES[(i + k) % len(SIZES)]
            pixels = np.random.default_rng(10 * i + k).integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / f"r{i}_{k}.png")
            images.append({"bytes": None, "path": f"r{i}_{k}.png"})
        marks = "\n".join(f"Image {k + 1}: <image>" for k in range(len(images)))
        out.append({"id": f"m{i}", "source": "tiny", "images": images, "conversation": [
            {"role": "user", "content": f"{marks}\n{q}"}, {"role": "assistant", "content": a},
            {"role": "user", "content": "Say it again."}, {"role": "assistant", "content": a}]})
    return out


@pytest.fixture(scope="module")
def mantis_json(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mantis_json")
    (root / "train.json").write_text(json.dumps(mantis_records(root / "images")))
    return {"train": str(root / "train.json"), "image_root": str(root / "images")}


def save_pair(variant: str, tokenizer, where) -> tuple[str, str]:
    """A tiny teacher and a differently initialised student of one family, saved with their processors."""
    paths = []
    for name, seed in (("teacher", 0), ("student", 1)):
        model, processor = tiny_vlm(variant, tokenizer, seed=seed)
        model.save_pretrained(where / name)
        processor.save_pretrained(where / name)
        paths.append(str(where / name))
    return paths[0], paths[1]


def run_config(tmp_path, student: str, teacher: str, data: dict, **train) -> dict:
    return {
        "student": {"family": "auto", "path": student, "train_vision": False},
        "teacher": {"family": "auto", "path": teacher},
        "data": {"max_length": 320, "format": "mantis", **data},
        "loss": {"name": "taid", "fused": True},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "batch_size": 2, "lr": 1e-2, "cpu": True,
                  "seed": 0, **train},
        "logging": {"report_to": [], "progress": False},
    }


def train(tmp_path, cfg: dict, *args: str) -> int:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return main(["train", str(tmp_path / "c.yaml"), *args])


def check_parts_moved(student: str, final) -> None:
    """The frozen vision tower is saved unchanged; projector and LM weights moved."""
    import transformers

    from taid_vlm.adapters.hf_vlm import rule_parts
    from taid_vlm.adapters.registry import family_for_model_type
    from taid_vlm.adapters.vlm_families import family_rule

    arch = json.loads((final / "config.json").read_text())
    model = getattr(transformers, arch["architectures"][0]).from_pretrained(final, trust_remote_code=False)
    before = getattr(transformers, arch["architectures"][0]).from_pretrained(student)
    assert type(model) is type(before)  # the student's own transformers class
    rule = family_rule(family_for_model_type(arch["model_type"]))
    for part, moved in (("vision", False), ("projector", True), ("lm", True)):
        a = dict(rule_parts(before, rule)[part].named_parameters())
        b = dict(rule_parts(model, rule)[part].named_parameters())
        changed = [k for k in a if not torch.equal(a[k], b[k])]
        assert bool(changed) == moved, (part, changed[:3])


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_family_student_distils_from_its_own_family(variant, mantis_json, tmp_path, tiny_tokenizer):
    teacher, student = save_pair(variant, tiny_tokenizer, tmp_path)
    cfg = run_config(tmp_path, student, teacher, mantis_json)
    assert train(tmp_path, cfg) == 0
    out = tmp_path / "out"
    log = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["distil_loss"] > 0 for r in log)
    report = json.loads((out / "final" / "metrics.json").read_text())["data_report"]
    assert report["skipped"] == {} and report["used"] == 4  # every multi-image record, all images
    check_parts_moved(student, out / "final")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out / "final")
    assert len(processor.tokenizer) == len(AutoProcessor.from_pretrained(student).tokenizer)
