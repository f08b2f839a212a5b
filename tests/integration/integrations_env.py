"""A tiny text distillation run shared by the integration tests of ``taid_vlm.integrations``: the
recipe, the package trainer's own log of it, and the same run's parts and micro-batches (same seed,
same data order) for a foreign loop to replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

TEACHER = {"model_type": "qwen2", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
           "tie_word_embeddings": True}
QA = [("What colour is the circle?", "The circle is red."), ("How many shapes are there?", "There are 3 shapes."),
      ("Where is the triangle?", "The triangle is on the left."), ("Is there a blue square?", "No."),
      ("Describe the image.", "A green triangle at the top right and a yellow circle at the bottom left.")]
STEPS, BATCH, ACCUM = 4, 2, 2
# The adaptive branch (which reads the signal) must set t, not t_lin alone: a large alpha, a short
# momentum, and the KL as the signal (it changes by ~10% a step between random tiny models; the
# cross-entropy by ~1e-4).
TAID = {"t_start": 0.3, "alpha": 0.5, "beta": 0.5, "signal": "kl"}


def t_linear(step: int) -> float:
    """TAID's linear floor after 0-based optimizer step ``step`` of ``STEPS``."""
    return TAID["t_start"] + (1.0 - TAID["t_start"]) * step / STEPS


def make_env(root: Path, tokenizer: Any) -> dict[str, str]:
    """Chat records, the tokenizer and a saved random-weight text teacher under ``root``."""
    from taid_vlm.adapters import build_adapter

    tokenizer.save_pretrained(root / "tok")
    build_adapter("text", config=TEACHER, tokenizer=str(root / "tok")).save(str(root / "teacher"))
    rows = [{"id": f"s{i}", "messages": [{"role": "user", "content": QA[i % 5][0]},
                                         {"role": "assistant", "content": QA[(i * 3) % 5][1]}]} for i in range(16)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {"tok": str(root / "tok"), "teacher": str(root / "teacher"), "data": str(root / "train.jsonl")}


def write_recipe(path: Path, env: dict[str, str], loss: str = "taid", **loss_options: Any) -> Path:
    from taid_vlm.models.tiny import tiny_text_config

    cfg = {
        "student": {"family": "text", "config": tiny_text_config(), "tokenizer": env["tok"]},
        "teacher": {"family": "text", "path": env["teacher"]},
        "data": {"train": env["data"], "val": env["data"], "max_length": 64},
        "loss": {"name": loss, **({loss: loss_options} if loss_options else {})},
        "train": {"output_dir": str(path.parent / "pkg"), "max_steps": STEPS, "batch_size": BATCH,
                  "grad_accum": ACCUM, "lr": 3e-3, "warmup_steps": 1, "max_grad_norm": 1.0, "cpu": True,
                  "seed": 0, "save_every": 0},
        "eval": {"every": 0, "max_batches": 0},
        "logging": {"report_to": [], "progress": False, "every": 1},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def package_log(recipe: Path) -> list[dict]:
    """Run ``taid-vlm train`` on the recipe; its per-step log records."""
    from taid_vlm.cli import main

    assert main(["train", str(recipe)]) == 0
    out = yaml.safe_load(recipe.read_text())["train"]["output_dir"]
    rows = [json.loads(x) for x in (Path(out) / "logs" / "train.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "taid_t" in r or ("loss" in r and "step" in r and "val_loss" not in r)]


def same_run(recipe: Path, output_dir: Path) -> tuple[Any, list[dict]]:
    """The run's parts built again (same seed: same initial student, teacher, loss) and its micro-batches
    in the order ``taid-vlm train`` consumes them."""
    from taid_vlm.config_io import load_config
    from taid_vlm.train.data_order import micro_batch_loader
    from taid_vlm.train.setup import build_run

    cfg = load_config(recipe, [f"train.output_dir={output_dir}"])
    parts = build_run(cfg)
    loader = micro_batch_loader(parts.plan, parts.samples, 0, parts.total_steps * ACCUM, parts.collate, 0)
    return parts, list(loader)


def fresh_optimizer(parts: Any, recipe: Path) -> tuple[Any, Any]:
    """The optimizer and LR schedule ``taid-vlm train`` builds, over the given parts' raw parameters."""
    from taid_vlm.config_io import load_config
    from taid_vlm.train.optim import build_optimizer, param_groups

    cfg = load_config(recipe)
    return build_optimizer(param_groups(parts.student.parts(), cfg.train, extra=parts.loss_fn), cfg.train,
                           parts.total_steps)
