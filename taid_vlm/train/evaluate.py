"""The trainer's periodic evaluation: validation loss, and generation metrics when configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from accelerate.utils import send_to_device

from taid_vlm.train.step import compute_losses, stack_sums, teacher_side

if TYPE_CHECKING:
    from taid_vlm.train.loop import Trainer


def validation_loss(trainer: Trainer) -> dict[str, float]:
    """Token-weighted validation losses over ``data.val`` (sharded over ranks, then reduced)."""
    p, acc, cfg = trainer.parts, trainer.acc, trainer.cfg
    if not p.val_samples:
        return {}
    bs, world, rank = cfg.train.batch_size, acc.num_processes, acc.process_index
    batches = [p.val_samples[i : i + bs] for i in range(0, len(p.val_samples), bs)]
    if cfg.eval.max_batches:
        batches = batches[: cfg.eval.max_batches]
    keys = ("loss", "distil_loss", "lm_loss")
    sums = torch.zeros(len(keys) + 1, device=acc.device)  # the named losses, then the token count
    # The unwrapped module: DDP's forward is a collective (buffer broadcast), and ranks may hold
    # different numbers of validation batches.
    student = acc.unwrap_model(p.student_module)
    with torch.no_grad(), acc.autocast():
        for b in batches[rank::world]:
            batch = p.collate(b)
            if batch is None or batch.get("student") is None:
                continue
            batch = send_to_device(batch, acc.device)
            s = student(batch["student"])
            if p.cache is not None and not all(i in p.cache for i in batch["ids"]):
                # Validation data outside the teacher cache: only the LM loss can be measured.
                lm = torch.nn.functional.cross_entropy(s.logits().float(), s.targets, reduction="sum")
                out = {"loss": lm, "distil_loss": torch.full_like(lm, float("nan")), "lm_loss": lm}
            else:
                teacher_rows, teacher_logits = teacher_side(p, s, batch)
                out = compute_losses(s, teacher_rows, p.loss_fn, distil_ratio=cfg.loss.distil_ratio, fused=False,
                                     teacher_logits=teacher_logits, alignment=batch.get("alignment"))
            tokens = torch.tensor([float(batch["num_tokens"])], device=acc.device)
            sums += torch.cat([stack_sums(out, keys, acc.device), tokens])
    sums = acc.reduce(sums, reduction="sum")
    n = max(float(sums[-1]), 1.0)
    return {f"val_{k}": float(v) / n for k, v in zip(keys, sums[:-1])}


def generation_metrics(trainer: Trainer) -> dict[str, float]:
    """VQA/caption scores on the main process (others wait), as ``eval_<task>_<metric>``."""
    cfg, acc = trainer.cfg, trainer.acc
    results: dict[str, float] = {}
    if acc.is_main_process and (cfg.eval.vqa or cfg.eval.caption):
        from taid_vlm.evaluation import evaluate_file

        for task, path in (("vqa", cfg.eval.vqa), ("caption", cfg.eval.caption)):
            if path:
                scores = evaluate_file(trainer.parts.student, path, task=task, limit=cfg.eval.max_samples,
                                       max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.train.batch_size)
                results.update({f"eval_{task}_{k}": float(v) for k, v in scores.items()})
    acc.wait_for_everyone()
    return results


def run_eval_hook(trainer: Trainer) -> dict[str, float]:
    """Both evaluations with the student in eval mode; the training RNG stream is left untouched."""
    module = trainer.parts.student_module
    rng = torch.get_rng_state()
    module.eval()
    try:
        out = {**validation_loss(trainer), **generation_metrics(trainer)}
        sampler = trainer.parts.sampler
        if sampler is not None and sampler.cfg.mode == "adaptive" and "val_loss" in out:
            out["sampling_p_use"] = sampler.on_validation(out["val_loss"])
    finally:
        module.train()
        torch.set_rng_state(rng)
    return out
