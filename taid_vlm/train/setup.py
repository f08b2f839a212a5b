"""Everything a run needs, built in the order that fails fastest: config and paths, tokenizers,
then weights, then data, then the optimizer."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
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
from taid_vlm.data.sources import looks_like_hub_id
from taid_vlm.data.types import Sample
from taid_vlm.losses import DistillLoss, get_loss
from taid_vlm.train.checkpoint import SHARDED_ENGINES, check_free_space, list_checkpoints, resolve_resume
from taid_vlm.train.data_order import MicroBatchPlan, StreamPlan
from taid_vlm.train.optim import apply_trainability, build_optimizer, param_groups
from taid_vlm.train.placement import check_engine, check_placement, distributed_type
from taid_vlm.train.qat import prepare_run_student
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
    samples: Sequence[Sample] | None  # a list, a LazySamples view of a dataset, or None for a stream
    val_samples: list[Sample]
    plan: MicroBatchPlan | StreamPlan
    collate: PairCollator
    report: DataReport
    total_steps: int
    resume_from: Path | None
    cache: TeacherCache | None = None
    sampler: StudentSampler | None = None


def check_paths(cfg: Config) -> None:
    """Fail in seconds on missing files and unknown model families, before any weights are loaded."""
    from taid_vlm.path_hints import missing

    for name, value in (("data.train", cfg.data.train), ("data.val", cfg.data.val),
                        ("data.image_root", cfg.data.image_root), ("eval.vqa", cfg.eval.vqa),
                        ("eval.caption", cfg.eval.caption), ("student.path", cfg.student.path),
                        ("student.tokenizer", cfg.student.tokenizer), ("teacher.cache", cfg.teacher.cache)):
        if value and not Path(value).exists():
            if name in ("data.train", "data.val") and looks_like_hub_id(value):
                continue  # a hub dataset id: loaded (from the local cache) with the data
            raise ConfigError(f"{name}: {missing(value)}")
    uses_teacher = cfg.loss.needs_teacher and not cfg.teacher.cache
    # Across tokenizers a cache run still reads the teacher's tokenizer (named by these, or the cache's copy).
    uses_teacher_tokenizer = uses_teacher or (cfg.loss.needs_teacher and cfg.teacher.tokenizer_alignment != "shared")
    if uses_teacher_tokenizer and cfg.teacher.path and not Path(cfg.teacher.path).exists():
        hint = "; set teacher.path: null to use the tokenizer stored in teacher.cache" if not uses_teacher else ""
        raise ConfigError(f"teacher.path: {missing(cfg.teacher.path)}{hint}")
    if uses_teacher_tokenizer and cfg.teacher.tokenizer and not Path(cfg.teacher.tokenizer).exists():
        raise ConfigError(f"teacher.tokenizer: {missing(cfg.teacher.tokenizer)}")
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
    from taid_vlm.adapters.student import check_student
    from taid_vlm.models.peft_student import quantization_kwargs

    student = build_adapter(**cfg.student.adapter_kwargs(), **quantization_kwargs(cfg.student, acc.device))
    try:  # before the teacher loads: a family that cannot train is refused in seconds
        check_student(student)
    except ValueError as err:
        raise ConfigError(f"student.family: {err}") from None
    teacher = None
    if cfg.loss.needs_teacher and not cfg.teacher.cache:
        teacher_kwargs = cfg.teacher.adapter_kwargs()
        if teacher_kwargs["tokenizer"] is None and teacher_kwargs["path"] is None:
            # A teacher built from a config shares the student's tokenizer (required anyway).
            teacher_kwargs["tokenizer"] = student.tokenizer
        teacher = build_adapter(**teacher_kwargs)
        check_finite_weights(teacher.model, "teacher.path" if cfg.teacher.path else "teacher.config")
        if cfg.teacher.tokenizer_alignment == "shared":
            from taid_vlm.adapters.checks import check_tokenizers

            try:
                check_tokenizers(teacher.tokenizer, student.tokenizer)
            except ValueError as err:
                raise ConfigError(f"teacher.tokenizer_alignment: shared needs one tokenizer; {err}\n"
                                  "to distil across tokenizers set teacher.tokenizer_alignment to "
                                  "byte_aligned or uld") from None
        # The teacher is frozen: eval mode, no grads, never wrapped for DDP; placed as configured.
        from taid_vlm.train.placement import place_teacher

        place_teacher(teacher.model, cfg.teacher, acc)
    return student, teacher


def _open_cache(cfg: Config, student: Adapter) -> tuple[TeacherCache | None, Any]:
    """``(cache, teacher tokenizer)``: the teacher cache, checked against this run's data, tokenizer,
    template and length. With one tokenizer the cache's ids are the student's (tokenizer None);
    across tokenizers they are the teacher's, so the check is against the teacher tokenizer the run
    names (teacher.tokenizer or teacher.path), else against the copy stored in the cache."""
    if not (cfg.loss.needs_teacher and cfg.teacher.cache):
        return None, None
    from taid_vlm.cache import TeacherCache

    cache = TeacherCache(cfg.teacher.cache)
    if cfg.teacher.tokenizer_alignment == "shared":
        template = cfg.student.chat_template or getattr(student.tokenizer, "chat_template", None)
        cache.check(data=cfg.data.train, tokenizer=student.tokenizer, template=template,
                    max_length=cfg.data.max_length)
        return cache, None
    if not cache.has_turns:
        raise ConfigError(f"teacher.cache: {cfg.teacher.cache} was written before cross-tokenizer caches (no turn "
                          "boundaries); re-run cache-teacher to use it with teacher.tokenizer_alignment "
                          f"{cfg.teacher.tokenizer_alignment}")
    setting = ("teacher.tokenizer" if cfg.teacher.tokenizer else "teacher.path" if cfg.teacher.path
               else "teacher.cache")
    tok = cache.teacher_tokenizer(cfg.teacher.tokenizer or cfg.teacher.path,
                                  trust_remote_code=cfg.teacher.trust_remote_code)
    template = cfg.teacher.chat_template or getattr(tok, "chat_template", None)
    cache.check(data=cfg.data.train, tokenizer=tok, template=template, max_length=cfg.data.max_length,
                tokenizer_setting=setting)
    return cache, tok


def _load_data(cfg: Config, student: Adapter, teacher: Adapter | None, cache: TeacherCache | None,
               acc: Accelerator, teacher_tokenizer: Any = None, report: DataReport | None = None):
    """``(samples, val, collate, report, plan)``: records are read lazily (``taid_vlm.data.loading``)
    unless the teacher cache or student sampling needs every sample id up front."""
    from taid_vlm.data.loading import load_train_data
    from taid_vlm.data.readers import load_samples

    def named(field: str, read, *args, **kwargs):
        # A file that is not records at all (empty, not JSON, nested too deep): a message naming
        # the field, not a traceback.
        try:
            return read(*args, **kwargs)
        except ConfigError:
            raise
        except (ValueError, RecursionError, OSError) as err:
            raise ConfigError(f"{field}: cannot read {getattr(cfg.data, field.split('.')[1])!r}: "
                              f"{str(err)[:300]}") from None

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
    report = report if report is not None else DataReport()  # the pre-flight's counts, when it ran
    aligner = _aligner(cfg, student, teacher.tokenizer if teacher is not None else teacher_tokenizer)

    def make_collate() -> PairCollator:
        return PairCollator(student, teacher, max_length=d.max_length, report=report, strict=d.strict,
                            teacher_cache=cache, aligner=aligner, encode_cache_bytes=d.encode_cache_mb << 20)

    if cache is not None or cfg.sampling.mode != "none":
        # With a cache, bad images are found now, as the cache writer found them (else they would
        # count as not_in_teacher_cache).
        samples = named("data.train", load_samples, d.train, format=d.format, image_root=d.image_root,
                        strict=d.strict, report=report, validate_images=cache is not None,
                        allow_outside_root=d.allow_absolute_paths, split=d.split, cache_dir=d.cache_dir,
                        max_images=d.max_images, subset=d.subset)
        if cache is not None:
            for x in samples:
                if x.id not in cache:
                    report.skip("not_in_teacher_cache", sample_id=x.id)
            samples = [x for x in samples if x.id in cache]
        from taid_vlm.data.preflight import stop_if_unusable

        stop_if_unusable(report, str(d.train), d.max_bad_fraction)  # every record was read and checked
        val = []
        if d.val:
            val = named("data.val", load_samples, d.val, format=d.format, image_root=d.image_root,
                        strict=d.strict, report=DataReport(), allow_outside_root=d.allow_absolute_paths)
        data_items, stream, to_items, collate = samples, None, None, make_collate()
    else:
        td = named("data.train", load_train_data, d, student.tokenizer, report,
                   has_teacher=teacher is not None, make_collate=make_collate, items=report.items)
        report.items = None  # the collator (and a loader worker's copy of it) holds the report
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


def _aligner(cfg: Config, student: Adapter, teacher_tokenizer: Any):
    """The cross-tokenizer ``Aligner`` (None for ``shared`` or without a teacher); a pair the mode
    cannot use fails here. ``teacher_tokenizer``: the live teacher's, or the teacher cache's."""
    mode = cfg.teacher.tokenizer_alignment
    if teacher_tokenizer is None or mode == "shared":
        return None
    from taid_vlm.data.alignment import Aligner

    try:
        return Aligner(mode, teacher_tokenizer, student.tokenizer)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_run(cfg: Config, resume: str | None = None) -> RunParts:
    """Build the accelerator, models, loss, data and optimizer of a run (fails fast on bad input)."""
    check_paths(cfg)
    from taid_vlm.data.preflight import preflight

    # Before any weights load: a set with no (or too few) usable records stops here, reasons printed.
    checked = None if cfg.teacher.cache or cfg.sampling.mode != "none" else preflight(cfg.data, cfg.train.seed)
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
    prepare_run_student(cfg, student, distributed_type(acc))  # QAT: before trainability and the optimizer
    apply_trainability(student.parts(), cfg.student)
    if cfg.student.peft is not None:  # LoRA on the LM; wrappers of adapter.model (QAT) chain after this
        from taid_vlm.models.peft_student import apply_peft

        if distributed_type(acc) in SHARDED_ENGINES:
            raise ConfigError("student.peft: adapters are trained with DDP or one process here; FSDP/DeepSpeed "
                              "checkpoints of a peft student are not supported yet")

        apply_peft(student, cfg.student)

    loss_fn = get_loss(cfg.loss.name, **cfg.loss.loss_options()).to(acc.device)

    cache, cache_tokenizer = _open_cache(cfg, student)
    samples, val, collate, report, plan = _load_data(cfg, student, teacher, cache, acc, cache_tokenizer, checked)
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
    from taid_vlm.models.peft_student import checkpoint_module

    check_free_space(cfg.train.output_dir, checkpoint_module(student, student.model), optimizer)  # every rank, so all stop together
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
