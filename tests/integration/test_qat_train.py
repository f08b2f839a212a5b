"""Quantization-aware distillation through ``taid-vlm train``: a composed student distilled with TAID
while fake-quantized (torchao QAT), resumed bitwise after a crash, saved as the real quantized model
that transformers loads back and generates with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.cli import main

from .conftest import read_jsonl, write_config

QAT = ["student.quantization.scheme=int8_dynamic_int4_weight", "student.quantization.group_size=16",
       "student.quantization.targets=[lm, projector]"]
COMMON = dict(max_steps=4, save_every=2, keep_last=3)


def _train(folder, env, *extra) -> None:
    folder.mkdir()
    cfg = write_config(folder / "c.yaml", env, **COMMON)
    assert main(["train", str(cfg), *QAT, *extra]) == 0


def _generates(model, folder) -> None:
    """Greedy decoding of 5 tokens from a text prompt with ``folder``'s own processor."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(str(folder))
    ids = proc.tokenizer("a red square", return_tensors="pt").input_ids
    out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5 or proc.tokenizer.eos_token_id in out[0, ids.shape[1]:]


def test_qat_taid_run_resumes_bitwise_and_saves_a_quantized_student(tmp_path, run_env):
    _train(tmp_path / "ref", run_env)
    ref = tmp_path / "ref" / "out"
    crash = tmp_path / "crash"
    crash.mkdir()
    cfg = write_config(crash / "c.yaml", run_env, **COMMON)
    # The same thread count as this process: torchao's fake-quant reductions split across threads,
    # so another count changes the float sums (bitwise resume holds per machine setting).
    env = {**os.environ, "TAID_VLM_TEST_KILL_AT_STEP": "3", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-m", "taid_vlm.cli", "train", str(cfg), *QAT], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main(["train", str(cfg), "--resume", "auto", *QAT]) == 0
    a = load_file(str(ref / "final" / "model.safetensors"))
    b = load_file(str(crash / "out" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = read_jsonl(ref / "logs" / "train.jsonl"), read_jsonl(crash / "out" / "logs" / "train.jsonl")
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r["taid_t"] for r in log_a] == [r["taid_t"] for r in log_b]

    # The saved student is the real quantized model: transformers loads it (no taid_vlm code path
    # involved in the load) with torchao int4 weights in the LM and projector, the head in float.
    from torchao.quantization import IntxUnpackedToInt8Tensor
    from transformers import AutoModelForImageTextToText

    final = ref / "final"
    report = json.loads((final / "quantization.json").read_text())
    assert report["scheme"] == "int8_dynamic_int4_weight" and report["quantized_linears"] > 0
    assert report["quantized_weight_bytes"] < report["float_weight_bytes"]
    model = AutoModelForImageTextToText.from_pretrained(str(final))
    assert json.loads((final / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    w = model.model.language_model.layers[0].mlp.down_proj.weight
    assert isinstance(w, IntxUnpackedToInt8Tensor)
    assert w.qdata.dtype == torch.int8 and int(w.qdata.min()) >= -8 and int(w.qdata.max()) <= 7  # int4 range
    assert isinstance(model.model.multi_modal_projector.linear_1.weight, IntxUnpackedToInt8Tensor)
    assert not isinstance(model.lm_head.weight, IntxUnpackedToInt8Tensor)
    assert not isinstance(model.model.vision_tower.encoder.layers[0].mlp.fc1.weight,
                          IntxUnpackedToInt8Tensor)
    _generates(model, final)


@pytest.mark.parametrize(("extra", "message"), [
    (["student.quantization.scheme=int3"], "student.quantization.scheme"),
    (["student.quantization.group_size=0"], "student.quantization.group_size"),
    (["student.quantization.group_size=24"], "student.quantization.group_size: 24 does not divide"),
    (["student.quantization.targets=[vision]"], "student.quantization.targets"),
    # adapters it cannot ship quantized: an unmerged LoRA, a QLoRA (bitsandbytes) base
    (["student.peft.r=4", "student.peft.merge=false"], "must be merged"),
    (["student.peft.r=4", "student.peft.merge=true", "student.peft.load_in_4bit=true"], "QLoRA's base"),
])
def test_bad_quantization_settings_name_the_field(tmp_path, run_env, capsys, extra, message):
    cfg = write_config(tmp_path / "c.yaml", run_env)
    assert main(["train", str(cfg), *QAT, *extra]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_qat_with_a_merged_lora_student_through_the_cli(tmp_path, run_env):
    """LoRA on the fake-quantized base: ``final/`` is the adapter, ``final/merged`` the merged student
    converted to the real quantized model, which transformers loads and generates with."""
    from torchao.quantization import IntxUnpackedToInt8Tensor
    from transformers import AutoModelForImageTextToText

    _train(tmp_path / "lora", run_env, "student.peft.r=4", "student.peft.merge=true", "student.train_vision=false")
    final = tmp_path / "lora" / "out" / "final"
    assert (final / "adapter_config.json").is_file()
    merged = final / "merged"
    report = json.loads((merged / "quantization.json").read_text())
    assert report["quantized_linears"] > 0 and report["quantized_weight_bytes"] < report["float_weight_bytes"]
    model = AutoModelForImageTextToText.from_pretrained(str(merged))
    layer = model.model.language_model.layers[0]
    assert isinstance(layer.mlp.down_proj.weight, IntxUnpackedToInt8Tensor)
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged, nothing of peft left
    _generates(model, merged)
