"""Fixtures for runs through the CLI: a tiny synthetic set, its tokenizer, a saved tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from taid_vlm.demo.presets import _composed

STUDENT = _composed(32, 1, 32, 1, 32, 8, "mlp")
TEACHER = _composed(48, 1, 64, 1, 32, 8, "mlp")


@pytest.fixture(scope="session")
def run_env(tmp_path_factory) -> dict:
    """Synthetic data (train/val), tokenizer dir and a saved random-weight composed teacher."""
    from taid_vlm.adapters import build_adapter
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("run_env")
    paths = {k: str(v) for k, v in generate_synthetic(root / "data", seed=0, n_train=24, n_val=8,
                                                          image_size=32).items()}
    tok = train_bpe_tokenizer(synthetic_corpus(root / "data"), vocab_size=320)
    tok.save_pretrained(root / "tokenizer")
    teacher = build_adapter("composed", config=TEACHER, tokenizer=str(root / "tokenizer"))
    teacher.save(str(root / "teacher"))
    paths.update(tokenizer=str(root / "tokenizer"), teacher=str(root / "teacher"), root=str(root))
    return paths


def write_config(path: Path, env: dict, *, loss: str = "taid", **train) -> Path:
    """A tiny distillation recipe as YAML; ``train`` entries override the train section."""
    cfg = {
        "student": {"family": "composed", "config": STUDENT, "tokenizer": env["tokenizer"]},
        "teacher": {"family": "composed", "path": env["teacher"]},
        "data": {"train": env["train"], "val": env["train"], "max_length": 128},
        "loss": {"name": loss},
        "train": {"output_dir": str(path.parent / "out"), "max_steps": 3, "batch_size": 4, "lr": 1e-3,
                  "cpu": True, **train},
        "eval": {"max_batches": 1},
        "logging": {"report_to": [], "progress": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


@pytest.fixture(scope="session")
def demo_tiny(tmp_path_factory) -> Path:
    """One run of ``taid-vlm demo --preset tiny``; the eval/ quick suites reuse its data and teacher."""
    from taid_vlm.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo_tiny"
    assert main(["demo", "--preset", "tiny", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model runs: models this small gain nothing from a second
    thread, and on a shared CPU its spin-waits made each run several times slower (measured: 9.4 s ->
    3.3 s per family under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
