"""Pre-training distillation on raw text through the CLI: the shipped recipe, and streams that
resume exactly after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from taid_vlm.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "tiny_text_pretrain.yaml"
TEACHER = {"model_type": "qwen2", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
           "tie_word_embeddings": True}
SENTENCES = ["The circle is red.", "There are 3 shapes.", "Where is the triangle?", "The triangle is on the left.",
             "A green triangle at the top right and a yellow circle at the bottom left.", "Is there a blue square?"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("corpus")
    docs = [" ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 4)) for i in range(40)]
    (root / "train.txt").write_text("\n\n".join(docs) + "\n\n   \n")
    (root / "train.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs) + "\n" + '{"note": 1}\n')
    (root / "val.txt").write_text("\n\n".join(docs[:6]))
    tiny_tokenizer.save_pretrained(root / "tok")
    return root


def _config(tmp: Path, corpus: Path, **data) -> Path:
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["student"]["tokenizer"] = str(corpus / "tok")
    cfg["teacher"] = {"family": "text", "config": TEACHER, "tokenizer": str(corpus / "tok")}
    cfg["data"].update(train=str(corpus / "train.txt"), val=str(corpus / "val.txt"), max_length=32,
                       cache_dir=str(tmp / "hf"), **data)
    cfg["train"].update(output_dir=str(tmp / "out"), max_steps=3, batch_size=4, save_every=0, warmup_steps=0)
    cfg["eval"] = {"every": 0, "max_batches": 1}
    cfg["logging"] = {"tensorboard": False, "progress": False}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_shipped_recipe_is_raw_text_taid():
    cfg = yaml.safe_load(RECIPE.read_text())
    assert cfg["data"]["format"] == "text" and cfg["loss"]["name"] == "taid"


@pytest.mark.parametrize("loss", ["taid", "fkl", "sft"])
def test_recipe_trains_on_packed_text(tmp_path, corpus, loss):
    cfg = _config(tmp_path, corpus)
    assert main(["train", str(cfg), f"loss.name={loss}"]) == 0
    out = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())
    assert out["data_report"]["read"] == 40 and out["data_report"]["skipped"] == {}
    log = [json.loads(x) for x in (tmp_path / "out" / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r and "step" in r]
    # Packed rows of 32 tokens: every token is a target except sequence starts (each row's first
    # and each document's first), so fewer than 4 x 31 but far more than a chat's responses.
    assert len(steps) == 3 and all(62 <= r["tokens"] < 4 * 31 for r in steps)
    assert torch.isfinite(torch.tensor(out["metrics"]["val_loss"]))


def test_missing_text_column_is_counted_and_the_column_is_configurable(tmp_path, corpus):
    cfg = _config(tmp_path, corpus, text_column="body")
    assert main(["train", str(cfg), f"data.train={corpus / 'train.jsonl'}"]) == 0
    rep = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())["data_report"]
    assert rep["read"] == 41 and rep["skipped"] == {"missing_text": 1}


def test_streamed_text_resumes_bitwise_after_a_crash(tmp_path, corpus):
    common = ["data.streaming=true", "train.max_steps=4", "train.save_every=2", "train.keep_last=3"]
    (tmp_path / "ref").mkdir()
    (tmp_path / "crash").mkdir()
    ref = _config(tmp_path / "ref", corpus)
    assert main(["train", str(ref), *common]) == 0
    cfg = _config(tmp_path / "crash", corpus)
    env = {**os.environ, "TAID_VLM_TEST_KILL_AT_STEP": "3"}
    proc = subprocess.run([sys.executable, "-m", "taid_vlm.cli", "train", str(cfg), *common], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main(["train", str(cfg), "--resume", "auto", *common]) == 0
    a = load_file(str(tmp_path / "ref" / "out" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "crash" / "out" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(x) for x in (tmp_path / d / "out" / "logs" / "train.jsonl").read_text().splitlines()]
            for d in ("ref", "crash")]
    assert [r["loss"] for r in logs[0] if "loss" in r] == [r["loss"] for r in logs[1] if "loss" in r]
