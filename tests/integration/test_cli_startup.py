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
        "assert main(['train', 'configs/tiny_vlm_taid.yaml', 'loss.name=taidd']) == 2\n"
        "assert main(['train', 'configs/tiny_vlm_taid.yaml', 'loss.gjsdd.beta=0.3']) == 2\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'taid_vlm.models') if m in sys.modules))\n"
    )
    assert "heavy: []" in out


def test_the_torch_free_loss_names_are_the_registry_s():
    from taid_vlm.config import BUILTIN_LOSSES
    from taid_vlm.losses import LOSS_NAMES

    assert BUILTIN_LOSSES == LOSS_NAMES


def test_a_loss_registered_by_the_user_is_a_valid_name():
    out = _fresh(
        "from taid_vlm.losses import register_loss\n"
        "from taid_vlm.losses.modules import ForwardKLLoss\n"
        "from taid_vlm.config import LossConfig\n"
        "@register_loss\n"
        "class MyKL(ForwardKLLoss):\n"
        "    name = 'my_kl'\n"
        "LossConfig(name='my_kl').check()\n"
        "print('ok: my_kl')\n"
    )
    assert "ok: my_kl" in out


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
