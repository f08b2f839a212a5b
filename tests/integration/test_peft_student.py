"""LoRA / QLoRA students (``student.peft``) through ``taid-vlm train`` on tiny models: they distil
with TAID, resume bitwise, checkpoint only the adapter, and leave as a peft adapter (PeftModel /
AutoPeftModelForCausalLM) and as a merged plain transformers model, all with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from taid_vlm.cli import main
from taid_vlm.data.types import Sample

from .conftest import read_jsonl, write_config

TEXT = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
        "tie_word_embeddings": False}
TEACHER = {**TEXT, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1}
SENTENCES = ["The circle is red.", "There are 3 shapes.", "Where is the triangle?", "The triangle is on the left.",
             "A green triangle at the top right and a yellow circle at the bottom left.", "Is there a blue square?"]


def _vlm_config(tmp: Path, env: dict, peft: dict, **train) -> Path:
    path = write_config(tmp / "c.yaml", env, loss="taid", **train)
    cfg = yaml.safe_load(path.read_text())
    cfg["student"].update(train_vision=False, peft=peft)  # tower frozen, projector trained in full
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def text_env(tmp_path_factory, tiny_tokenizer):
    """Raw-text corpus, its tokenizer and a saved tiny text student (the base QLoRA loads in 4 bits)."""
    from taid_vlm.adapters import build_adapter

    root = tmp_path_factory.mktemp("peft_text")
    docs = [" ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 4)) for i in range(40)]
    (root / "train.txt").write_text("\n\n".join(docs))
    tiny_tokenizer.save_pretrained(root / "tok")
    torch.manual_seed(0)
    build_adapter("text", config=TEXT, tokenizer=str(root / "tok")).save(str(root / "base"))
    return root


def _text_config(tmp: Path, env: Path, peft: dict, student: dict | None = None, **train) -> Path:
    cfg = {
        "student": student or {"family": "text", "config": TEXT, "tokenizer": str(env / "tok")},
        "teacher": {"family": "text", "config": TEACHER, "tokenizer": str(env / "tok")},
        "data": {"train": str(env / "train.txt"), "format": "text", "max_length": 32, "cache_dir": str(tmp / "hf")},
        "loss": {"name": "taid"},
        "train": {"output_dir": str(tmp / "out"), "max_steps": 4, "batch_size": 4, "lr": 3e-3, "cpu": True,
                  "save_every": 2, "keep_last": 3, **train},
        "logging": {"report_to": [], "progress": False},
    }
    cfg["student"]["peft"] = peft
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _resumes_bitwise(cfg: Path, out: Path) -> None:
    """Re-run steps 3-4 from checkpoint-2: the adapter, the log and TAID's t come out identical."""
    first = load_file(str(out / "final" / "adapter_model.safetensors"))
    log = read_jsonl(out / "logs" / "train.jsonl")
    assert main(["train", str(cfg), "--resume", str(out / "checkpoints" / "checkpoint-2")]) == 0
    again = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    log2 = read_jsonl(out / "logs" / "train.jsonl")
    assert [(r["loss"], r["taid_t"]) for r in log2] == [(r["loss"], r["taid_t"]) for r in log]


