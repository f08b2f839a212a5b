"""One rank of a two-process ``DistillTrainer`` run (launched by test_integrations.py under
``accelerate launch``): each rank trains on every other micro-batch of the package's order, one
micro-batch per optimizer step, and writes the loss's per-step history."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from taid_vlm.config_io import load_config
    from taid_vlm.integrations import DistillTrainer
    from taid_vlm.train.optim import build_optimizer, param_groups

    root, recipe = map(Path, argv if argv is not None else sys.argv[1:])
    cfg = load_config(recipe)
    tok = AutoTokenizer.from_pretrained(root / "tok")
    student = AutoModelForCausalLM.from_pretrained(root / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher", dtype=torch.float32)
    batches = torch.load(root / "batches.pt", weights_only=True)
    steps = len(batches) // 2
    opt, sched = build_optimizer(param_groups({"lm": student}, cfg.train), cfg.train, steps)
    args = TrainingArguments(output_dir=str(root / "hf_ddp"), per_device_train_batch_size=1, max_steps=steps,
                             gradient_accumulation_steps=1, max_grad_norm=cfg.train.max_grad_norm, report_to=[],
                             use_cpu=True, train_sampling_strategy="sequential", remove_unused_columns=False,
                             save_strategy="no", disable_tqdm=True, ddp_backend="gloo")
    trainer = DistillTrainer(student, teacher, loss=cfg.loss.name, loss_options=cfg.loss.loss_options(),
                             processing_class=tok, args=args, train_dataset=batches,
                             data_collator=lambda xs: xs[0], optimizers=(opt, sched))
    trainer.train()
    rank = trainer.accelerator.process_index
    (root / f"history_{rank}.json").write_text(json.dumps(trainer.loss_callback.history))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
