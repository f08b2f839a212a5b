"""Everything a run needs, built in the order that fails fastest: config and paths, tokenizers,
then weights, then data, then the optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from taid_vlm.adapters import Adapter, build_adapter
from taid_vlm.config import Config, ConfigError
from taid_vlm.config_io import config_to_dict
from taid_vlm.data.collate import PairCollator
from taid_vlm.data.report import DataReport
from taid_vlm.data.types import Sample
from taid_vlm.losses import DistillLoss, get_loss
from taid_vlm.train.checkpoint import list_checkpoints, resolve_resume
from taid_vlm.train.data_order import MicroBatchPlan
from taid_vlm.train.optim import apply_trainability, build_optimizer, param_groups
from taid_vlm.train.step import StudentForward

if TYPE_CHECKING:  # imported where used: the cache and the sampler are optional parts of a run
    from taid_vlm.cache import TeacherCache
    from taid_vlm.train.sampling import StudentSampler

RUN_MARKER = "run_config.yaml"


@dataclass
class RunParts:
    """What ``build_run`` hands the loop; the loss is one object (its schedule lives inside it)."""

    accelerator: Accelerator
    student: Adapter
    student_module: nn.Module  # StudentForward, as accelerate prepared it (DDP-wrapped when distributed)
    teacher: Adapter | None
    loss_fn: DistillLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable_params: list[nn.Parameter]
    samples: list[Sample]
    val_samples: list[Sample]
    plan: MicroBatchPlan
    collate: PairCollator
    report: DataReport
    total_steps: int
    resume_from: Path | None
    cache: TeacherCache | None = None
    sampler: StudentSampler | None = None


def check_paths(cfg: Config) -> None:
    """Fail in seconds on missing files, before any weights are loaded."""
    for name, value in (("data.train", cfg.data.train), ("data.val", cfg.data.val),
                        ("data.image_root", cfg.data.image_root), ("eval.vqa", cfg.eval.vqa),
                        ("eval.caption", cfg.eval.caption), ("student.path", cfg.student.path),
                        ("teacher.cache", cfg.teacher.cache)):
        if value and not Path(value).exists():
            raise ConfigError(f"{name}: {value!r} does not exist")
    if cfg.loss.needs_teacher and not cfg.teacher.cache and cfg.teacher.path and not Path(cfg.teacher.path).exists():
        raise ConfigError(f"teacher.path: {cfg.teacher.path!r} does not exist")
    if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 autocast needs a GPU; use bf16 or no on the CPU")


def claim_output_dir(cfg: Config, resume: str | None, is_main: bool, barrier: Any = None) -> Path | None:
    """Refuse to write into another run's folder; returns the checkpoint to resume from.

    Every rank decides before any rank writes the run marker, so all ranks see the same folder.
    """
    out = Path(cfg.train.output_dir)
    resume_from = resolve_resume(out, resume)
    marker = out / RUN_MARKER
    busy = out.is_dir() and any(out.iterdir())
    if busy and resume_from is None and not cfg.train.overwrite:
        what = f"another run ({len(list_checkpoints(out))} checkpoints)" if marker.exists() else "other files"
        raise ConfigError(
            f"train.output_dir: {str(out)!r} already holds {what}; pass --resume auto to continue it, "
            "choose another folder, or set train.overwrite=true"
        )
    if barrier:
        barrier()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return resume_from


def _build_adapters(cfg: Config, device: torch.device) -> tuple[Adapter, Adapter | None]:
    student = build_adapter(**cfg.student.adapter_kwargs())
    teacher = None
    if cfg.loss.needs_teacher and not cfg.teacher.cache:
        teacher_kwargs = cfg.teacher.adapter_kwargs()
        if teacher_kwargs["tokenizer"] is None and teacher_kwargs["path"] is None:
            # A teacher built from a config shares the student's tokenizer (required anyway).
            teacher_kwargs["tokenizer"] = student.tokenizer
        teacher = build_adapter(**teacher_kwargs)
        if cfg.teacher.tokenizer_alignment == "shared":
            from taid_vlm.adapters.checks import check_tokenizers

            try:
                check_tokenizers(teacher.tokenizer, student.tokenizer)
            except ValueError as err:
                raise ConfigError(f"teacher.tokenizer_alignment: shared needs one tokenizer; {err}\n"
                                  "to distil across tokenizers set teacher.tokenizer_alignment to "
                                  "byte_aligned or uld") from None
        # The teacher is frozen: eval mode, no grads, never wrapped for DDP.
        teacher.model.to(device).eval().requires_grad_(False)
    return student, teacher


def _open_cache(cfg: Config, student: Adapter) -> TeacherCache | None:
    """The teacher cache, checked against this run's data, tokenizer, template and length."""
    if not (cfg.loss.needs_teacher and cfg.teacher.cache):
        return None
    from taid_vlm.cache import TeacherCache

    cache = TeacherCache(cfg.teacher.cache)
    template = cfg.student.chat_template or getattr(student.tokenizer, "chat_template", None)
    cache.check(data=cfg.data.train, tokenizer=student.tokenizer, template=template, max_length=cfg.data.max_length)
    return cache


