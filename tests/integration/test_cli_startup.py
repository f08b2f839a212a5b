"""``taid-vlm`` answers help and config errors without importing torch (issue 36, item 8), and
``import taid_vlm`` still registers the composed model once transformers' Auto classes load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fresh(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet); returns its stdout."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_help_and_a_config_error_do_not_import_torch():
    out = _fresh(
        "import sys\n"
        "from taid_vlm.cli import main\n"
        "assert main(['--help']) == 0\n"
        "assert main(['train', 'configs/tiny_vlm_taid.yaml', 'train.lrr=1']) == 2\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'taid_vlm.models') if m in sys.modules))\n"
    )
    assert "heavy: []" in out


def test_import_taid_vlm_still_registers_with_the_auto_classes():
    out = _fresh(
        "import sys, taid_vlm\n"
        "print('early:', 'taid_vlm.models' in sys.modules)\n"
        "from transformers import AutoConfig, AutoModelForImageTextToText\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING as M\n"
        "from taid_vlm.models import TaidVLMConfig, TaidVLMForConditionalGeneration\n"
        "print('registered:', M[TaidVLMConfig] is TaidVLMForConditionalGeneration,\n"
        "      type(AutoConfig.for_model('taid_vlm')).__name__)\n"
    )
    assert "early: False" in out
    assert "registered: True TaidVLMConfig" in out
