"""``taid-vlm eval`` / ``compare`` through the CLI on a saved tiny composed VLM (random weights)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from taid_vlm.cli import main


@pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java")
def test_eval_vqa_caption_text_then_compare(run_env, tmp_path, capsys):
    model, out = run_env["teacher"], tmp_path
    common = ["--model", model, "--limit", "3", "--batch-size", "2"]
    assert main(["eval", *common, "--task", "vqa", "--data", run_env["val_vqa"], "--max-new-tokens", "3",
                 "--output", str(out / "vqa.json")]) == 0
    assert main(["eval", *common, "--task", "caption", "--data", run_env["val_caption"], "--max-new-tokens", "6",
                 "--output", str(out / "cap.json")]) == 0
    assert main(["eval", *common, "--task", "text", "--data", run_env["val"], "--output", str(out / "txt.json")]) == 0
    vqa = json.loads((out / "vqa.json").read_text())
    # A saved hf-tower + mlp student is a native transformers LLaVA model: eval picks the llava family.
    assert vqa["family"] == "llava" and vqa["num_samples"] == 3
    assert 0.0 <= vqa["scores"]["vqa_accuracy"] <= 100.0
    assert [set(p) for p in vqa["predictions"]] == [{"id", "question", "prompt", "prediction", "references", "scores"}] * 3
    # Every reported number can be recomputed from the saved predictions.
    mean = sum(p["scores"]["vqa_accuracy"] for p in vqa["predictions"]) / 3
    assert vqa["scores"]["vqa_accuracy"] == pytest.approx(mean)
    cap = json.loads((out / "cap.json").read_text())
    assert set(cap["scores"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    txt = json.loads((out / "txt.json").read_text())
    # A random-weight model: perplexity finite and above 1; its log is the saved token-mean NLL.
    ppl = txt["scores"]["perplexity"]
    assert 1.0 < ppl < 1e6 and math.log(ppl) == pytest.approx(txt["scores"]["nll"])
    assert txt["scores"]["num_tokens"] == sum(p["num_tokens"] for p in txt["predictions"])
    capsys.readouterr()
    assert main(["compare", str(out / "vqa.json"), str(out / "cap.json"), "--names", "vqa", "cap",
                 "--output", str(out / "cmp")]) == 0
    assert "| vqa |" in (out / "cmp" / "compare.md").read_text()
    assert (out / "cmp" / "compare.png").stat().st_size > 1000


def test_eval_text_model_refuses_image_task(run_env, tmp_path, tiny_tokenizer, capsys):
    from taid_vlm.adapters import build_adapter

    cfg = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1}
    build_adapter("text", config=cfg, tokenizer=tiny_tokenizer).save(str(tmp_path / "lm"))
    rc = main(["eval", "--model", str(tmp_path / "lm"), "--task", "vqa", "--data", run_env["val_vqa"]])
    assert rc == 2 and "cannot take images" in capsys.readouterr().err
