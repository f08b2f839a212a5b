"""TAID inside TRL's DistillationTrainer (on-policy): the loss is the package's on exactly the
completion tokens, and loss and t per step equal a plain replay of the same micro-batches, which
``test_integrations.py`` ties to ``taid-vlm train``."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")

from taid_vlm.integrations import LossStepper, as_adapter, distill_losses  # noqa: E402
from taid_vlm.losses import get_loss, taid_loss  # noqa: E402
from tests.integration.integrations_env import TAID, TEACHER  # noqa: E402

STEPS, BATCH, ACCUM, LR = 3, 2, 2, 1e-3
PROMPTS = ["What colour is the circle?", "How many shapes are there?", "Where is the triangle?",
           "Is there a blue square?"]


def _models(tok):
    from taid_vlm.adapters import build_adapter
    from taid_vlm.models.tiny import tiny_text_config

    torch.manual_seed(0)
    return (build_adapter("text", config=tiny_text_config(), tokenizer=tok).model,
            build_adapter("text", config=TEACHER, tokenizer=tok).model)


def _optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory, tiny_tokenizer):
    """A 3-step TRL run (2 micro-batches per step) that records the micro-batches it trained on."""
    from datasets import Dataset
    from trl import DistillationConfig

    from taid_vlm.integrations.trl import TRLDistillTrainer

    class Recording(TRLDistillTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            if model.training:
                self.seen.append({key: v.clone() for key, v in inputs.items() if torch.is_tensor(v)})
            return super().compute_loss(model, inputs, *a, **k)

    root = tmp_path_factory.mktemp("trl")
    tiny_tokenizer.save_pretrained(root / "tok")
    student, teacher = _models(str(root / "tok"))
    start = copy.deepcopy(student)
    args = DistillationConfig(
        output_dir=str(root / "out"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUM,
        max_steps=STEPS, max_completion_length=6, logging_steps=1, report_to=[], use_cpu=True,
        save_strategy="no", disable_tqdm=True, max_grad_norm=1.0, bf16=False)  # fp32: exact comparisons
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in PROMPTS * 4])
    trainer = Recording(student, teacher, args=args, train_dataset=data, processing_class=tiny_tokenizer,
                        loss_options=TAID, optimizers=_optimizer(student))
    trainer.seen = []
    trainer.train()
    return {"trainer": trainer, "start": start, "teacher": teacher, "tok": tiny_tokenizer}


def test_completion_batch_labels_exactly_the_trained_completion_tokens(trl_run):
    from taid_vlm.integrations.trl import completion_batch

    inputs = trl_run["trainer"].seen[0]
    b = completion_batch(inputs)
    width = inputs["prompt_ids"].shape[1]
    assert (b["labels"][:, :width] == -100).all()
    keep = inputs["completion_mask"].bool()
    assert torch.equal(b["labels"][:, width:][keep], inputs["completion_ids"][keep])
    assert (b["labels"][:, width:][~keep] == -100).all() and int(keep.sum()) > 0


def test_first_micro_batch_loss_is_taid_on_the_completion_logits(trl_run):
    """Independent of the package's step code: HF logits at the completion positions, taid_loss at t_start."""
    from taid_vlm.integrations.trl import completion_batch

    b = completion_batch(trl_run["trainer"].seen[0])
    with torch.no_grad():
        s = trl_run["start"](input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        t = trl_run["teacher"](input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    mask = b["labels"][:, 1:] != -100
    vocab = len(trl_run["tok"])
    ref = taid_loss(s[..., :vocab], t[..., :vocab], TAID["t_start"], mask=mask)
    loss_fn = get_loss("taid", **TAID)
    out = distill_losses(as_adapter(trl_run["start"], trl_run["tok"]), as_adapter(trl_run["teacher"], trl_run["tok"]),
                         b, loss_fn)
    assert float(out["loss"].detach() / out["num_tokens"]) == pytest.approx(float(ref), rel=1e-5)
    assert float(ref) > 5e-4


def test_trl_steps_match_a_plain_replay_of_its_micro_batches(trl_run):
    from taid_vlm.integrations.trl import completion_batch

    trainer, seen = trl_run["trainer"], trl_run["trainer"].seen
    assert len(seen) == STEPS * ACCUM
    student, teacher = as_adapter(trl_run["start"], trl_run["tok"]), as_adapter(trl_run["teacher"], trl_run["tok"])
    loss_fn = get_loss("taid", **TAID)
    opt, sched = _optimizer(trl_run["start"])
    stepper, logs = LossStepper(loss_fn, STEPS), []
    for step in range(STEPS):
        micro = seen[step * ACCUM:(step + 1) * ACCUM]
        stepper.begin(step)
        n = sum(float(m["completion_mask"].sum()) for m in micro)
        for m in micro:
            out = distill_losses(student, teacher, completion_batch(m), loss_fn)
            (out["loss"] / n).backward()
            stepper.accumulate(out)
        torch.nn.utils.clip_grad_norm_(trl_run["start"].parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
        logs.append(stepper.end(step))
    hist = trainer.loss_callback.history
    assert len({round(r["taid_t"], 9) for r in hist}) == STEPS
    for got, ref in zip(hist, logs):
        for key in ("loss", "taid_t", "taid_signal", "tokens"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5), (key, got, ref)
    logged = [r for r in trainer.state.log_history if "taid_t" in r]
    assert [r["taid_t"] for r in logged] == pytest.approx([r["taid_t"] for r in logs])
