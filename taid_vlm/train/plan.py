"""``taid-vlm plan CONFIG.yaml --gpus N --gpu-memory 80GB``: per-device memory of each teacher placement.

Parameter counts come from the model configs, instantiated on the meta device (accelerate's
``init_empty_weights``): no weights are loaded. The arithmetic, per device, in bytes:

- student weights ``P_s * b_s``, gradients ``T_s * b_s``, AdamW state ``2 * T_s * b_s`` (``T_s``
  trainable parameters, ``b_s`` bytes of ``student.dtype``), divided by N when the student is sharded
  (FSDP2 / ZeRO-3: placements replicated and sharded), whole on device 0 when dispatched (one process);
- teacher weights ``P_t * b_t``: replicated whole on each device; sharded ``(P_t - W_t) * b_t / N +
  W_t * b_t`` (``W_t``: parameters outside the decoder layers / vision blocks, e.g. embeddings and LM
  head, which stay whole); dispatched ``P_t * b_t / (N - 1)`` on devices 1..N-1, the student alone
  on device 0 (``N = 1``: all on device 0). 8bit / 4bit weights: 1 / 0.5 bytes outside the LM head;
- a peft student (``student.peft``) trains ``T_s`` = its LoRA parameters (``r * (in + out)`` per
  adapted linear) plus the parts it trains in full (peft copies them, so they count twice in the
  weights); with ``load_in_4bit`` its linears but the LM head are stored in 0.5 bytes (QLoRA);
- student activations at ``train.batch_size`` x ``data.max_length`` (B x L) per layer, after
  Korthikanti et al. 2022 (flash/SDPA attention): ``34 * B * L * H * a / 2`` bytes (``a``: 2 under bf16/
  fp16 autocast or a 16-bit student, else 4) for each layer, or with gradient checkpointing the layer
  inputs ``2 * B * L * H * a / 2`` per layer plus one layer's ``34 * B * L * H * a / 2``; the vision
  tower likewise over its patch tokens (``data.max_images`` images per sample, else one) when it is
  trained. An HF VLM student trains (gradients, AdamW state) only the parts its
  ``student.train_vision/projector/lm`` switches turn on, found by its family's rule;
- teacher activations: no autograd, one layer alive: ``34 * B * L * H_t * b_t / 2``;
- fused loss: six fp32 ``[R, V]`` buffers (student and teacher logits, their softmaxes, the target,
  the gradient), ``R`` = the rows of ``loss.chunk_size`` (``chunk_rows``; fused) or ``B * L`` (unfused).

A placement fits when its busiest device needs at most 90% of ``--gpu-memory`` (the rest: CUDA
context, NCCL buffers, allocator fragmentation).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taid_vlm.config import Config, ConfigError, ModelConfig, StudentConfig
from taid_vlm.losses.fused import chunk_rows

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5}
HEADROOM = 0.9
ACT_PER_LAYER = 34  # bytes per (token x hidden) of one transformer layer in 16-bit (Korthikanti et al.)
LOSS_BUFFERS = 6
_SHIPPED = Path(__file__).parent / "plan_configs"


@dataclass
class Shape:
    """What the plan needs of a model: parameter counts and the sizes activations scale with."""

    params: int
    whole: int  # parameters outside the no-split blocks (embeddings, head, norms)
    trainable: int
    head: int  # LM-head parameters (vocab x hidden)
    hidden: int
    layers: int
    vocab: int
    vision_params: int = 0
    vision_hidden: int = 0
    adapter: int = 0  # student.peft: LoRA parameters and modules_to_save copies, added to `params`
    quantized: int = 0  # student.peft.load_in_4bit: parameters stored in 4 bits
    vision_layers: int = 0
    vision_tokens: int = 0


def hf_config_dict(path_or_name: str) -> dict[str, Any]:
    """``config.json`` of a local model dir or the HF cache, else the copy shipped for the recipes,
    else the hub. The shipped copy comes before the hub: without a network the hub client retries
    for ~45 s per model before it gives up (HF_HUB_OFFLINE unset), and the copies are those models'."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path_or_name, local_files_only=True).to_dict()
    except Exception:  # noqa: BLE001 - not local, not cached
        pass
    shipped = _SHIPPED / (path_or_name.replace("/", "--") + ".json")
    if shipped.is_file():
        return json.loads(shipped.read_text())
    try:
        return AutoConfig.from_pretrained(path_or_name).to_dict()
    except Exception:  # noqa: BLE001 - offline, or no such model
        raise ConfigError(f"{path_or_name!r}: no config.json found (local dir, HF cache, "
                          f"{_SHIPPED.name}/ or the hub); download the model's config.json to plan with it") from None


