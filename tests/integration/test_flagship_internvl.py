"""configs/taid_vlm_2b.yaml in miniature: a tiny InternVL teacher and a smaller tiny InternVL student
(one tokenizer, as InternVL3-8B-hf and -2B-hf share one), Mantis-Instruct records read through
``datasets`` from a local copy laid out as on the hub (subset ``multi_vqa``, images as bare paths
under ``data.image_root``, one record over ``data.max_images``), TAID through the CLI with the vision
tower frozen. The student leaves as InternVLForConditionalGeneration and answers with plain
transformers; the same pair runs from the teacher cache, with student sampling, across tokenizers
(byte_aligned) and resumes bitwise after a kill."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from taid_vlm.cli import main
from tests.unit.test_data_mantis import write_hub_layout

from .conftest import read_jsonl
from .test_family_students_train import check_parts_moved, mantis_records, run_config, train

# One intra-op thread: see one_thread in conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_tokenizer) -> dict:
    """Saved teacher (3-layer, 64-wide LM) and student (2-layer, 32-wide), and the Mantis copy."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from taid_vlm.models.tiny_hf import tiny_vlm

    root = tmp_path_factory.mktemp("flagship")
    student, processor = tiny_vlm("internvl", tiny_tokenizer, seed=1)
    student.save_pretrained(root / "student")
    processor.save_pretrained(root / "student")
    cfg = student.config.to_dict()
    cfg["text_config"].update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                               "num_attention_heads": 8})
    cfg["text_config"].pop("layer_types", None)  # one per layer: rebuilt for the new depth
    torch.manual_seed(0)
    teacher = InternVLForConditionalGeneration(InternVLConfig.from_dict(cfg))
    teacher.save_pretrained(root / "teacher")
    processor.save_pretrained(root / "teacher")
    data = root / "Mantis-Instruct"
    data.mkdir()
    records = mantis_records(root / "images", n_extra_images=3)  # m0: 4 images, over the cap of 3
    write_hub_layout(data, {"multi_vqa": records, "nlvr2": records[:1]})
    n_params = [sum(p.numel() for p in m.parameters()) for m in (teacher, student)]
    assert n_params[0] > 1.5 * n_params[1]  # a larger teacher of the student's own family
    return {"root": root, "teacher": str(root / "teacher"), "student": str(root / "student"),
            "data": {"train": str(data), "subset": "multi_vqa", "image_root": str(root / "images"),
                     "max_images": 3}}


def config(pair, tmp_path, **train) -> dict:
    return run_config(tmp_path, pair["student"], pair["teacher"], pair["data"], **train)


def report(out) -> dict:
    return json.loads((out / "final" / "metrics.json").read_text())["data_report"]


def test_flagship_miniature_trains_reloads_and_answers(pair, tmp_path):
    cfg = config(pair, tmp_path, max_steps=3, save_every=2)
    assert train(tmp_path, cfg) == 0
    out = tmp_path / "out"
    log = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3] and all(math.isfinite(r["distil_loss"]) for r in log)
    assert log[0]["taid_t"] == pytest.approx(0.4) and log[2]["taid_t"] > log[1]["taid_t"] > 0.4
    assert report(out)["used"] == 3 and report(out)["skipped"] == {"too_many_images": 1}
    check_parts_moved(pair["student"], out / "final")

    # Plain transformers, remote code off: the class, the processor, a two-image question answered.
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(out / "final", trust_remote_code=False).eval()
    processor = AutoProcessor.from_pretrained(out / "final", trust_remote_code=False)
    images = [Image.new("RGB", (32, 32), (200, 0, 0)), Image.new("RGB", (40, 32), (0, 0, 200))]
    messages = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "image", "image": images[1]},
                                             {"type": "text", "text": "Which image is red?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    n_ctx = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_ctx == 4 * inputs["pixel_values"].shape[0]  # 4 tokens per tile, every tile of both images
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    answer = processor.decode(gen[0, inputs["input_ids"].shape[1]:])
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 6 and isinstance(answer, str) and answer
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(out / "final"))
    assert type(pipe.model) is InternVLForConditionalGeneration
    assert isinstance(pipe(text=messages, max_new_tokens=4, return_full_text=False)[0]["generated_text"], str)

    # Killed at step 3, resumed from step 2's checkpoint: the same student, bit for bit.
    crash = tmp_path / "crash"
    crash.mkdir()
    cfg["train"]["output_dir"] = str(crash / "out")
    (crash / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TAID_VLM_TEST_KILL_AT_STEP": "3", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "taid_vlm.cli", "train", str(crash / "c.yaml")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main(["train", str(crash / "c.yaml"), "--resume", "auto"]) == 0
    a, b = load_file(out / "final" / "model.safetensors"), load_file(crash / "out" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flagship_pair_from_the_teacher_cache(pair, tmp_path):
    cfg = config(pair, tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cache = tmp_path / "cache"
    assert main(["cache-teacher", str(tmp_path / "c.yaml"), "--output", str(cache), "--top-k", "16",
                 "--dtype", "float32"]) == 0
    cfg["teacher"]["cache"] = str(cache)
    assert train(tmp_path, cfg) == 0
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    assert [r["step"] for r in log] == [1, 2] and all(r["distil_loss"] > 0 for r in log)
    assert report(tmp_path / "out")["used"] == 3 and report(tmp_path / "out")["skipped"] == {"too_many_images": 1}


@pytest.mark.parametrize("extra", [{"sampling": {"mode": "mixed", "lam": 1.0, "max_new_tokens": 4}},
                                   {"teacher": {"tokenizer_alignment": "byte_aligned"}}], ids=["sampling", "byte_aligned"])
def test_flagship_pair_with_sampling_and_across_tokenizers(pair, tmp_path, extra):
    cfg = config(pair, tmp_path)
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    assert train(tmp_path, cfg) == 0
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["distil_loss"]) for r in log)
    if "sampling" in extra:
        assert log[-1]["sampling_seconds"] > 0
    assert report(tmp_path / "out")["used"] == 3


def test_a_family_whose_parts_miss_parameters_is_refused_at_start_up(pair, tmp_path, monkeypatch, capsys):
    """The per-part switches act on the family's parts: a rule that leaves the LM body out of every
    part could not freeze or train it, so the student is refused before the teacher loads."""
    import dataclasses

    from taid_vlm.adapters.vlm_families import FAMILIES

    monkeypatch.setitem(FAMILIES, "internvl", dataclasses.replace(FAMILIES["internvl"], lm=("lm_head",)))
    assert train(tmp_path, config(pair, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "student.family" in err and "'internvl' family cannot be a student" in err
    assert "parameters in no part (model.language_model." in err
    assert not (tmp_path / "out").exists()
