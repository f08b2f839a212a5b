"""Save a composed student that has no transformers class with its modelling code beside the weights.

timm / open_clip towers and the ``pixel_shuffle_mlp`` projector exist in no transformers model, so
such a student is saved as the taid_vlm classes plus copies of their source files, wired up with
``auto_map``: ``AutoModelForImageTextToText.from_pretrained(dir, trust_remote_code=True)`` and
``AutoProcessor.from_pretrained(dir, trust_remote_code=True)`` then load it without the package
(the tower's own library, timm or open_clip, must be installed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# The files the composed model needs, by module name; plus the tower backend's own file.
_FILES = ("configuration", "modeling", "processing", "projector", "vision")
_TOWER = {"hf": ("vision_hf", "HFVisionTower"), "timm": ("vision_timm", "TimmVisionTower"),
          "open_clip": ("vision_open_clip", "OpenClipVisionTower")}
AUTO_MAP = {"AutoConfig": "configuration.TaidVLMConfig",
            "AutoModelForImageTextToText": "modeling.TaidVLMForConditionalGeneration"}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing.TaidVLMProcessor"}


def _source(name: str) -> str:
    text = (Path(__file__).parent / f"{name}.py").read_text()
    # transformers copies a remote module's files by following its relative imports.
    return re.sub(r"from taid_vlm\.models\.(\w+) import", r"from .\1 import", text)


def _add_auto_map(path: Path, auto_map: dict[str, str]) -> None:
    data = json.loads(path.read_text())
    data["auto_map"] = auto_map
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_with_code(model: Any, processor: Any, output_dir: str) -> None:
    """``save_pretrained`` the model and processor, then the code files and ``auto_map`` entries."""
    out = Path(output_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    tower_module, tower_class = _TOWER[model.config.vision["backend"]]
    for name in (*_FILES, tower_module):
        text = _source(name)
        if re.search(r"^\s*(from|import)\s+taid_vlm\b", text, flags=re.M):
            raise RuntimeError(f"{name}.py still imports taid_vlm; it cannot be saved as remote code")
        if name == "modeling":
            # vision.py imports the tower lazily by name; this line makes transformers copy its file.
            text += f"\n\nfrom .{tower_module} import {tower_class}  # noqa: E402,F401\n"
        (out / f"{name}.py").write_text(text)
    _add_auto_map(out / "config.json", AUTO_MAP)
    for fname in ("processor_config.json", "preprocessor_config.json"):
        if (out / fname).is_file():
            _add_auto_map(out / fname, PROCESSOR_AUTO_MAP)
