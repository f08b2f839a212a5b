"""The demo's teachers: trained once by ``eval/build_demo_teachers.py`` and shipped in the package.

A teacher that knows more than the students' labels has to see more images and train for longer
than the students; on a 2-core CPU that alone would take most of ``make demo``'s 15 minutes. So the
teachers (``TEACHERS`` in ``presets.py``: S < M < L in size and training) are built once, on the
synthetic set's first ``TEACHER_DATA["n_train"]`` training images, and saved under
``taid_vlm/demo/teachers/<name>/`` with their tokenizer and a ``build.json`` (settings, command,
date, machine, time, scores). The demo and the studies generate the same set (same seed and
generator: a smaller training set is a prefix of a larger one) and train the students on its first
``n_train`` images only, so every student sees a quarter or less of the teacher's images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import TEACHER_DATA, TEACHERS

SHIPPED = Path(__file__).resolve().parent / "teachers"
BUILD_FILE = "build.json"


def teacher_dir(name: str, root: str | Path | None = None) -> Path:
    """The saved teacher ``name`` (``S``, ``M`` or ``L``), checked against the settings it must
    have been built with; ``root`` defaults to the package's ``teachers/`` folder.

    Raises:
        FileNotFoundError: the teacher was never built (names the build command).
        ValueError: it was built from other settings than ``presets.TEACHERS`` / ``TEACHER_DATA``
            now say (rebuild it).
    """
    if name not in TEACHERS:
        raise ValueError(f"demo teacher {name!r} unknown; valid: {', '.join(TEACHERS)}")
    path = Path(root or SHIPPED) / name
    build = path / BUILD_FILE
    if not build.is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"demo teacher {name} is not built at {path}; run "
                                f"`python eval/build_demo_teachers.py --teachers {name}`")
    info = json.loads(build.read_text())
    want = build_spec(name)
    if info.get("spec") != want:
        raise ValueError(f"demo teacher {name} at {path} was built with other settings than "
                         f"taid_vlm/demo/presets.py now gives; rebuild it with "
                         f"`python eval/build_demo_teachers.py --teachers {name}`")
    return path


def build_spec(name: str) -> dict[str, Any]:
    """What decides teacher ``name``'s weights: its model, training settings and data (JSON-clean)."""
    return json.loads(json.dumps({"data": TEACHER_DATA, **TEACHERS[name]}))


def build_info(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """``build.json`` of a built teacher (spec, command, date, machine, train seconds, scores)."""
    return json.loads((teacher_dir(name, root) / BUILD_FILE).read_text())
