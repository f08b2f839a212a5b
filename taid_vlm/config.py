"""Typed run configuration. Each field's docstring is its only help text; checks name the field.

Load with ``taid_vlm.config_io.load_config(path, overrides)``; YAML sections map 1:1 to the
dataclasses below (``student``, ``teacher``, ``data``, ``loss``, ``train``, ``eval``, ``logging``,
``sampling``). Unknown keys are errors. Loss options (TAID's schedule included) live in ``loss:``
as a block per loss name, checked by the loss classes themselves.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
# The registry's built-in loss names (taid_vlm.losses.registry.LOSS_NAMES; a test keeps the two
# equal), so that a misspelt loss is refused before torch is imported.
BUILTIN_LOSSES = ("sft", "fkl", "rkl", "tvd", "gjsd", "skew_fkl", "skew_rkl", "akl", "ctkd", "dkd", "taid")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg}")


@dataclass
class ModelConfig:
    family: str = "auto"
    """Adapter family by registry name (text, composed, llava, qwen2_vl, ...); auto reads config.json."""
    path: str | None = None
    """Pretrained model directory (or hub id when online). Either this or `config`."""
    config: dict[str, Any] | None = None
    """Architecture dict to build the model with random weights (see taid_vlm.models.factory)."""
    tokenizer: str | None = None
    """Tokenizer directory; defaults to `path`."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint directory. Off unless you trust it."""
    chat_template: str | None = None
    """Jinja chat template overriding the tokenizer/processor's own."""
    attn_implementation: str | None = None
    """Attention kernel passed to transformers (eager, sdpa, flash_attention_2)."""

    def check(self, name: str, required: bool = True) -> None:
        _check(self.dtype in DTYPES, f"{name}.dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if required:
            _check(bool(self.path) or self.config is not None, f"{name}.path",
                   "set `path` to a model directory or `config` to build one from scratch")
        _check(not (self.family == "auto" and not self.path and self.config is not None),
               f"{name}.family", "family 'auto' needs `path`; set the family when building from `config`")

    def adapter_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``taid_vlm.adapters.build_adapter``."""
        return {
            "family": self.family, "path": self.path, "config": self.config, "tokenizer": self.tokenizer,
            "dtype": self.dtype, "trust_remote_code": self.trust_remote_code,
            "chat_template": self.chat_template, "attn_implementation": self.attn_implementation,
        }


QAT_SCHEMES = ("int8_dynamic_int4_weight", "int8_weight_only")
QAT_TARGETS = ("lm", "projector")


@dataclass
class StudentQuantizationConfig:
    """torchao quantization-aware training of the student (taid_vlm.models.qat)."""

    scheme: str = "int8_dynamic_int4_weight"
    """int8_dynamic_int4_weight (int8 per-token activations, int4 symmetric grouped weights) or
    int8_weight_only (int8 per-channel weights); fake-quantized in training, real at the end."""
    group_size: int = 32
    """int8_dynamic_int4_weight: input features per weight scale; must divide every target's in_features."""
    targets: list[str] = field(default_factory=lambda: ["lm"])
    """Parts whose linear layers are quantized: lm (the LM's linears, never its output head) and/or projector."""

    def check(self, name: str) -> None:
        _check(self.scheme in QAT_SCHEMES, f"{name}.scheme", f"must be one of {', '.join(QAT_SCHEMES)}, "
               f"got {self.scheme!r}")
        _check(self.group_size >= 1, f"{name}.group_size", f"must be >= 1, got {self.group_size}")
        _check(bool(self.targets) and all(t in QAT_TARGETS for t in self.targets), f"{name}.targets",
               f"must be a non-empty list of {', '.join(QAT_TARGETS)}, got {self.targets!r}")


def check_quantization_peft(quantization: StudentQuantizationConfig | None, adapter: str | None,
                            base_quantized: bool = False, merged: bool = True) -> None:
    """Refuse ``student.quantization`` with a ``student.peft`` setting they cannot share (called
    from ``StudentConfig.check``): ``adapter`` is the peft method (``lora``...,
    None for no adapter), ``base_quantized`` a bitsandbytes-quantized base (QLoRA), ``merged`` whether
    the final adapter is merged into the base. Accepted: LoRA on the fake-quantized base, merged at the
    end and then converted (checked in tests/unit/test_qat.py: peft wraps torchao's FakeQuantizedLinear,
    an nn.Linear subclass, and merge_and_unload keeps it)."""
    if quantization is None or adapter is None:
        return
    _check(not base_quantized, "student.quantization",
           "QLoRA's base is bitsandbytes-quantized (Linear4bit/Linear8bitLt), which torchao QAT cannot "
           "fake-quantize (it swaps nn.Linear); use student.quantization with plain LoRA (student.peft) or drop one")
    _check(adapter.lower() == "lora", "student.quantization",
           f"only LoRA adapters (student.peft) are checked to train on torchao's fake-quantized linears, got {adapter!r}")
    _check(merged, "student.quantization",
           "the quantized student ships as one model, so the LoRA adapter must be merged into the base before "
           "conversion; set the student.peft merge option")


@dataclass
class PeftConfig:
    """``student.peft``: LoRA adapters from the peft library on the student's language model (see
    taid_vlm.models.peft_student). The LM's base weights stay frozen; the other parts follow
    train_vision / train_projector (fully trained when on, saved with the adapter)."""

    r: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scaling numerator (lora_alpha): the update is scaled by alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    target_modules: str | list[str] = "all-linear"
    """LM modules that get adapters: "all-linear" (every linear but the LM head), or names such as
    [q_proj, v_proj] (a module matches when its name ends with one), lm_head included if listed."""
    modules_to_save: list[str] = field(default_factory=list)
    """LM modules trained in full and saved with the adapter (e.g. [lm_head] or [embed_tokens])."""
    use_dora: bool = False
    """DoRA: weight-decomposed LoRA (peft's use_dora)."""
    use_rslora: bool = False
    """rsLoRA: scale by alpha / sqrt(r) (peft's use_rslora)."""
    load_in_4bit: bool = False
    """QLoRA: load the frozen base in 4 bits with bitsandbytes (text students loaded from `path`)."""
    quant_type: str = "nf4"
    """4-bit data type of the base: nf4 or fp4."""
    double_quant: bool = True
    """Quantize the 4-bit base's quantization constants too (bitsandbytes double quantization)."""
    merge: bool = False
    """Also write the student with the adapter merged in, as a plain model, to final/merged."""

    def __post_init__(self) -> None:
        _check(self.r >= 1, "student.peft.r", f"must be >= 1, got {self.r}")
        _check(self.alpha > 0, "student.peft.alpha", f"must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, "student.peft.dropout", f"must be in [0, 1), got {self.dropout}")
        names = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        _check(bool(names) and all(isinstance(n, str) and n for n in names), "student.peft.target_modules",
               f'"all-linear" or a non-empty list of module names, got {self.target_modules!r}')
        _check(all(isinstance(n, str) and n for n in self.modules_to_save), "student.peft.modules_to_save",
               f"a list of module names, got {self.modules_to_save!r}")
        _check(self.quant_type in ("nf4", "fp4"), "student.peft.quant_type", f"nf4 or fp4, got {self.quant_type!r}")


@dataclass
class StudentConfig(ModelConfig):
    train_vision: bool = True
    """Train the vision encoder (composed/VLM students)."""
    train_projector: bool = True
    """Train the projector between vision encoder and LM."""
    train_lm: bool = True
    """Train the language model."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    peft: PeftConfig | None = None
    """LoRA / DoRA / QLoRA adapters on the student's LM (the peft library); null trains the weights."""

    quantization: StudentQuantizationConfig | None = None
    """Quantization-aware training (torchao): the student trains fake-quantized and is saved as the
    real quantized model (see README "Quantization-aware distillation"); null: a float student."""

    def check(self, name: str, required: bool = True) -> None:
        super().check(name, required)
        if self.peft is not None:
            check_quantization_peft(self.quantization, "dora" if self.peft.use_dora else "lora",
                                    base_quantized=self.peft.load_in_4bit, merged=self.peft.merge)
        if self.peft is None:
            return
        _check(self.train_lm, "student.train_lm", "student.peft trains the LM through adapters; set train_lm: true "
               "(or drop student.peft to freeze the LM)")
        if self.peft.load_in_4bit:
            _check(bool(self.path), "student.peft.load_in_4bit",
                   "4-bit bases are quantized while loading a pretrained checkpoint; set student.path")
            _check(self.family in ("auto", "text"), "student.peft.load_in_4bit",
                   f"4-bit bases are loaded for text students only, not family {self.family!r}")
            _check(not self.peft.merge, "student.peft.merge", "a 4-bit base cannot be merged exactly; merge the "
                   "adapter into the full-precision student.path (PeftModel.from_pretrained + merge_and_unload)")


PLACEMENTS = ("replicated", "sharded", "dispatched")
QUANTIZATIONS = ("none", "8bit", "4bit")


@dataclass
class TeacherConfig(ModelConfig):
    cache: str | None = None
    """Directory of a teacher top-k cache (taid-vlm cache-teacher); then no teacher model is loaded.
    Across tokenizers (tokenizer_alignment byte_aligned / uld) only the teacher's tokenizer is: the one
    `tokenizer` or `path` names, else the copy stored in the cache."""
    placement: str = "replicated"
    """Where the frozen teacher lives: replicated (a whole copy on each process's device), sharded
    (wrapped by the student's FSDP2 / DeepSpeed ZeRO-3 engine, no optimizer state; GPUs only) or
    dispatched (accelerate big-model dispatch over `max_memory`, offloading to CPU RAM and disk)."""
    max_memory: dict[str, Any] | None = None
    """dispatched: memory per device for the teacher, accelerate's `max_memory` ({0: 70GiB, cpu: 200GiB});
    default: what accelerate finds free. Devices not listed get nothing."""
    offload_folder: str | None = None
    """dispatched: folder for teacher weights that fit neither GPUs nor `max_memory["cpu"]`."""
    quantization: str = "none"
    """Teacher weights quantized on load: none, 8bit or 4bit (torchao weight-only, when installed)."""

    def check_placement(self, student_dtype: str) -> None:
        """Placement settings that are wrong whatever the machine (checked before any weights load)."""
        _check(self.placement in PLACEMENTS, "teacher.placement",
               f"must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        _check(self.quantization in QUANTIZATIONS, "teacher.quantization",
               f"must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        _check(self.max_memory is None or self.placement == "dispatched", "teacher.max_memory",
               f"only used by placement dispatched (placement is {self.placement!r})")
        _check(self.offload_folder is None or self.placement == "dispatched", "teacher.offload_folder",
               f"only used by placement dispatched (placement is {self.placement!r})")
        if self.placement == "sharded":
            # One engine wraps both models with one parameter dtype (FSDP2 mixed-precision policy,
            # ZeRO-3's fp16/bf16 section): a teacher in another dtype would be silently cast.
            _check(self.dtype == student_dtype, "teacher.dtype",
                   f"placement sharded wraps teacher and student in one engine, so their dtypes must match "
                   f"(teacher {self.dtype}, student.dtype {student_dtype}); set teacher.dtype={student_dtype} "
                   "or use placement dispatched")
            _check(self.quantization == "none", "teacher.quantization",
                   "a quantized teacher cannot be sharded by FSDP2/ZeRO-3; use placement replicated or dispatched")
        if self.quantization != "none":
            _check(self.dtype != "float32", "teacher.dtype",
                   "quantized weight-only kernels run in bfloat16/float16; set teacher.dtype=bfloat16")
    tokenizer_alignment: str = "shared"
    """How teacher and student response tokens are matched: shared (one tokenizer, checked at start-up),
    byte_aligned (character spans of the same response text: divergence on the shared vocabulary where
    tokens match one-to-one, merged span probabilities elsewhere) or uld (sorted probabilities per
    response position, any two tokenizers). TAID interpolates after the teacher is mapped."""


@dataclass
class DataConfig:
    train: str = ""
    """Training data: a file (JSON, JSONL, TXT, parquet, arrow), a folder (save_to_disk, imagefolder) or a hub dataset id (local cache)."""
    val: str | None = None
    """Validation data for the loss hook; same formats as `train`."""
    format: str = "auto"
    """Record format: auto, llava, sharegpt, messages, cauldron, mantis, vqa, caption, hf, or text (raw text, packed)."""
    subset: str | list[str] | None = None
    """Subset(s) (datasets config names) of a dataset laid out as on the hub with subsets as configs, e.g.
    Mantis-Instruct's (nlvr2, multi_vqa, ...), a list concatenated in order: a hub id from the local
    cache or a local copy of its folder."""
    max_images: int | None = None
    """Skip records with more images than this (counted as too_many_images); null: no cap."""
    image_root: str | None = None
    """Folder image paths are relative to; defaults to the data file's folder."""
    allow_absolute_paths: bool = False
    """Accept image paths outside image_root (absolute paths, ../); off so a dataset cannot read arbitrary files."""
    streaming: bool = False
    """Read `train` as a stream (datasets IterableDataset) in order; needs train.max_steps."""
    shuffle_buffer: int = 0
    """Streams: seeded shuffle buffer of this many records (0: stream order; a buffer makes resume inexact)."""
    split: str = "train"
    """Split of a DatasetDict folder or hub dataset."""
    text_column: str = "text"
    """format: text: the field holding each document."""
    cache_dir: str | None = None
    """datasets cache folder for converted/packed tables (default: HF_DATASETS_CACHE)."""
    max_length: int = 512
    """Token budget per sample per side; a sample whose first response would be cut is skipped."""
    strict: bool = False
    """Turn skipped records (bad image, empty answer, ...) into errors."""
    max_bad_fraction: float = 0.5
    """Stop before training when more than this share of the records checked up front is unusable
    (missing or escaping image paths, undecodable image headers, bad records); none usable always stops."""
    preflight_records: int = 10_000
    """Records of a file-based set checked before training (all of them up to this many, else a seeded
    sample of this many); 0 turns the check off. Streams instead stop when their first batches hold no usable record."""
    num_workers: int = 0
    """DataLoader worker processes for encoding."""
    encode_cache_mb: int = 512
    """Keep up to this many MB of encoded samples (token ids, labels, pixel tensors) in the process
    that encodes, least recently used out first, so later epochs skip the image decoding and chat
    template; 0 turns it off. Held once per encoding process (a loader worker, else the trainer)."""

    def check(self) -> None:
        _check(bool(self.train), "data.train", "set the training data file")
        _check(self.max_length >= 8, "data.max_length", f"must be >= 8, got {self.max_length}")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(self.encode_cache_mb >= 0, "data.encode_cache_mb", "must be >= 0")
        _check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        names = [self.subset] if isinstance(self.subset, str) else self.subset
        _check(names is None or (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)),
               "data.subset", f"must be a subset name or a non-empty list of names, got {self.subset!r}")
        _check(self.max_images is None or self.max_images >= 1, "data.max_images",
               f"must be >= 1 or null, got {self.max_images}")
        _check(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}")
        _check(self.preflight_records >= 0, "data.preflight_records", "must be >= 0")
        formats = ("auto", "llava", "sharegpt", "messages", "cauldron", "mantis", "vqa", "caption", "hf", "text")
        _check(self.format in formats, "data.format", f"unknown format {self.format!r}; valid: {', '.join(formats)}")


@dataclass
class LossConfig:
    name: str = "taid"
    """Loss by registry name: sft, fkl, rkl, tvd, gjsd, skew_fkl, skew_rkl, akl, ctkd, dkd, taid."""
    distil_ratio: float = 1.0
    """Total = (1 - distil_ratio) * lm_loss + distil_ratio * distil_loss (ignored for sft)."""
    temperature: float = 1.0
    """Softmax temperature, given to the loss (TAID included); sft and ctkd refuse one other than 1."""
    fused: bool = True
    """Chunked LM-head + loss path that never holds [N, V] logits for all response tokens."""
    chunk_size: int | str = "auto"
    """Rows per chunk in the fused path, or "auto": as many as keep one fp32 [rows, V] buffer near
    64 MiB (at most 256 rows), so memory stays flat at large vocabularies (losses.fused.chunk_rows)."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Options per loss name, written in YAML as a block named after the loss inside `loss:`
    (`loss.taid.t_start=0.3`, `loss.gjsd.beta=0.5`); the block of `name` goes to get_loss. Every
    block is checked against its loss's options, so switching `name` keeps the others valid."""

    # config_io: keys of the `loss:` section that are not fields are per-loss option blocks.
    __extra_keys_field__ = "options"

    def check(self) -> None:
        # Names and ranges first, without torch (the loss registry is torch code, ~5 s to import):
        # a typo answers at once. A loss registered by a user went through the registry, so when it
        # is imported its live names are the valid ones.
        registry = sys.modules.get("taid_vlm.losses.registry")
        known = list(registry.LOSSES) if registry else list(BUILTIN_LOSSES)
        names = ", ".join(known)
        close = difflib.get_close_matches(str(self.name), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        _check(self.name in known, "loss.name", f"unknown loss {self.name!r}; {hint}valid: {names}")
        _check(0.0 <= self.distil_ratio <= 1.0, "loss.distil_ratio", f"must be in [0, 1], got {self.distil_ratio}")
        for loss_name, opts in self.options.items():
            _check(loss_name in known, f"loss.{loss_name}",
                   f"unknown key: neither a loss.* field nor a loss name ({names})")
            _check(isinstance(opts, dict), f"loss.{loss_name}", "expected a mapping of that loss's options")
        from taid_vlm.losses import OptionError, get_loss
        from taid_vlm.losses.fused import chunk_rows

        try:
            chunk_rows(self.chunk_size, 1)  # the fused loop's own check of an int >= 1 or "auto"
        except ValueError:
            _check(False, "loss.chunk_size", f"must be an integer >= 1 or 'auto', got {self.chunk_size!r}")
        # The loss classes are the one place that knows their options and ranges: build each block's
        # loss (cheap, no weights). The chosen loss gets `temperature` too; other blocks alone.
        for loss_name in {self.name, *self.options}:
            opts = self.loss_options() if loss_name == self.name else self.options[loss_name]
            try:
                get_loss(loss_name, **opts)
            except OptionError as e:
                block = self.options.get(loss_name, {})
                where = f"loss.{loss_name}.{e.option}" if e.option in block else f"loss.{e.option}"
                raise ConfigError(f"{where}: {e}") from None

    def loss_options(self, name: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``get_loss(name)``: the loss's block plus ``temperature``."""
        name = name or self.name
        return {"temperature": self.temperature, **self.options.get(name, {})}

    @property
    def needs_teacher(self) -> bool:
        from taid_vlm.losses import LOSSES

        return LOSSES[self.name].needs_teacher


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    """Where checkpoints, logs and the final student go."""
    seed: int = 0
    """Seed for weights init, data order and dropout."""
    max_steps: int = 0
    """Optimizer steps; 0 means `epochs` passes over the data."""
    epochs: float = 1.0
    """Passes over the training data when max_steps is 0."""
    batch_size: int = 8
    """Samples per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate (parts without their own)."""
    lr_vision: float | None = None
    """Learning rate of the vision encoder; defaults to `lr`."""
    lr_projector: float | None = None
    """Learning rate of the projector; defaults to `lr`."""
    lr_lm: float | None = None
    """Learning rate of the language model; defaults to `lr`."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    scheduler: str = "cosine"
    """LR schedule after warm-up: cosine, linear or constant."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables."""
    mixed_precision: str | None = None
    """no, bf16 or fp16 autocast; null (default) takes the launcher's choice (`accelerate launch
    --mixed_precision`, its config file), which an explicit value here overrides."""
    cpu: bool = False
    """Force the CPU even when a GPU is present (`accelerate launch --cpu` does the same)."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""
    max_nonfinite: int = 5
    """Stop after this many consecutive steps with a non-finite loss (each one is skipped)."""
    overwrite: bool = False
    """Allow output_dir to hold another run's files."""

    def check(self) -> None:
        for name in ("batch_size", "grad_accum", "keep_last", "max_nonfinite"):
            _check(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        _check(self.max_steps > 0 or self.epochs > 0, "train.epochs", "set max_steps or epochs > 0")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.scheduler in ("cosine", "linear", "constant"), "train.scheduler",
               f"must be cosine, linear or constant, got {self.scheduler!r}")
        _check(self.mixed_precision in (None, "no", "bf16", "fp16"), "train.mixed_precision",
               f"must be no, bf16, fp16 or null (the launcher's choice), got {self.mixed_precision!r}")
        _check(self.warmup_steps >= 0 and self.save_every >= 0, "train.warmup_steps", "must be >= 0")
        _check(bool(self.output_dir), "train.output_dir", "must be set")


@dataclass
class EvalConfig:
    every: int = 0
    """Run the evaluation hook every N optimizer steps (0: only at the end, if data is set)."""
    max_batches: int = 0
    """Validation-loss batches per evaluation (0: all)."""
    vqa: str | None = None
    """VQA records file for generation metrics during training."""
    caption: str | None = None
    """Caption records file for generation metrics during training."""
    max_samples: int = 64
    """Samples per generation evaluation."""
    max_new_tokens: int = 16
    """Generation length for the metrics."""
    metric: str | None = None
    """What early stopping and ``keep_best`` watch: ``val_loss``, ``val_lm_loss``, ``val_distil_loss``
    (need ``data.val``), ``eval_vqa_<vqa_accuracy|exact_match|anls>`` (``eval.vqa``) or
    ``eval_caption_<Bleu_1..4|METEOR|ROUGE_L|CIDEr>`` (``eval.caption``). Losses are minimised,
    scores maximised."""
    patience: int = 0
    """Stop after this many evaluations in a row without improving ``metric`` by more than
    ``min_delta`` (0: never stop early). Needs ``every`` > 0."""
    min_delta: float = 0.0
    """Smallest change of ``metric`` that counts as an improvement."""
    keep_best: bool = False
    """The final student is the evaluation with the best ``metric``, not the last step."""

    @staticmethod
    def metrics() -> dict[str, str]:
        """Watchable metric names -> the setting that must be on for them (``eval.metric``)."""
        from taid_vlm.evaluation.caption import METRICS as CAPTION_METRICS

        names = {f"val_{k}": "data.val" for k in ("loss", "lm_loss", "distil_loss")}
        names.update({f"eval_vqa_{k}": "eval.vqa" for k in ("vqa_accuracy", "exact_match", "anls")})
        names.update({f"eval_caption_{k}": "eval.caption" for k in CAPTION_METRICS})
        return names

    def higher_is_better(self) -> bool:
        return not (self.metric or "").startswith("val_")

    def check(self, cfg: Config) -> None:
        for name in ("every", "max_batches", "max_samples", "patience"):
            _check(getattr(self, name) >= 0, f"eval.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.min_delta >= 0, "eval.min_delta", f"must be >= 0, got {self.min_delta}")
        watching = self.patience > 0 or self.keep_best
        if not watching and self.metric is None:
            return
        _check(self.metric is not None, "eval.metric",
               "early stopping (eval.patience) and eval.keep_best need the metric to watch")
        names = self.metrics()
        _check(self.metric in names, "eval.metric",
               f"{self.metric!r} unknown; valid: {', '.join(names)}")
        needs = names[self.metric]
        have = {"data.val": cfg.data.val, "eval.vqa": self.vqa, "eval.caption": self.caption}[needs]
        _check(bool(have), "eval.metric", f"{self.metric} is measured on {needs}, which is not set")
        _check(self.every > 0, "eval.every", "early stopping and keep_best evaluate every N steps: set it > 0")
        if self.metric == "val_distil_loss":
            _check(cfg.loss.needs_teacher, "eval.metric", f"loss {cfg.loss.name!r} has no distillation loss")


@dataclass
class SamplingConfig:
    mode: str = "none"
    """Student-generated responses: none, mixed (GKD) or adaptive (DistiLLM replay buffer)."""
    lam: float = 0.5
    """mixed: probability per micro-batch of training on the student's own generations."""
    temperature: float = 1.0
    """Sampling temperature of the generations (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling of the generations."""
    max_new_tokens: int = 64
    """Length limit of a generated response."""
    buffer_size: int = 1000
    """adaptive: generations kept in the replay buffer."""
    p_init: float = 0.0
    """adaptive: initial probability of a micro-batch from the replay buffer."""
    p_step: float = 0.1
    """adaptive: increase of that probability when the validation loss stops improving."""
    p_max: float = 1.0
    """adaptive: its ceiling."""
    threshold: float = 0.0
    """adaptive: relative improvement of the validation loss below which it counts as not improving."""

    def check(self, cfg: Config) -> None:
        _check(self.mode in ("none", "mixed", "adaptive"), "sampling.mode",
               f"must be none, mixed or adaptive, got {self.mode!r}")
        for name in ("lam", "top_p", "p_init", "p_step", "p_max"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"sampling.{name}", f"must be in [0, 1], got {v}")
        _check(self.temperature >= 0, "sampling.temperature", "must be >= 0")
        _check(self.max_new_tokens >= 1 and self.buffer_size >= 1, "sampling.max_new_tokens", "must be >= 1")
        if self.mode == "adaptive":
            _check(bool(cfg.data.val) and cfg.eval.every > 0, "sampling.mode",
                   "adaptive needs validation: set data.val and eval.every > 0")
        # A cache holds the teacher on the data's responses; a generated response has no cached rows.
        _check(self.mode == "none" or not cfg.teacher.cache, "sampling.mode",
               f"{self.mode} trains on the student's own generations, which a teacher cache cannot score; "
               "unset teacher.cache (the teacher then runs live)")


@dataclass
class LoggingConfig:
    every: int = 1
    """Log every N optimizer steps."""
    report_to: list[str] | None = None
    """accelerate trackers to send metrics to (tensorboard, wandb, trackio, mlflow, comet_ml, aim,
    clearml, dvclive, swanlab), besides logs/train.jsonl; [] for none. Default: tensorboard when
    installed."""
    tensorboard: bool | None = None
    """Deprecated alias: true = report_to [tensorboard], false = report_to []."""
    progress: bool = True
    """Show a progress bar."""

    def check(self) -> None:
        _check(self.every >= 1, "logging.every", f"must be >= 1, got {self.every}")
        if self.tensorboard is not None:
            _check(self.report_to is None, "logging.tensorboard",
                   "deprecated alias of logging.report_to; set only logging.report_to")
            warnings.warn("config: logging.tensorboard is deprecated; write logging.report_to: [tensorboard] "
                          "(or [] for none)", FutureWarning, stacklevel=4)
        if self.report_to is not None:
            from taid_vlm.train.trackers import check_trackers

            check_trackers(self.report_to)

    def trackers(self) -> list[str]:
        """The accelerate tracker names this run logs to (aliases and the default resolved)."""
        if self.report_to is not None:
            return list(self.report_to)
        if self.tensorboard is not None:
            return ["tensorboard"] if self.tensorboard else []
        from taid_vlm.train.trackers import installed_trackers

        return ["tensorboard"] if "tensorboard" in installed_trackers() else []


@dataclass
class Config:
    student: StudentConfig = field(default_factory=StudentConfig)
    """The model being trained."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The frozen teacher (unused for sft)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and validation data."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Which loss and how it is combined with the LM loss."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, checkpoints and devices."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Periodic evaluation."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Where and how often to log."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Training on student-generated responses (GKD / DistiLLM)."""

    def __post_init__(self) -> None:
        self.check()

    def _check_alignment(self) -> None:
        from taid_vlm.data.alignment import MODES
        from taid_vlm.losses import LOSSES

        mode = self.teacher.tokenizer_alignment
        _check(mode in MODES, "teacher.tokenizer_alignment", f"must be one of {MODES}, got {mode!r}")
        if mode == "shared" or not self.loss.needs_teacher:
            return
        _check(not LOSSES[self.loss.name].needs_labels, "teacher.tokenizer_alignment",
               f"{mode} cannot be used with loss {self.loss.name!r}, which needs target ids in one vocabulary; "
               "choose a divergence (taid, fkl, rkl, tvd, gjsd, skew_fkl, skew_rkl, akl, ctkd)")

    def check(self) -> None:
        """Validate every section; raises ConfigError naming the first bad field."""
        self.student.check("student")
        if self.student.quantization is not None:
            self.student.quantization.check("student.quantization")
        self.loss.check()
        if self.loss.needs_teacher and not self.teacher.cache:
            self.teacher.check("teacher")
        self.teacher.check_placement(self.student.dtype)
        self._check_alignment()
        self.data.check()
        self.train.check()
        self.sampling.check(self)
        self.eval.check(self)
        self.logging.check()
