"""Everything a run needs, built in the order that fails fastest: config and paths, tokenizers,
then weights, then data, then the optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from taid_vlm.adapters import Adapter, build_adapter
from taid_vlm.config import Config, ConfigError
from taid_vlm.config_io import config_to_dict
from taid_vlm.data.sources import looks_like_hub_id
from taid_vlm.train.checkpoint import list_checkpoints, resolve_resume
from taid_vlm.train.data_order import MicroBatchPlan
from taid_vlm.train.optim import apply_trainability, build_optimizer, param_groups
from taid_vlm.train.step import StudentForward

RUN_MARKER = "run_config.yaml"


@dataclass
class RunParts:
    accelerator: Accelerator
    student: Adapter
    student_module: torch.nn.Module
    teacher: Adapter | None
    loss_fn: Any
    schedule: Any
    signal_key: str | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable_params: list[torch.nn.Parameter]
    samples: list
    val_samples: list
    plan: MicroBatchPlan
    collate: Any
    report: Any
    total_steps: int
    resume_from: Path | None
    cache: Any = None
    sampler: Any = None


def check_paths(cfg: Config) -> None:
    """Fail in seconds on missing files, before any weights are loaded."""
    for name, value in (("data.train", cfg.data.train), ("data.val", cfg.data.val),
                        ("data.image_root", cfg.data.image_root), ("eval.vqa", cfg.eval.vqa),
                        ("eval.caption", cfg.eval.caption), ("student.path", cfg.student.path),
                        ("teacher.cache", cfg.teacher.cache)):
        if value and not Path(value).exists():
            if name in ("data.train", "data.val") and looks_like_hub_id(value):
                continue  # a hub dataset id: loaded (from the local cache) with the data
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
        from taid_vlm.adapters.checks import check_tokenizers

        check_tokenizers(teacher.tokenizer, student.tokenizer)
        # The teacher is frozen: eval mode, no grads, never wrapped for DDP.
        teacher.model.to(device).eval().requires_grad_(False)
    return student, teacher


def _open_cache(cfg: Config, student: Adapter) -> Any:
    """The teacher cache, checked against this run's data, tokenizer, template and length."""
    if not (cfg.loss.needs_teacher and cfg.teacher.cache):
        return None
    from taid_vlm.cache import TeacherCache

    cache = TeacherCache(cfg.teacher.cache)
    template = cfg.student.chat_template or getattr(student.tokenizer, "chat_template", None)
    cache.check(data=cfg.data.train, tokenizer=student.tokenizer, template=template, max_length=cfg.data.max_length)
    return cache


def _load_data(cfg: Config, student: Adapter, teacher: Adapter | None, cache: Any, acc: Accelerator):
    """``(samples, val, collate, report, plan)``: records are read lazily (``taid_vlm.data.loading``)
    unless the teacher cache or student sampling needs every sample id up front."""
    from taid_vlm.data.collate import PairCollator
    from taid_vlm.data.loading import load_train_data
    from taid_vlm.data.readers import DataReport, load_samples
    from taid_vlm.data.types import Sample
    from taid_vlm.train.data_order import StreamPlan

    d = cfg.data
    if d.streaming and not cfg.train.max_steps:
        raise ConfigError("data.streaming: a stream has no known length; set train.max_steps")
    if d.format == "text" and (cache is not None or cfg.sampling.mode != "none"):
        raise ConfigError("data.format: text trains on packed raw text; it does not combine with teacher.cache "
                          "or sampling.mode")
    if d.streaming and (cache is not None or cfg.sampling.mode != "none"):
        raise ConfigError("data.streaming: the teacher cache and student sampling need map-style data; "
                          "set data.streaming: false")
    if d.format == "text" and student.name != "text":
        raise ConfigError(f"data.format: text needs a text student (family text), got {student.name!r}")
    report = DataReport()

    def make_collate() -> PairCollator:
        return PairCollator(student, teacher, max_length=d.max_length, report=report, strict=d.strict)

    if cache is not None or cfg.sampling.mode != "none":
        # With a cache, bad images are found now, as the cache writer found them (else they would
        # count as not_in_teacher_cache).
        samples = load_samples(d.train, format=d.format, image_root=d.image_root, strict=d.strict, report=report,
                               validate_images=cache is not None, allow_outside_root=d.allow_absolute_paths,
                               split=d.split, cache_dir=d.cache_dir)
        if cache is not None:
            for x in samples:
                if x.id not in cache:
                    report.skip("not_in_teacher_cache", sample_id=x.id)
            samples = [x for x in samples if x.id in cache]
        val = []
        if d.val:
            val = load_samples(d.val, format=d.format, image_root=d.image_root, strict=d.strict,
                               report=DataReport(), allow_outside_root=d.allow_absolute_paths)
        data_items, stream, to_items, collate = samples, None, None, make_collate()
    else:
        td = load_train_data(d, student.tokenizer, report, has_teacher=teacher is not None,
                             make_collate=make_collate)
        data_items, stream, to_items, collate, val = td.items, td.stream, td.to_items, td.collate, td.val
    if student.supports_images is False and data_items is not None and d.format != "text":
        head = (data_items[i] for i in range(min(len(data_items), 32)))
        if any(isinstance(x, Sample) and x.images for x in head):
            raise ConfigError("student: the training data has images but the student family "
                              f"{student.name!r} takes text only; use a VLM or composed student")
    if stream is not None:
        plan = StreamPlan(stream, to_items, cfg.train.batch_size, acc.num_processes, acc.process_index,
                          cfg.train.seed, d.shuffle_buffer)
    else:
        plan = MicroBatchPlan(len(data_items), cfg.train.batch_size, acc.num_processes, acc.process_index,
                              cfg.train.seed)
    return data_items, val, collate, report, plan


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

    from taid_vlm.losses import get_loss

    loss_kwargs = dict(cfg.loss.kwargs)
    if cfg.loss.name == "taid":
        t = cfg.taid
        loss_kwargs.update(t_start=t.t_start, t_end=t.t_end, alpha=t.alpha, beta=t.beta,
                           adaptive=t.adaptive, signal=t.signal)
    elif cfg.loss.temperature != 1.0:
        loss_kwargs.setdefault("temperature", cfg.loss.temperature)
    loss_fn = get_loss(cfg.loss.name, **loss_kwargs).to(acc.device)
    schedule = getattr(loss_fn, "schedule", None)
    signal_key = getattr(loss_fn, "signal_key", None)

    cache = _open_cache(cfg, student)
    samples, val, collate, report, plan = _load_data(cfg, student, teacher, cache, acc)
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
    return RunParts(acc, student, module, teacher, loss_fn, schedule, signal_key, optimizer, scheduler,
                    params, samples, val, plan, collate, report, total, resume_from, cache, sampler)


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