def _meta(build: Any) -> Any:
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    with init_empty_weights(), no_init_weights():  # counting needs no initial values (seconds at 72B)
        model = build()
    if hasattr(model, "tie_weights"):
        # init_empty_weights re-creates each registered parameter, which unties tied embeddings;
        # tying again outside it makes them one object, counted once.
        model.tie_weights()
    return model


def _hf_config(d: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    d = copy.deepcopy(d)
    return AutoConfig.for_model(d.pop("model_type"), **{k: v for k, v in d.items() if k != "architectures"})


def _count(model: Any, no_split: list[str]) -> tuple[int, int]:
    blocks = [m for m in model.modules() if type(m).__name__ in set(no_split)]
    inside = {id(p) for b in blocks for p in b.parameters()}
    params = {id(p): p for p in model.parameters()}  # tied weights once
    return sum(p.numel() for p in params.values()), sum(p.numel() for i, p in params.items() if i not in inside)


def _text_cfg(spec: dict[str, Any], tokenizer: str | None) -> dict[str, Any]:
    d = copy.deepcopy(spec["config"]) if spec.get("config") else hf_config_dict(spec["path"])
    has_vocab = "vocab_size" in d or "vocab_size" in (d.get("text_config") or {})  # a VLM keeps it in text_config
    if not has_vocab:  # a config built against its tokenizer (models.factory does the same)
        from transformers import AutoTokenizer

        if not tokenizer:
            raise ConfigError("student.tokenizer: the text config has no vocab_size; the plan needs the tokenizer")
        from taid_vlm.path_hints import missing

        if not Path(tokenizer).exists() and (tokenizer.startswith((".", "/")) or tokenizer.count("/") > 1):
            raise ConfigError(f"student.tokenizer: {missing(tokenizer)}; the plan needs it for the vocabulary size")
        try:
            d["vocab_size"] = len(AutoTokenizer.from_pretrained(tokenizer))
        except (OSError, ValueError) as err:
            raise ConfigError(f"student.tokenizer: cannot load {tokenizer!r} ({str(err)[:200]}); the plan "
                              f"needs the tokenizer for the vocabulary size") from None
    return d


def _lm_shape(d: dict[str, Any]) -> tuple[Any, int, int, int]:
    from transformers import AutoModelForCausalLM

    lm = _meta(lambda: AutoModelForCausalLM.from_config(_hf_config(d)))
    text = getattr(lm.config, "text_config", None) or lm.config
    return lm, text.hidden_size, text.num_hidden_layers, lm.get_output_embeddings().weight.shape[0]


def model_shape(spec: ModelConfig) -> Shape:
    """Parameter counts of ``spec`` (a student or teacher section) from its config, on the meta device."""
    # A composed student saved in a native layout (LLaVA for an hf tower + mlp projector) is counted
    # as the HF VLM it now is; one saved with its own code (auto_map) holds the whole spec.
    native = spec.family == "composed" and spec.path and "vision" not in hf_config_dict(spec.path)
    if spec.family == "composed" and not native:
        return _composed_shape(spec)
    d = _text_cfg({"path": spec.path, "config": spec.config}, spec.tokenizer)
    if "vision_config" in d:  # an HF VLM (qwen2_vl, llava, ...)
        return _hf_vlm_shape(spec, d)
    model, hidden, layers, vocab = _lm_shape(d)
    params, whole = _count(model, list(getattr(model, "_no_split_modules", None) or []))
    trainable = params if isinstance(spec, StudentConfig) else 0
    shape = Shape(params, whole, trainable, vocab * hidden, hidden, layers, vocab)
    return _with_peft(shape, spec, model, 0)


def _with_peft(shape: Shape, spec: ModelConfig, lm: Any, other_trained: int) -> Shape:
    """A peft student: trains its adapters (plus ``other_trained`` parameters of parts trained in
    full, which peft copies), its LM base frozen and, with load_in_4bit, stored in 4 bits."""
    peft = getattr(spec, "peft", None)
    if peft is None:
        return shape
    from taid_vlm.models.peft_student import adapter_counts

    n = adapter_counts(lm, peft)
    extra = n["adapter"] + n["saved"] + other_trained
    return dataclasses.replace(shape, trainable=extra, adapter=extra, quantized=n["quantized"])


def _hf_vlm_shape(spec: ModelConfig, d: dict[str, Any]) -> Shape:
    """An HF VLM on the meta device; as a student, only the parts its switches train count as
    trainable (the family's ``rule_parts``, as training freezes them), and the vision tower's size
    is kept for its activations. Vision tokens: one ``image_size`` tile per image (a lower bound for
    tiling processors such as InternVL's)."""
    from transformers import AutoModelForImageTextToText

    from taid_vlm.adapters.hf_vlm import rule_parts
    from taid_vlm.adapters.registry import family_for_model_type
    from taid_vlm.adapters.vlm_families import family_rule

    model = _meta(lambda: AutoModelForImageTextToText.from_config(_hf_config(d)))
    text = getattr(model.config, "text_config", None) or model.config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    vocab = model.get_output_embeddings().weight.shape[0]
    params, whole = _count(model, list(getattr(model, "_no_split_modules", None) or []))
    if not isinstance(spec, StudentConfig):
        return Shape(params, whole, 0, vocab * hidden, hidden, layers, vocab)
    family = spec.family if spec.family != "auto" else family_for_model_type(d["model_type"])
    parts = rule_parts(model, family_rule(family))
    counts = {name: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values()) for name, m in parts.items()}
    trainable = sum(n for name, n in counts.items() if getattr(spec, f"train_{name}"))
    v = model.config.vision_config
    side, patch = (getattr(v, k, None) for k in ("image_size", "patch_size"))
    side, patch = (x[0] if isinstance(x, (list, tuple)) else x for x in (side, patch))
    tokens = (side // patch) ** 2 if side and patch else 0
    return Shape(params, whole, trainable, vocab * hidden, hidden, layers, vocab, vision_params=counts["vision"],
                 vision_hidden=v.hidden_size, vision_layers=getattr(v, "num_hidden_layers", None) or v.depth,
                 vision_tokens=tokens)


def _composed_shape(spec: ModelConfig) -> Shape:
    from taid_vlm.models.configuration import DEFAULT_VISION
    from taid_vlm.models.projector import build_projector
    from taid_vlm.models.vision_hf import HFVisionTower

    c = spec.config or {}
    if spec.path:  # a saved composed student: its config.json holds the whole spec
        saved = hf_config_dict(spec.path)
        c = {"vision": saved["vision"], "projector": saved.get("projector"), "text": {"config": saved["text_config"]}}
    vision = {**DEFAULT_VISION, **copy.deepcopy(c.get("vision") or {})}
    if vision.get("from_model"):  # the tower of a saved composed model: its config.json has the spec
        vision = {**DEFAULT_VISION, **hf_config_dict(vision["from_model"])["vision"]}
    if vision["backend"] != "hf":
        raise ConfigError(f"student.config.vision.backend: the plan counts hf towers only, not {vision['backend']!r}")
    if not vision.get("config"):
        vision["config"] = hf_config_dict(vision["name"])
    vcfg = vision["config"].get("vision_config", vision["config"])
    vision.setdefault("image_size", vcfg["image_size"])
    if "image_size" not in (c.get("vision") or {}):
        vision["image_size"] = vcfg["image_size"]
    tower = _meta(lambda: HFVisionTower(vision))
    lm, hidden, layers, vocab = _lm_shape(_text_cfg(c.get("text") or {}, spec.tokenizer))
    proj = _meta(lambda: build_projector(c.get("projector") or {}, tower.out_dim, hidden))
    no_split = list(getattr(lm, "_no_split_modules", None) or [])
    for m in tower.modules():
        no_split += list(getattr(m, "_no_split_modules", None) or [])
    p_lm, w_lm = _count(lm, no_split)
    p_v, w_v = _count(tower, no_split)
    p_p = sum(p.numel() for p in proj.parameters())
    trainable = 0
    if isinstance(spec, StudentConfig):
        trainable = p_v * spec.train_vision + p_p * spec.train_projector + p_lm * spec.train_lm
    shape = Shape(p_lm + p_v + p_p, w_lm + w_v + p_p, trainable, vocab * hidden, hidden, layers, vocab,
                  vision_params=p_v, vision_hidden=vcfg["hidden_size"], vision_layers=len(_vision_layers(tower)),
                  vision_tokens=tower.num_tokens)
    return _with_peft(shape, spec, lm, p_v * getattr(spec, "train_vision", 0) + p_p * getattr(spec, "train_projector", 0))


def _vision_layers(tower: Any) -> list:
    inner = getattr(tower.model, "vision_model", tower.model)
    return list(getattr(getattr(inner, "encoder", None), "layers", []))


def _acts(tokens: int, hidden: int, layers: int, a: int, checkpointing: bool) -> float:
    one = ACT_PER_LAYER * tokens * hidden * a / 2
    return layers * 2 * tokens * hidden * a / 2 + one if checkpointing else layers * one


def placement_memory(cfg: Config, teacher: Shape, student: Shape, gpus: int, placement: str) -> dict[str, float]:
    """Bytes per component on the busiest device for ``placement`` (see the module docstring)."""
    bs, bt = BYTES[cfg.student.dtype], BYTES[cfg.teacher.dtype]
    n_s = gpus if placement in ("replicated", "sharded") else 1
    q = QUANT_BYTES.get(cfg.teacher.quantization, bt)
    t_bytes = (teacher.params - teacher.head) * q + teacher.head * bt
    if placement == "replicated":
        t_dev = t_bytes
    elif placement == "sharded":
        t_dev = (teacher.params - teacher.whole) * bt / gpus + teacher.whole * bt
    else:
        t_dev = t_bytes / max(gpus - 1, 1)
    a = 2 if (cfg.train.mixed_precision in ("bf16", "fp16") or bs == 2) else 4
    tokens = cfg.train.batch_size * cfg.data.max_length
    ckpt = cfg.student.gradient_checkpointing
    act = _acts(tokens, student.hidden, student.layers, a, ckpt)
    if student.vision_params and getattr(cfg.student, "train_vision", False):
        images = cfg.train.batch_size * (cfg.data.max_images or 1)  # up to data.max_images per sample
        act += _acts(images * student.vision_tokens, student.vision_hidden, student.vision_layers, a, ckpt)
    rows = chunk_rows(cfg.loss.chunk_size, student.vocab) if cfg.loss.fused else tokens
    out = {
        "teacher_weights": t_dev,
        # A 4-bit base (QLoRA) stores its linears in half a byte; adapters are added in student.dtype.
        "student_weights": ((student.params - student.quantized + student.adapter) * bs
                            + student.quantized * QUANT_BYTES["4bit"]) / n_s,
        "gradients": student.trainable * bs / n_s,
        "optimizer": 2 * student.trainable * bs / n_s,
        "activations": act,
        "teacher_activations": ACT_PER_LAYER * tokens * teacher.hidden * bt / 2,
        "fused_loss": LOSS_BUFFERS * rows * student.vocab * 4,
    }
    if placement == "dispatched" and gpus > 1:  # device 0: the student; devices 1..: the teacher
        dev0 = sum(v for k, v in out.items() if not k.startswith("teacher"))
        out["total"] = max(dev0, out["teacher_weights"] + out["teacher_activations"])
    else:
        out["total"] = sum(out.values())
    return out


def parse_size(text: str) -> float:
    """``80GB`` / ``80GiB`` / ``80`` (GiB) -> bytes; GB is read as GiB, as GPU makers' figures are."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(GiB|GB|G|MiB|MB|M)?\s*", text, flags=re.I)
    if not m:
        raise ConfigError(f"--gpu-memory: expected a size like 80GB, got {text!r}")
    unit = (m.group(2) or "G").upper()
    return float(m.group(1)) * (2**20 if unit.startswith("M") else 2**30)


def make_plan(cfg: Config, gpus: int, gpu_memory: float) -> dict[str, Any]:
    """Per-placement memory on the busiest device (bytes) and whether it fits ``gpu_memory``."""
    if gpus < 1:
        raise ConfigError("--gpus: must be >= 1")
    student = model_shape(cfg.student)
    teacher = model_shape(cfg.teacher) if cfg.loss.needs_teacher and not cfg.teacher.cache else None
    rows = {}
    for placement in ("replicated", "sharded", "dispatched"):
        mem = placement_memory(cfg, teacher or Shape(0, 0, 0, 0, 0, 0, 0), student, gpus, placement)
        rows[placement] = {**mem, "fits": mem["total"] <= HEADROOM * gpu_memory}
    return {"gpus": gpus, "gpu_memory": gpu_memory, "chosen": cfg.teacher.placement, "placements": rows,
            "student_params": student.params, "student_trainable": student.trainable,
            "teacher_params": teacher.params if teacher else 0}


def count_str(n: int) -> str:
    """A parameter count in the unit that shows it: ``1.966B``, ``2.35M``, ``61.4K``."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.{3 if unit == 'B' else 2 if unit == 'M' else 1}f}{unit}"
    return str(n)


def format_plan(plan: dict[str, Any]) -> str:
    gib = 2**30
    cols = ["teacher_weights", "student_weights", "gradients", "optimizer", "activations", "teacher_activations",
            "fused_loss", "total"]
    labels = ["teacher", "student", "grads", "AdamW", "acts", "teacher acts", "fused loss", "total"]
    head = f"{'placement':<11}" + "".join(f"{c:>13}" for c in labels) + "   fits"
    lines = [f"student {count_str(plan['student_params'])} params ({count_str(plan['student_trainable'])} trained), "
             f"teacher {count_str(plan['teacher_params']) if plan['teacher_params'] else 'none'}; {plan['gpus']} GPU(s) x "
             f"{plan['gpu_memory'] / gib:.0f} GiB (a placement fits under {HEADROOM:.0%} of it); GiB per device:",
             head]
    for name, row in plan["placements"].items():
        mark = " <- recipe" if name == plan["chosen"] else ""
        lines.append(f"{name:<11}" + "".join(f"{row[c] / gib:>13.2f}" for c in cols)
                     + f"   {'yes' if row['fits'] else 'NO'}{mark}")
    fitting = [n for n, r in plan["placements"].items() if r["fits"]]
    chosen_fits = plan["placements"][plan["chosen"]]["fits"]
    lines.append(f"teacher.placement {plan['chosen']}: {'fits' if chosen_fits else 'does NOT fit'}; "
                 f"placements that fit: {', '.join(fitting) or 'none'}")
    return "\n".join(lines)


def plan_main(argv: list[str]) -> int:
    """``taid-vlm plan CONFIG.yaml --gpus N --gpu-memory 80GB [key.sub=value ...] [--json FILE]``;
    exit status 1 when the recipe's placement does not fit."""
    from taid_vlm.cli import add_config_args, parse_config_args

    parser = argparse.ArgumentParser(prog="taid-vlm plan", description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-memory", default="80GB")
    parser.add_argument("--json", default=None, help="also write the plan as JSON (bytes)")
    args = parse_config_args(parser, argv)
    from taid_vlm.config_io import load_config

    try:
        cfg = load_config(args.config, args.overrides)
        plan = make_plan(cfg, args.gpus, parse_size(args.gpu_memory))
    except ConfigError as err:
        print(f"taid-vlm plan: config error: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2))
    return 0 if plan["placements"][plan["chosen"]]["fits"] else 1
