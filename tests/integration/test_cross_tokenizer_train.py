"""Distillation across tokenizers through ``main(["train", ...])``: a text teacher with its own
tokenizer into a text student with another, on the teacher's own (greedy) outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from taid_vlm.cli import main

from .conftest import read_jsonl

N = 12


@pytest.fixture(scope="module")
def xtok_env(tmp_path_factory) -> dict:
    """Two tokenizers trained on the same text (different sizes and pre-tokenizers), a saved
    teacher with a sharpened head, and the teacher's greedy answers as training data."""
    from taid_vlm.adapters import build_adapter
    from taid_vlm.data.collate import PairCollator
    from taid_vlm.data.readers import load_samples
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer
    from taid_vlm.models.tiny import tiny_text_config

    root = tmp_path_factory.mktemp("xtok")
    paths = generate_synthetic(root / "data", seed=0, n_train=N, n_val=2, image_size=32)
    corpus = synthetic_corpus(root / "data")
    train_bpe_tokenizer(corpus, vocab_size=360).save_pretrained(root / "tok_s")
    train_bpe_tokenizer(corpus, vocab_size=500, pre_tokenizer="split_digits_punct").save_pretrained(root / "tok_t")
    torch.manual_seed(0)
    teacher = build_adapter("text", config=tiny_text_config(), tokenizer=str(root / "tok_t"))
    samples = load_samples(str(paths["train_text"]), format="auto")[:N]
    # A briefly trained teacher (SFT on the set), so that its greedy answers are words it believes.
    batch = PairCollator(teacher, None, max_length=256)(samples)["student"]
    opt = torch.optim.Adam(teacher.model.parameters(), lr=1e-2)
    for _ in range(40):
        rows = teacher.response_hidden(batch)
        torch.nn.functional.cross_entropy(rows.logits(), rows.targets).backward()
        opt.step()
        opt.zero_grad()
    teacher.model.eval()
    teacher.save(str(root / "teacher"))
    answers = teacher.generate(samples, max_new_tokens=12)
    records = [{"id": s.id, "messages": [*s.messages[:1], {"role": "assistant", "content": a.strip() or "yes"}]}
               for s, a in zip(samples, answers)]
    assert sum(bool(a.strip()) for a in answers) >= N - 2, answers  # words, not byte soup
    (root / "teacher_outputs.json").write_text(json.dumps(records))
    return {"root": root, "data": str(root / "teacher_outputs.json")}


def _config(path: Path, env: dict, alignment: str, **extra) -> Path:
    from taid_vlm.models.tiny import tiny_text_config

    cfg = {
        "student": {"family": "text", "config": tiny_text_config(), "tokenizer": str(env["root"] / "tok_s")},
        "teacher": {"family": "text", "path": str(env["root"] / "teacher"), "tokenizer_alignment": alignment},
        "data": {"train": env["data"], "val": env["data"], "max_length": 256},
        "loss": {"name": "taid", "taid": {"t_start": 0.6}},
        "train": {"output_dir": str(path.parent / "out"), "max_steps": 12, "batch_size": N, "lr": 1e-2,
                  "warmup_steps": 0, "cpu": True, "seed": 0},
        "eval": {"max_batches": 1},
        "logging": {"tensorboard": False, "progress": False},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_byte_aligned_taid_improves_student_on_teacher_outputs(tmp_path, xtok_env):
    cfg = _config(tmp_path / "c.yaml", xtok_env, "byte_aligned", eval__max_batches=0)
    assert main(["train", str(cfg)]) == 0
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    first, last = log[0], log[-1]
    shares = first["xtok_one_to_one"] + first["xtok_merged"] + first["xtok_unaligned"]
    assert shares == pytest.approx(1.0) and first["xtok_merged"] > 0 and first["xtok_one_to_one"] > 0
    final = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())
    # Step 1's LM loss is the untrained student on the whole set (one batch of N); the final
    # validation runs on the same set after training.
    untrained, trained = first["lm_loss"], final["metrics"]["val_lm_loss"]
    assert trained < untrained - 0.1, (untrained, trained)
    # (the distillation loss itself is not compared: TAID's target sharpens as t rises.)
    assert last["taid_t"] > first["taid_t"]
    assert final["data_report"]["used"] >= N - 2  # few answers, if any, could not be aligned


def test_uld_mode_trains(tmp_path, xtok_env):
    cfg = _config(tmp_path / "c.yaml", xtok_env, "uld", loss__name="tvd", train__max_steps=2)
    assert main(["train", str(cfg)]) == 0
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    assert all(r["xtok_merged"] == 0 and r["distil_loss"] > 0 for r in log)


def test_shared_mode_refuses_two_tokenizers_naming_the_setting(tmp_path, xtok_env, capsys):
    cfg = _config(tmp_path / "c.yaml", xtok_env, "shared")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "teacher.tokenizer_alignment" in err and "byte_aligned or uld" in err


@pytest.mark.parametrize("extra, message", [
    ({"loss__name": "dkd"}, "needs target ids in one vocabulary"),
    ({"teacher__tokenizer_alignment": "bytes"}, "must be one of"),
])
def test_modes_the_run_cannot_use_fail_at_start_up(tmp_path, xtok_env, capsys, extra, message):
    cfg = _config(tmp_path / "c.yaml", xtok_env, "byte_aligned", **extra)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "teacher.tokenizer_alignment" in err and message in err