def _checkpoint_is_adapter_only(out: Path, trainer, saved_parts: tuple[str, ...] = ()) -> dict:
    """checkpoint-2 holds exactly the optimizer's parameters (adapters + parts trained in full), a
    small share of the student, and no frozen base weight. Returns the checkpoint's tensors."""
    ckpt = load_file(str(out / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    assert all(".lora_" in k or any(f".{p}." in k for p in saved_parts) for k in ckpt), list(ckpt)[:5]
    trainable = sum(p.numel() for g in trainer.parts.optimizer.param_groups for p in g["params"])
    assert sum(v.numel() for v in ckpt.values()) == trainable
    assert trainable < 0.5 * sum(p.numel() for p in trainer.parts.student.model.parameters())
    return ckpt


def test_lora_text_student_with_adapted_head(tmp_path, text_env):
    # LoRA on the LM head too: the fused loss must train it through W + scale * B @ A.
    peft = {"r": 4, "target_modules": ["q_proj", "v_proj", "lm_head"], "merge": True}
    cfg = _text_config(tmp_path, text_env, peft)
    from taid_vlm.config_io import load_config
    from taid_vlm.train.loop import Trainer

    trainer = Trainer(load_config(str(cfg)))
    trainer.run()
    out = tmp_path / "out"
    log = read_jsonl(out / "logs" / "train.jsonl")
    assert log[0]["taid_t"] == pytest.approx(0.4) and log[-1]["taid_t"] > log[0]["taid_t"]
    adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
    head_b = [v for k, v in adapter.items() if "lm_head.lora_B" in k]
    assert head_b and float(head_b[0].abs().sum()) > 0  # B starts at 0: the head's adapter got gradients
    _checkpoint_is_adapter_only(out, trainer)

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 42, 9, 100, 3]])
    trained = trainer.parts.student.model.eval()  # merged in place by the final save
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(out / "final")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "final" / "merged")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(out / "final" / "base")).eval()
    with torch.no_grad():
        ref = trained(input_ids=ids).logits
        torch.testing.assert_close(peft_model(input_ids=ids).logits, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, ref, rtol=0, atol=1e-5)
        assert (base(input_ids=ids).logits - ref).abs().max() > 1e-3  # the adapter changed the student
    assert not any(".lora_" in k for k in load_file(str(out / "final" / "merged" / "model.safetensors")))
    _resumes_bitwise(cfg, out)


def _vlm_batch(adapter, env: dict):
    return adapter.collate([adapter.encode(_sample(env), 256)])


def test_lora_vlm_student_distils_resumes_and_exports(tmp_path, run_env):
    from peft import PeftModel

    from taid_vlm.adapters import build_adapter
    from taid_vlm.config_io import load_config
    from taid_vlm.train.loop import Trainer

    cfg = _vlm_config(tmp_path, run_env, {"r": 4, "merge": True}, max_steps=4, save_every=2, keep_last=3)
    trainer = Trainer(load_config(str(cfg)))
    trainer.run()
    out = tmp_path / "out"
    student = trainer.parts.student
    # Trainable: LoRA on every LM linear but the head, the projector in full; the tower frozen.
    ckpt = _checkpoint_is_adapter_only(out, trainer, saved_parts=("projector",))
    assert any("language_model" in k and ".lora_A" in k for k in ckpt) and any("projector" in k for k in ckpt)
    assert not any("vision_tower" in k or "lm_head" in k for k in ckpt)

    batch = _vlm_batch(student, run_env)
    with torch.no_grad():
        ref = student.response_hidden(batch).logits()  # the trained student (merged in place at the end)
        base = build_adapter("composed", path=str(out / "final" / "base"))
        base_logits = base.response_hidden(batch).logits()
        PeftModel.from_pretrained(base.model, str(out / "final"))  # injects the adapter into base.model
        torch.testing.assert_close(base.response_hidden(batch).logits(), ref, rtol=0, atol=1e-5)
        assert (base_logits - ref).abs().max() > 1e-4
        merged_path = out / "final" / "merged"
        assert json.loads((merged_path / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
        llava = build_adapter("auto", path=str(merged_path))  # plain transformers LLaVA, read as a teacher
        torch.testing.assert_close(llava.response_hidden(_vlm_batch(llava, run_env)).logits(), ref, rtol=0, atol=1e-5)
    _resumes_bitwise(cfg, out)


def _sample(env: dict) -> Sample:
    from taid_vlm.data.images import ImageRef

    image = next(Path(env["root"]).rglob("*.png"))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "The circle is red."}]}]
    return Sample(id="s0", messages=msgs, images=[ImageRef(str(image))])


