"""The README's "TAID in your own training loop" snippets, run as written on tiny models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### TAID in your own training loop"


def snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(HEADING)
    end = text.index("\n### ", start + len(HEADING))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


@pytest.fixture()
def namespace(tmp_path, monkeypatch, tiny_tokenizer):
    """What the snippets take from the reader: tiny HF models, tokenizer, batches, datasets."""
    from datasets import Dataset

    from taid_vlm.adapters import build_adapter
    from taid_vlm.adapters.text import pad_right
    from taid_vlm.data.types import Sample
    from taid_vlm.models.tiny import tiny_text_config
    from tests.integration.integrations_env import QA, TEACHER

    monkeypatch.chdir(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    student = build_adapter("text", config=tiny_text_config(), tokenizer=str(tmp_path / "tok"))
    teacher = build_adapter("text", config=TEACHER, tokenizer=str(tmp_path / "tok"))
    rows = [student.encode(Sample(id=f"s{i}", messages=[{"role": "user", "content": q},
                                                          {"role": "assistant", "content": a}]), 64)
            for i, (q, a) in enumerate(QA * 2)]
    pad = tiny_tokenizer.pad_token_id
    batches = [pad_right(rows[i:i + 2], pad) for i in range(0, 8, 2)]
    return {"student": student.model, "teacher": teacher.model, "tokenizer": tiny_tokenizer,
            "steps": [batches[:2], batches[2:]], "train_dataset": rows,
            "collator": lambda xs: pad_right(xs, pad),
            "prompts": Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q, _ in QA])}


def test_readme_has_the_three_loops():
    blocks = snippets()
    assert len(blocks) == 3
    assert "LossStepper" in blocks[0] and "DistillTrainer" in blocks[1] and "TRLDistillTrainer" in blocks[2]


def test_plain_loop_snippet(namespace):
    exec(snippets()[0], namespace)
    logs, loss_fn = namespace["logs"], namespace["loss_fn"]
    assert loss_fn.schedule.num_updates == 2 and logs["taid_t"] > 0.4  # second update moved t
    assert logs["loss"] > 0 and logs["tokens"] == sum(
        namespace["response_token_count"](b) for b in namespace["steps"][1])


def test_hf_trainer_snippet(namespace):
    exec(snippets()[1], namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 4 and trainer.loss_fn.schedule.num_updates == 4
    ts = [r["taid_t"] for r in trainer.loss_callback.history]
    assert len(ts) == 4 and ts[0] == 0.4 and ts[-1] > ts[0]


def test_trl_snippet(namespace):
    pytest.importorskip("trl")
    # TRL defaults to bf16, which TrainingArguments refuses on a machine without a GPU unless told
    # to use the CPU: the one change made to the snippet (as test_readme.py lowers max_steps).
    code = snippets()[2]
    if not torch.cuda.is_available():
        code = code.replace("report_to=[])", "report_to=[], use_cpu=True)")
    exec(code, namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2 and trainer.loss_fn.schedule.num_updates == 2
    assert [r["step"] for r in trainer.loss_callback.history] == [1, 2]