def _load_data(cfg: Config, student: Adapter, teacher: Adapter | None, cache: TeacherCache | None = None):
    from taid_vlm.data.readers import load_samples

    report = DataReport()
    samples = load_samples(cfg.data.train, format=cfg.data.format, image_root=cfg.data.image_root,
                           strict=cfg.data.strict, report=report)
    if cache is not None:
        kept = [x for x in samples if x.id in cache]
        for x in samples:
            if x.id not in cache:
                report.skip("not_in_teacher_cache", sample_id=x.id)
        samples = kept
    val = []
    if cfg.data.val:
        val = load_samples(cfg.data.val, format=cfg.data.format, image_root=cfg.data.image_root,
                           strict=cfg.data.strict, report=DataReport())
    if student.supports_images is False and any(s.images for s in samples):
        raise ConfigError("student: the training data has images but the student family "
                          f"{student.name!r} takes text only; use a VLM or composed student")
    collate = PairCollator(student, teacher, max_length=cfg.data.max_length, report=report, strict=cfg.data.strict,
                           teacher_cache=cache, aligner=_aligner(cfg, student, teacher))
    return samples, val, collate, report


def _aligner(cfg: Config, student: Adapter, teacher: Adapter | None):
    """The cross-tokenizer ``Aligner`` (None for ``shared``); a pair the mode cannot use fails here."""
    mode = cfg.teacher.tokenizer_alignment
    if teacher is None or mode == "shared":
        return None
    from taid_vlm.data.alignment import Aligner

    try:
        return Aligner(mode, teacher.tokenizer, student.tokenizer)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_run(cfg: Config, resume: str | None = None) -> RunParts:
    """Build the accelerator, models, loss, data and optimizer of a run (fails fast on bad input)."""
    check_paths(cfg)
    acc = Accelerator(
        cpu=cfg.train.cpu, mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard" if cfg.logging.tensorboard else None, project_dir=cfg.train.output_dir,
    )
    resume_from = claim_output_dir(cfg, resume, acc.is_main_process, acc.wait_for_everyone)
    acc.wait_for_everyone()
    set_seed(cfg.train.seed)
    student, teacher = _build_adapters(cfg, acc.device)
    if cfg.student.gradient_checkpointing and hasattr(student.model, "gradient_checkpointing_enable"):
        student.model.gradient_checkpointing_enable()
    apply_trainability(student.parts(), cfg.student)

    loss_fn = get_loss(cfg.loss.name, **cfg.loss.loss_options()).to(acc.device)

    cache = _open_cache(cfg, student)
    samples, val, collate, report = _load_data(cfg, student, teacher, cache)
    plan = MicroBatchPlan(len(samples), cfg.train.batch_size, acc.num_processes, acc.process_index, cfg.train.seed)
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * plan.per_epoch / cfg.train.grad_accum))

    sampler = None
    if cfg.sampling.mode != "none":
        from taid_vlm.train.sampling import StudentSampler

        sampler = StudentSampler(cfg.sampling, student, cfg.train.seed, acc.process_index,
                                 {x.id: x for x in samples})
    module = StudentForward(student)
    groups = param_groups(student.parts(), cfg.train, extra=loss_fn)
    optimizer, scheduler = build_optimizer(groups, cfg.train, total)
    module, optimizer = acc.prepare(module, optimizer)
    params = [q for g in optimizer.param_groups for q in g["params"]]
    if acc.is_main_process and cfg.logging.tensorboard:
        acc.init_trackers("tb", config=_flat_hparams(cfg))
    return RunParts(acc, student, module, teacher, loss_fn, optimizer, scheduler, params, samples, val, plan,
                    collate, report, total, resume_from, cache, sampler)


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix] = node
        elif node is not None:
            flat[prefix] = str(node)

    walk("", config_to_dict(cfg))
    return flat
