"""LossStepper: the once-per-optimizer-step protocol of a loss for foreign loops."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.integrations import LossStepper, as_adapter, resolve_loss
from taid_vlm.losses import TAIDSchedule, get_loss


def _out(loss_sum: float, ce_sum: float, n: int) -> dict[str, torch.Tensor]:
    f = torch.tensor
    return {"loss": f(loss_sum), "distil_loss": f(loss_sum), "lm_loss": f(0.0), "taid_kl": f(loss_sum),
            "taid_ce": f(ce_sum), "num_tokens": f(float(n))}


def test_signal_is_the_token_mean_over_micro_batches_and_ranks():
    loss_fn = get_loss("taid", alpha=0.5, beta=0.5)
    ref = TAIDSchedule(alpha=0.5, beta=0.5)
    world = 2  # a reduce that sums two ranks holding the same sums
    stepper = LossStepper(loss_fn, total_steps=10, reduce=lambda x: x * world)
    for step, (a, b) in enumerate([((3.0, 9.0, 3), (1.0, 2.0, 1)), ((1.0, 4.0, 2), (2.0, 2.0, 2))]):
        stepper.begin(step)
        stepper.accumulate(_out(*a))
        stepper.accumulate(_out(*b))
        logs = stepper.end(step)
        signal = (a[1] + b[1]) / (a[2] + b[2])  # not the mean of the two micro-batch means
        ref.update(signal, step, 10)
        assert logs["taid_signal"] == pytest.approx(signal)
        assert logs["taid_t"] == pytest.approx(ref.t)
        assert logs["tokens"] == world * (a[2] + b[2])
        assert logs["loss"] == pytest.approx((a[0] + b[0]) / (a[2] + b[2]))
    assert loss_fn.schedule.num_updates == 2


def test_non_finite_step_leaves_t_and_end_needs_a_micro_batch():
    loss_fn = get_loss("taid")
    stepper = LossStepper(loss_fn, total_steps=4)
    stepper.begin(0)
    with pytest.raises(RuntimeError, match="no micro-batch"):
        stepper.end(0)
    stepper.accumulate(_out(float("nan"), 1.0, 2))
    logs = stepper.end(0)
    assert loss_fn.schedule.num_updates == 0 and logs["taid_t"] == 0.4


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="total_steps"):
        LossStepper(get_loss("fkl"), total_steps=0)
    with pytest.raises(ValueError, match="tokenizer"):
        as_adapter(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="loss options"):
        resolve_loss(get_loss("taid"), t_start=0.2)
    with pytest.raises(ValueError, match="valid names"):
        resolve_loss("taidd")


def test_distill_trainer_needs_a_teacher_for_a_teacher_loss(tmp_path, tiny_tokenizer):
    from transformers import TrainingArguments

    from taid_vlm.adapters import build_adapter
    from taid_vlm.integrations import DistillTrainer
    from taid_vlm.models.tiny import tiny_text_config

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    student = build_adapter("text", config=tiny_text_config(), tokenizer=str(tmp_path / "tok"))
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="teacher_model"):
        DistillTrainer(student.model, None, loss="taid", args=args, processing_class=tiny_tokenizer)
