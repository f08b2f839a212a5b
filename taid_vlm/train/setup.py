"""Everything a run needs, built in the order that fails fastest: config and paths, tokenizers,
then weights, then data, then the optimizer."""

from __future__ import annotations

import math
import os
import shutil
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
from taid_vlm.train.checkpoint import SHARDED_ENGINES, check_free_space, list_checkpoints, resolve_resume
from taid_vlm.train.data_order import MicroBatchPlan
from taid_vlm.train.optim import apply_trainability, build_optimizer, param_groups
from taid_vlm.train.placement import check_engine, check_placement, distributed_type
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
    """Fail in seconds on missing files and unknown model families, before any weights are loaded."""
    for name, value in (("data.train", cfg.data.train), ("data.val", cfg.data.val),
                        ("data.image_root", cfg.data.image_root), ("eval.vqa", cfg.eval.vqa),
                        ("eval.caption", cfg.eval.caption), ("student.path", cfg.student.path),
                        ("student.tokenizer", cfg.student.tokenizer), ("teacher.cache", cfg.teacher.cache)):
        if value and not Path(value).exists():
            raise ConfigError(f"{name}: {value!r} does not exist")
    uses_teacher = cfg.loss.needs_teacher and not cfg.teacher.cache
    if uses_teacher and cfg.teacher.path and not Path(cfg.teacher.path).exists():
        raise ConfigError(f"teacher.path: {cfg.teacher.path!r} does not exist")
    if uses_teacher and cfg.teacher.tokenizer and not Path(cfg.teacher.tokenizer).exists():
        raise ConfigError(f"teacher.tokenizer: {cfg.teacher.tokenizer!r} does not exist")
    from taid_vlm.adapters.registry import available_adapters

    families = available_adapters()
    for name, model in (("student", cfg.student), ("teacher", cfg.teacher if uses_teacher else None)):
        if model is not None and model.family != "auto" and model.family not in families:
            raise ConfigError(f"{name}.family: unknown family {model.family!r}; valid: auto, {', '.join(families)}")
    if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 autocast needs a GPU; use bf16 or no on the CPU")


# What a run writes into its output folder; ``train.overwrite`` and a fresh start remove these.
RUN_FILES = ("checkpoints", "logs", "final", "tb")


