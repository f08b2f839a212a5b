"""Shared fixtures. No test touches the network: the hub is off and models are built from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Words of the synthetic VQA/caption set plus generic chat text, so the tiny tokenizer has merges
# for everything the tests say.
_CORPUS = [
    "What colour is the circle? The circle is red. How many shapes are there? There are 3 shapes.",
    "Is there a blue square? Yes. No. Where is the triangle? The triangle is on the left.",
    "A green triangle at the top right and a yellow circle at the bottom left.",
    "Describe the image. Answer the question using a single word or phrase.",
    "user assistant system You are a helpful assistant. Hello! Hi, how can I help you today?",
    "purple orange white black grey small large top bottom left right middle centre center",
    "zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 .,;:!?'\"()",
]


def load_eval_script(name: str):
    """``eval/NAME.py`` imported as a module (the eval scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "eval" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"eval_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (ChatML template, ``<image>`` token) trained here in ~1 s."""
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(_CORPUS * 20, vocab_size=512)



def _environ_restored():
    before = dict(os.environ)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)


# Put os.environ back after every test: transformers' TrainingArguments (the Trainer and TRL
# integration tests) exports ACCELERATE_MIXED_PRECISION, which later runs in the same process, and the
# subprocesses they start, read as a launcher's bf16 setting.
_restore_environ = pytest.fixture(autouse=True, name="_restore_environ")(_environ_restored)


@pytest.fixture(scope="module", autouse=True)
def _fresh_process_state_per_module():
    """Each module starts as a fresh process would: module-scoped fixtures (which run before a test's
    own) get os.environ back, and accelerate's process-wide AcceleratorState, which a Trainer built
    in bf16 leaves behind and a later ``Accelerator(mixed_precision=None)`` silently reuses, is reset."""
    yield from _environ_restored()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
