"""A student trained by ``taid-vlm train`` leaves as an ordinary transformers model: a fresh
interpreter that never imports taid_vlm loads it with the Auto classes (trust_remote_code off),
generates from ``apply_chat_template`` inputs and runs it in ``pipeline("image-text-to-text")``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from taid_vlm.cli import main

from .conftest import write_config

OUTSIDE = """
import sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
path = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(path).eval()
proc = AutoProcessor.from_pretrained(path)
image = Image.open(sys.argv[2])
msgs = [{"role": "user", "content": [{"type": "image", "image": image},
                                     {"type": "text", "text": "What colour is the circle?"}]}]
inputs = proc.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=True,
                                  return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
new = out[0, inputs["input_ids"].shape[1]:]
pipe = pipeline("image-text-to-text", model=path)
reply = pipe(text=msgs, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]["generated_text"][-1]
print(type(model).__name__, type(proc).__name__, len(new), proc.decode(new, skip_special_tokens=True) == reply["content"],
      "taid_vlm" in sys.modules)
"""


def test_trained_student_loads_generates_and_pipelines_without_taid_vlm(tmp_path, run_env):
    cfg = write_config(tmp_path / "c.yaml", run_env, loss="taid")
    assert main(["train", str(cfg)]) == 0
    final = tmp_path / "out" / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    image = next(Path(run_env["root"]).rglob("*.png"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # taid_vlm not importable from the worktree
    out = subprocess.run([sys.executable, "-c", OUTSIDE, str(final), str(image)], capture_output=True, text=True,
                         cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["LlavaForConditionalGeneration", "LlavaProcessor", "4", "True", "False"]
