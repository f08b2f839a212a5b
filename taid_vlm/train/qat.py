"""A run's quantization-aware student (``student.quantization``): fake-quantized after it is built,
before the optimizer (``prepare_run_student``), saved as the real quantized model at the end
(``export_quantized``). The torchao pieces are in ``taid_vlm.models.qat``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taid_vlm.adapters import Adapter
from taid_vlm.config import Config, ConfigError, StudentQuantizationConfig
from taid_vlm.models.qat import prepare_student, quantize_converted

REPORT_FILE = "quantization.json"


def prepare_run_student(cfg: Config, student: Adapter, engine: str) -> list[str]:
    """Fake-quantize the student's target linears (nothing without ``student.quantization``);
    returns their names. Sharded engines are refused: torchao's fake quantizers on FSDP2 / ZeRO-3
    shards are not checked here (DDP keeps whole float parameters, so it is)."""
    q = cfg.student.quantization
    if q is None:
        return []
    import importlib.util

    from taid_vlm.train.checkpoint import SHARDED_ENGINES

    if importlib.util.find_spec("torchao") is None:
        raise ConfigError("student.quantization: needs torchao (pip install 'taid-vlm[quant]'), which is not "
                          "installed; or remove student.quantization")

    if engine in SHARDED_ENGINES:
        raise ConfigError(f"student.quantization: not supported with the {engine} engine (sharded parameters); "
                          "use DDP (accelerate launch --multi_gpu) or a single process")
    return prepare_student(student.model, student.parts(), q)


def dir_bytes(path: str | Path, pattern: str = "*.safetensors") -> int:
    """Bytes of the weight files (``pattern``) under ``path``."""
    return sum(f.stat().st_size for f in Path(path).glob(pattern))


def export_quantized(final: str | Path, q: StudentQuantizationConfig, trust_remote_code: bool = False) -> dict[str, Any]:
    """Replace the float student saved in ``final`` (by its adapter's ``save``, in its family's layout)
    by the real quantized model, keeping the tokenizer / processor files, and write
    ``final/quantization.json``: scheme, number of quantized linears, float and quantized weight
    bytes. Returns that report. Reloading the export (rather than converting the training model in
    place) quantizes exactly what the family's own export wrote, whatever its layout (a composed
    student saved as LLaVA renames every module)."""
    from taid_vlm.adapters import build_adapter

    final = Path(final)
    float_bytes = dir_bytes(final)
    adapter = build_adapter("auto", path=str(final), trust_remote_code=trust_remote_code)
    names = quantize_converted(adapter.model, adapter.parts(), q)
    for old in final.glob("model*.safetensors*"):  # a sharded float export leaves no stale shard
        old.unlink()
    adapter.model.save_pretrained(str(final), safe_serialization=True)
    report = {"scheme": q.scheme, "group_size": q.group_size if q.scheme == "int8_dynamic_int4_weight" else None,
              "targets": list(q.targets), "quantized_linears": len(names), "float_weight_bytes": float_bytes,
              "quantized_weight_bytes": dir_bytes(final),
              "format": "safetensors, torchao tensors flattened (transformers TorchAoConfig)"}
    (final / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report