def test_qlora_text_student_trains_on_a_4bit_base(tmp_path, text_env):
    pytest.importorskip("bitsandbytes")
    from taid_vlm.config_io import load_config
    from taid_vlm.train.loop import Trainer

    student = {"family": "text", "path": str(text_env / "base")}
    cfg = _text_config(tmp_path, text_env, {"r": 4, "load_in_4bit": True}, student=student, max_steps=2, save_every=0)
    trainer = Trainer(load_config(str(cfg)))
    trainer.run()
    layer = trainer.parts.student.model.model.layers[0].self_attn.q_proj
    assert type(layer.get_base_layer()).__name__ == "Linear4bit"
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    assert len(log) == 2 and all(r["loss"] == r["loss"] for r in log)
    adapter_cfg = json.loads((tmp_path / "out" / "final" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str((text_env / "base").resolve())
    assert not (tmp_path / "out" / "final" / "base").exists()


def _curve(out: Path) -> list[tuple[float, float]]:
    return [(r["loss"], r["taid_t"]) for r in read_jsonl(out / "logs" / "train.jsonl")]


def test_lora_student_with_grad_accum_sampling_and_cache(tmp_path, run_env):
    """Gradient accumulation splits the same step (2 x 2 = 4 samples: the same curve); GKD sampling
    generates with the adapted student; a teacher top-k cache drives the adapters."""
    peft = {"r": 4}
    runs = {"whole": {"batch_size": 4}, "accum": {"batch_size": 2, "grad_accum": 2}}
    for name, train in runs.items():
        (tmp_path / name).mkdir()
        assert main(["train", str(_vlm_config(tmp_path / name, run_env, peft, max_steps=2, **train))]) == 0
    a, b = _curve(tmp_path / "whole" / "out"), _curve(tmp_path / "accum" / "out")
    assert [x[1] for x in a] == [x[1] for x in b]
    assert [x[0] for x in b] == pytest.approx([x[0] for x in a], rel=1e-5)

    (tmp_path / "gkd").mkdir()
    cfg = _vlm_config(tmp_path / "gkd", run_env, peft, max_steps=2)
    assert main(["train", str(cfg), "sampling.mode=mixed", "sampling.lam=1.0", "sampling.max_new_tokens=4"]) == 0
    log = read_jsonl(tmp_path / "gkd" / "out" / "logs" / "train.jsonl")
    assert [r["sampled_batches"] for r in log] == [1.0, 2.0]  # every micro-batch: the adapted student's text

    (tmp_path / "cached").mkdir()
    cfg = _vlm_config(tmp_path / "cached", run_env, peft, max_steps=2)
    assert main(["cache-teacher", str(cfg), "--output", str(tmp_path / "cache"), "--top-k", "8"]) == 0
    assert main(["train", str(cfg), f"teacher.cache={tmp_path / 'cache'}"]) == 0
    lora_b = [v for k, v in load_file(str(tmp_path / "cached" / "out" / "final" / "adapter_model.safetensors")).items()
              if ".lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at 0: the cached teacher trained it


@pytest.mark.slow
def test_lora_two_processes_match_one(tmp_path, run_env):
    import os
    import shutil
    import subprocess
    import sys

    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    peft = {"r": 4}
    (tmp_path / "single").mkdir()
    assert main(["train", str(_vlm_config(tmp_path / "single", run_env, peft, max_steps=3, batch_size=4))]) == 0
    (tmp_path / "ddp").mkdir()
    ddp = _vlm_config(tmp_path / "ddp", run_env, peft, max_steps=3, batch_size=2)
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533",
                           "-m", "taid_vlm.cli", "train", str(ddp)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = read_jsonl(tmp_path / "single" / "out" / "logs" / "train.jsonl")
    b = read_jsonl(tmp_path / "ddp" / "out" / "logs" / "train.jsonl")
    assert all(r["loss_state_spread"] == 0.0 for r in b)
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    assert (tmp_path / "ddp" / "out" / "final" / "adapter_model.safetensors").is_file()
