"""A saved text student loads in lm-evaluation-harness (``--model hf --model_args pretrained=DIR``).

Offline: a tiny random-weight Qwen2 student saved by the text adapter (plain ``save_pretrained`` of
model + tokenizer) is scored on a 4-question local multiple-choice task (tests/data/lm_eval_tiny).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TASK_DIR = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tiny"


def test_saved_text_student_runs_in_lm_eval(tmp_path, tiny_tokenizer, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from taid_vlm.adapters import build_adapter

    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_DATASETS_OFFLINE") == "1"
    cfg = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256}
    student = tmp_path / "student"
    build_adapter("text", config=cfg, tokenizer=tiny_tokenizer).save(str(student))
    # The task's data_files path is relative to the working directory.
    monkeypatch.chdir(TASK_DIR)
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={student},dtype=float32",
                                  tasks=["taid_tiny_mc"], task_manager=TaskManager(include_path=str(TASK_DIR)),
                                  device="cpu", batch_size=2)
    res = out["results"]["taid_tiny_mc"]
    assert res["sample_len"] == 4
    acc = res["acc,none"]
    # 4 questions: the accuracy is a whole number of quarters.
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0 and (acc * 4) == pytest.approx(round(acc * 4))
    # One log-likelihood request per choice: 3, 3, 2 and 4 choices.
    samples = sorted(out["samples"]["taid_tiny_mc"], key=lambda s: s["doc_id"])
    assert [len(s["resps"]) for s in samples] == [3, 3, 2, 4]
    assert all(s["acc"] in (0.0, 1.0) for s in samples)
    assert acc == pytest.approx(sum(s["acc"] for s in samples) / 4)


VQA_TASK = """task: taid_tiny_vqa
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: tiny_vqa.parquet
test_split: test
output_type: generate_until
doc_to_image: [image]
doc_to_text: "<image>{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  max_gen_toks: 3
  until: ["<|im_end|>"]
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_saved_vlm_student_runs_in_lm_eval_hf_multimodal(tmp_path, tiny_tokenizer, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from lm_eval.tasks import TaskManager
    from PIL import Image

    from taid_vlm.adapters import build_adapter
    from taid_vlm.models.tiny import tiny_composed_config

    student = tmp_path / "student"
    build_adapter("composed", config=tiny_composed_config("hf_siglip", "mlp"), tokenizer=tiny_tokenizer).save(
        str(student))
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}
    for name, rgb in colours.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"{name}.png")
    ds = Dataset.from_dict({"image": [str(tmp_path / f"{c}.png") for c in colours],
                            "question": ["What colour is the image?"] * 3, "answer": list(colours)})
    ds.cast_column("image", ImageFeature()).to_parquet(str(tmp_path / "tiny_vqa.parquet"))
    (tmp_path / "taid_tiny_vqa.yaml").write_text(VQA_TASK)
    monkeypatch.chdir(tmp_path)  # data_files is relative to the working directory
    out = lm_eval.simple_evaluate(model="hf-multimodal", model_args=f"pretrained={student},dtype=float32",
                                  tasks=["taid_tiny_vqa"], task_manager=TaskManager(include_path=str(tmp_path)),
                                  device="cpu", batch_size=2, apply_chat_template=True, log_samples=True)
    samples = out["samples"]["taid_tiny_vqa"]
    assert len(samples) == 3 and all(isinstance(s["resps"][0][0], str) for s in samples)
    em = out["results"]["taid_tiny_vqa"]["exact_match,none"]
    assert em == pytest.approx(sum(s["exact_match"] for s in samples) / 3)
