"""Every ``taid-vlm`` / ``accelerate launch`` command of the README's bash blocks, in order.

Training commands get ``train.max_steps`` (and friends) lowered so the suite stays fast; nothing
else is changed, so the README cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taid_vlm.cli import main

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.max_steps=4", "train.batch_size=8", "train.save_every=2", "eval.max_samples=8",
        "eval.every=0", "eval.max_batches=1", "logging.progress=false", "logging.report_to=[]"]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    lines = [ln.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for ln in block.splitlines()]
    return [shlex.split(ln) for ln in lines if ln.startswith(("taid-vlm ", "accelerate launch "))]


def test_readme_has_the_tour():
    names = [c[1] for c in readme_commands() if c[0] == "taid-vlm"]
    assert {"make-synthetic", "train", "cache-teacher", "eval", "compare"} <= set(names)


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    for cmd in readme_commands():
        if cmd[0] == "accelerate":
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            # Trackers as configured here (a subprocess: nothing leaks into this one): the tour's DDP
            # line once exited 1 at the end only because of its tensorboard tracker.
            full = [launcher, *cmd[1:3], "--main_process_port", "29531", *cmd[3:],
                    *[o for o in FAST if not o.startswith("logging.report_to")]]
            proc = subprocess.run(full, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, (cmd, proc.stderr[-3000:])
            continue
        args = cmd[1:]
        if args[0] == "train":
            args += FAST
        assert main(args) == 0, cmd
    assert (tmp_path / "runs/tiny_taid/final/model.safetensors").is_file()
    assert (tmp_path / "runs/tiny_text_taid/final/model.safetensors").is_file()
    assert (tmp_path / "results/compare/compare.md").is_file()
