"""FSDP2 on the CPU (gloo, 2 processes, torch's fully_shard as accelerate applies it on GPUs): the
student sharded by its ``_no_split_modules`` gets the same gradients from the fused loss as the
unsharded student, the LM head included (read whole inside the root forward); a teacher sharded by
``teacher.placement: sharded`` gives the same rows and is resharded after its forward."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .conftest import STUDENT


def _worker(rank: int, world: int, port: int, env: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.fsdp import fully_shard

    from taid_vlm.adapters import build_adapter
    from taid_vlm.data.collate import PairCollator
    from taid_vlm.data.readers import DataReport, load_samples
    from taid_vlm.losses import get_loss
    from taid_vlm.train.step import StudentForward, compute_losses, teacher_response

    torch.manual_seed(0)
    student = build_adapter("composed", config=STUDENT, tokenizer=env["tokenizer"])
    teacher = build_adapter("composed", path=env["teacher"])
    teacher.model.eval().requires_grad_(False)
    samples = load_samples(env["train"], report=DataReport())[:4]
    batch = PairCollator(student, teacher, max_length=128, report=DataReport())(samples)  # same batch on each rank
    loss_fn = get_loss("taid")
    rows = teacher_response(teacher, batch["teacher"])

    def step(module: torch.nn.Module) -> float:
        out = compute_losses(module(batch["student"]), rows, loss_fn, fused=True, chunk_size=16)
        out["loss"].backward()
        return float(out["loss"].detach())

    module = StudentForward(student)
    ref_loss = step(module)
    ref = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)

    classes = set(module._no_split_modules)
    blocks = [m for m in module.modules() if type(m).__name__ in classes]
    for block in blocks:
        fully_shard(block)
    fully_shard(module)  # the root, as accelerate prepares StudentForward
    loss = step(module)
    worst = 0.0
    for n, p in module.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        worst = max(worst, float((g - ref[n]).abs().max() / (ref[n].abs().max() + 1e-12)))
    head = student.model.get_output_embeddings().weight
    result = {"blocks": len(blocks), "sharded_head": type(head).__name__, "loss": loss, "ref_loss": ref_loss,
              "worst_rel_grad_diff": worst, "n_grads": len(ref)}

    # teacher.placement sharded: blocks sharded by shard_teacher, each resharded after its forward.
    from types import SimpleNamespace

    from taid_vlm.train.placement import shard_teacher

    shard_teacher(teacher.model, SimpleNamespace(device=torch.device("cpu"), distributed_type="FSDP"))
    sharded_rows = teacher_response(teacher, batch["teacher"])
    result["teacher_hidden_diff"] = float((sharded_rows.hidden - rows.hidden).abs().max())
    result["teacher_weight_equal"] = bool(torch.equal(sharded_rows.weight, rows.weight))
    from torch.distributed.fsdp import FSDPModule

    blocks_t = [m for m in teacher.model.modules() if isinstance(m, FSDPModule)]
    # after the forward every block holds only its shard again (a DTensor of half the rows)
    result["teacher_resharded"] = all(type(p).__name__ == "DTensor" for b in blocks_t for p in b.parameters())
    result["teacher_blocks"] = len(blocks_t)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_sharded_student_gets_the_unsharded_gradients(run_env, tmp_path):
    mp.spawn(_worker, args=(2, 29561, run_env, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["blocks"] >= 2  # decoder layer(s) and vision block(s) wrapped, not only the root
        assert r["sharded_head"] == "DTensor"  # outside the forward the head is a shard
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-6)
        assert r["worst_rel_grad_diff"] < 1e-5, r
        assert r["teacher_blocks"] >= 2 and r["teacher_resharded"]
        assert r["teacher_hidden_diff"] < 1e-5 and r["teacher_weight_equal"]