def claim_output_dir(cfg: Config, resume: str | None, is_main: bool, barrier: Any = None) -> Path | None:
    """Refuse to write into another run's folder; returns the checkpoint to resume from.

    Only checks: nothing is written until ``write_run_marker``, after the models and data are
    built, so a start that fails leaves the folder as it was. A run's folder without a checkpoint
    yet (killed before its first save) is started afresh by ``--resume auto`` or by the same
    config. Every rank
    decides before any rank writes the run marker, so all ranks see the same folder.
    """
    out = Path(cfg.train.output_dir)
    resume_from = resolve_resume(out, resume)
    marker = out / RUN_MARKER
    busy = out.is_dir() and any(out.iterdir())
    fresh_restart = resume_from is None and marker.is_file() and _died_before_first_checkpoint(out, cfg, resume)
    if busy and resume_from is None and not cfg.train.overwrite and not fresh_restart:
        what = f"another run ({len(list_checkpoints(out))} checkpoints)" if marker.exists() else "other files"
        raise ConfigError(
            f"train.output_dir: {str(out)!r} already holds {what}; pass --resume auto to continue it, "
            "choose another folder, or set train.overwrite=true"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir: {str(out)!r} is a file; choose a folder")
    # Checked on every rank (a failed write on the main process alone would leave the others
    # waiting at a barrier); root passes this check, so write_run_marker reports those cases.
    nearest = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(nearest, os.W_OK):
        raise ConfigError(f"train.output_dir: cannot write to {str(nearest)!r} (read-only or no permission); "
                          "choose a writable folder")
    if barrier:
        barrier()
    return resume_from


def _died_before_first_checkpoint(out: Path, cfg: Config, resume: str | None) -> bool:
    """This folder's run has no checkpoint and no final student (killed before its first save),
    so starting it afresh loses nothing: with ``--resume auto``, or when the config is the same."""
    if list_checkpoints(out) or (out / "final").exists():
        return False
    if resume == "auto":
        return True
    try:
        return yaml.safe_load((out / RUN_MARKER).read_text()) == config_to_dict(cfg)
    except (OSError, yaml.YAMLError):
        return False


def write_run_marker(cfg: Config, resume_from: Path | None) -> None:
    """Take the output folder (main process): on a fresh start remove what an earlier run there
    wrote (checkpoints, logs, final student), so ``train.overwrite`` and a restart keep no stale
    line or checkpoint, then write the run marker. A folder that cannot be written is a
    ``ConfigError`` naming ``train.output_dir``."""
    out = Path(cfg.train.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            for name in RUN_FILES:
                stale = out / name
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.exists():
                    stale.unlink()
        (out / RUN_MARKER).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    except OSError as err:
        raise ConfigError(f"train.output_dir: cannot write to {str(out)!r} ({err.strerror or err}); "
                          "choose a writable folder") from None


def _all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    # In chunks: a 150k x 8k embedding would otherwise need a 1.2 GB mask beside a large teacher.
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def check_finite_weights(model: torch.nn.Module, name: str) -> None:
    """Raise ``ConfigError`` naming ``name`` if any weight or buffer holds NaN or inf (a broken
    conversion or download): a teacher like that would make every step non-finite."""
    bad = [k for k, t in model.state_dict().items()
           if t.is_floating_point() and t.device.type != "meta" and not _all_finite(t)]
    if bad:
        raise ConfigError(f"{name}: {len(bad)} weight tensors hold NaN or inf values (first: {bad[0]!r}); "
                          "the checkpoint is broken, re-download or re-convert it")


def _build_adapters(cfg: Config, acc: Accelerator) -> tuple[Adapter, Adapter | None]:
    student = build_adapter(**cfg.student.adapter_kwargs())
    teacher = None
    if cfg.loss.needs_teacher and not cfg.teacher.cache:
        teacher_kwargs = cfg.teacher.adapter_kwargs()
        if teacher_kwargs["tokenizer"] is None and teacher_kwargs["path"] is None:
            # A teacher built from a config shares the student's tokenizer (required anyway).
            teacher_kwargs["tokenizer"] = student.tokenizer
        teacher = build_adapter(**teacher_kwargs)
        check_finite_weights(teacher.model, "teacher.path" if cfg.teacher.path else "teacher.config")
        from taid_vlm.adapters.checks import check_tokenizers

        check_tokenizers(teacher.tokenizer, student.tokenizer)
        # The teacher is frozen: eval mode, no grads, never wrapped for DDP; placed as configured.
        from taid_vlm.train.placement import place_teacher

        place_teacher(teacher.model, cfg.teacher, acc)
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

    def read(field: str, path: str, report: DataReport) -> list:
        try:
            return load_samples(path, format=cfg.data.format, image_root=cfg.data.image_root,
                                strict=cfg.data.strict, report=report)
        except ConfigError:
            raise
        except (ValueError, RecursionError, OSError) as err:  # a file that is not records at all
            raise ConfigError(f"{field}: cannot read {path!r}: {str(err)[:300]}") from None

    report = DataReport()
    samples = read("data.train", cfg.data.train, report)
    if cache is not None:
        kept = [x for x in samples if x.id in cache]
        for x in samples:
            if x.id not in cache:
                report.skip("not_in_teacher_cache", sample_id=x.id)
        samples = kept
    val = []
    if cfg.data.val:
        val = read("data.val", cfg.data.val, DataReport())
    if student.supports_images is False and any(s.images for s in samples):
        raise ConfigError("student: the training data has images but the student family "
                          f"{student.name!r} takes text only; use a VLM or composed student")
    collate = PairCollator(student, teacher, max_length=cfg.data.max_length, report=report, strict=cfg.data.strict,
                           teacher_cache=cache)
    return samples, val, collate, report


def build_run(cfg: Config, resume: str | None = None) -> RunParts:
    """Build the accelerator, models, loss, data and optimizer of a run (fails fast on bad input)."""
    check_paths(cfg)
    acc = make_accelerator(cfg)
    check_engine(acc, cfg)
    if cfg.loss.needs_teacher and not cfg.teacher.cache:
        check_placement(cfg.teacher, acc)
        check_fits(cfg, acc)
    resume_from = claim_output_dir(cfg, resume, acc.is_main_process, acc.wait_for_everyone)
    acc.wait_for_everyone()
    set_seed(cfg.train.seed)
    student, teacher = _build_adapters(cfg, acc)
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
    if distributed_type(acc) in SHARDED_ENGINES:
        # accelerate.save_state then saves (and load_state restores) these beside the engine's shards.
        acc.register_for_checkpointing(scheduler, loss_fn)
    params = [q for g in optimizer.param_groups for q in g["params"]]
    check_free_space(cfg.train.output_dir, student.model, optimizer)  # every rank, so all stop together
    if acc.is_main_process:  # the start-up succeeded: now the folder is taken
        write_run_marker(cfg, resume_from)
    acc.wait_for_everyone()
    if acc.is_main_process and cfg.logging.trackers():
        acc.init_trackers("taid-vlm", config=_flat_hparams(cfg))
    return RunParts(acc, student, module, teacher, loss_fn, optimizer, scheduler, params, samples, val, plan,
                    collate, report, total, resume_from, cache, sampler)


def check_fits(cfg: Config, acc: Accelerator) -> None:
    """On GPUs, refuse a teacher placement that the memory plan says cannot fit, before weights load."""
    if acc.device.type != "cuda":
        return  # the plan is about GPU memory
    from taid_vlm.train.plan import format_plan, make_plan

    try:
        plan = make_plan(cfg, acc.num_processes, torch.cuda.get_device_properties(acc.device).total_memory)
    except ConfigError as err:  # no config.json to count from: run without the check, say so
        if acc.is_main_process:
            print(f"[taid-vlm] memory plan skipped: {err}")
        return
    row = plan["placements"][cfg.teacher.placement]
    if not row["fits"]:
        fitting = [n for n, r in plan["placements"].items() if r["fits"]]
        raise ConfigError(f"teacher.placement: {cfg.teacher.placement} needs ~{row['total'] / 2**30:.1f} GiB per GPU "
                          f"here; placements that fit: {', '.join(fitting) or 'none'}\n{format_plan(plan)}")


def make_accelerator(cfg: Config) -> Accelerator:
    """The run's Accelerator. Precision and device come from the launcher (``accelerate launch
    --mixed_precision``, its config file, ``--cpu``) unless the recipe sets them: a null
    ``train.mixed_precision`` is left for accelerate to resolve."""
    return Accelerator(cpu=cfg.train.cpu, mixed_precision=cfg.train.mixed_precision,
                       log_with=cfg.logging.trackers() or None, project_dir=cfg.train.output_dir)


def launch_summary(acc: Accelerator, cfg: Config) -> dict[str, Any]:
    """The settings accelerate resolved for this run (logged at start): engine, processes, device,
    precision, where each came from, and the teacher's placement."""
    return {
        "engine": distributed_type(acc), "num_processes": acc.num_processes, "device": str(acc.device),
        "mixed_precision": str(acc.mixed_precision),
        "mixed_precision_from": "recipe" if cfg.train.mixed_precision is not None else "launcher",
        "teacher_placement": None if cfg.teacher.cache or not cfg.loss.needs_teacher else cfg.teacher.placement,
        "trackers": cfg.logging.trackers(),
    }


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