@pytest.fixture(scope="module")
def xtok_cache(tmp_path_factory, xtok_env) -> Path:
    """``cache-teacher`` of the teacher over the set at k = V in float32 (exact), written once: the
    cache does not depend on the alignment mode, so every mode below reads this one."""
    root = tmp_path_factory.mktemp("xtok_cache")
    cfg = _config(root / "c.yaml", xtok_env, "byte_aligned")
    out = root / "cache"
    assert main(["cache-teacher", str(cfg), "--output", str(out), "--top-k", "100000", "--dtype", "float32"]) == 0
    return out


@pytest.mark.parametrize("mode, loss, teacher_path", [("byte_aligned", "taid", True), ("uld", "fkl", False)])
def test_training_from_a_full_cache_equals_the_live_teacher(tmp_path, xtok_env, xtok_cache, mode, loss,
                                                            teacher_path):
    """Cache-teacher then train, in a cross mode, through ``main``: at k = V the run from the cache
    logs the live run's losses, gradient norms and alignment shares, and skips no sample. The uld
    run names no teacher at all (teacher.path null): the cache's copy of the teacher tokenizer serves."""
    runs = {}
    for name, extra in (("live", []),
                        ("cache", [f"teacher.cache={xtok_cache}", *([] if teacher_path else ["teacher.path=null"])])):
        (tmp_path / name).mkdir()
        cfg = _config(tmp_path / name / "c.yaml", xtok_env, mode, loss__name=loss, train__max_steps=2)
        assert main(["train", str(cfg), *extra]) == 0
        out = tmp_path / name / "out"
        runs[name] = (read_jsonl(out / "logs" / "train.jsonl"), json.loads((out / "final" / "metrics.json").read_text()))
    (live, live_final), (cached, cached_final) = runs["live"], runs["cache"]
    assert len(cached) == 2 and all(math.isfinite(r["loss"]) and r["distil_loss"] > 0 for r in cached)
    for key, rel in (("loss", 1e-5), ("distil_loss", 1e-5), ("lm_loss", 1e-5), ("grad_norm", 1e-4)):
        assert [r[key] for r in cached] == pytest.approx([r[key] for r in live], rel=rel), key
    for key in ("xtok_one_to_one", "xtok_merged", "xtok_unaligned"):
        assert [r[key] for r in cached] == [r[key] for r in live], key
    # Validation reads the cache too (the validation set is the training set here).
    assert cached_final["metrics"]["val_distil_loss"] == pytest.approx(live_final["metrics"]["val_distil_loss"],
                                                                       rel=1e-5)
    report = cached_final["data_report"]
    assert report["skipped"] == {} and report["used"] == N


def test_cache_of_another_teacher_tokenizer_is_refused_naming_the_setting(tmp_path, xtok_env, xtok_cache, capsys):
    cfg = _config(tmp_path / "c.yaml", xtok_env, "uld", train__max_steps=1)
    other = xtok_env["root"] / "tok_s"  # the student's tokenizer, not the one the cache was written with
    assert main(["train", str(cfg), f"teacher.cache={xtok_cache}", f"teacher.tokenizer={other}"]) == 2
    err = capsys.readouterr().err
    assert "different tokenizer" in err and "teacher.tokenizer" in err and not (tmp_path / "out" / "logs").exists()


def test_cross_tokenizer_study_quick(tmp_path):
    from tests.conftest import load_eval_script

    mod = load_eval_script("cross_tokenizer")
    assert mod.main(["--quick", "--work", str(tmp_path / "work"), "--output", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "cross_tokenizer.json").read_text())
    runs = [rs[0] for rs in rep["runs"].values()]  # one seed in --quick
    assert [r["alignment"] for r in runs] == ["shared", "byte_aligned", "uld", "byte_aligned", "uld", "shared"]
    for r in runs:
        assert 0 < r["nll_per_char"] < 10 and 0 <= r["exact_match"] <= 100
    # paired differences: a run against itself is 0, and each is its own run's minus the floor's
    same = rep["differences"]["same tokenizer, taid"]["vs_same_tokenizer"]["nll_per_char"]
    assert same["per_seed"] == [0.0] and same["mean"] == 0.0
    floor = rep["differences"]["cross tokenizer, byte_aligned taid"]["vs_sft_floor"]["nll_per_char"]
    assert floor["per_seed"][0] == pytest.approx(runs[1]["nll_per_char"] - runs[5]["nll_per_char"])
    byte = runs[1]["shares_last_step"]
    assert byte["xtok_one_to_one"] + byte["xtok_merged"] + byte["xtok_unaligned"] == pytest.approx(1.0)
    assert "| student |" in (tmp_path / "out" / "cross_tokenizer.md").read_text()
    assert (tmp_path / "out" / "cross_tokenizer.png").is_file()


def test_vlm_student_with_another_tokenizer_trains(tmp_path, run_env):
    """A composed (VLM) student whose tokenizer differs from the composed teacher's, byte_aligned."""
    from taid_vlm.data.synthetic import synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    from .conftest import STUDENT, write_config

    tok = train_bpe_tokenizer(synthetic_corpus(Path(run_env["root"]) / "data"), vocab_size=400,
                              pre_tokenizer="split_digits_punct")
    tok.save_pretrained(tmp_path / "tok_b")
    cfg_path = write_config(tmp_path / "c.yaml", run_env, max_steps=2)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["student"] = {"family": "composed", "config": STUDENT, "tokenizer": str(tmp_path / "tok_b")}
    cfg["teacher"]["tokenizer_alignment"] = "byte_aligned"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(cfg_path)]) == 0
    log = read_jsonl(tmp_path / "out" / "logs" / "train.jsonl")
    assert len(log) == 2 and all(r["distil_loss"] > 0 and r["xtok_one_to_one"] > 0 for r in log)
    assert all(r["xtok_one_to_one"] + r["xtok_merged"] == pytest.approx(1.0) for r in log)
