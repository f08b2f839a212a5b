"""Fault injection: SIGKILL at seeded random moments (inside steps, checkpoint writes and clean-up,
at random times), a corpus of hostile records, and config fuzzing. Runs in CI (marker
``fault_injection``); about two minutes on 2 cores.

Kills run ``main([...])`` in a forked child (the parent's imports are reused, so a trial costs a
few seconds, not a fresh interpreter) with one intra-op thread in every run, the reference
included, so that float reductions are ordered the same in all of them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from taid_vlm.cli import main
from taid_vlm.train.checkpoint import SAVE_PHASES, list_checkpoints

from .conftest import read_jsonl, write_config

pytestmark = pytest.mark.fault_injection

SEED = 17
KILL_RUN = {"max_steps": 6, "save_every": 2, "keep_last": 1, "batch_size": 4}
CHILD_LIMIT_S = 300
CKPT_FILES = {"model.safetensors", "trainer_state.pt", "rng_rank0.pt", "config.yaml", "state.json"}


def _fork_main(argv: list[str], env: dict[str, str] | None = None, kill_after: float | None = None) -> int:
    """``main(argv)`` in a forked child; its exit status, or ``-9`` when it was SIGKILLed (by a hook
    or, after ``kill_after`` seconds, by this process)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            os.environ.update(env or {})
            torch.set_num_threads(1)
            code = main(argv)
        except BaseException:  # noqa: BLE001 - report anything, then leave with a distinct status
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - start
        if (kill_after is not None and elapsed >= kill_after) or elapsed > CHILD_LIMIT_S:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            assert elapsed <= CHILD_LIMIT_S, f"{argv} hung for {elapsed:.0f} s"
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)


def _kill_plan(rng: random.Random, ref_seconds: float) -> list[list[tuple[str, object]]]:
    """12 trials, each a list of kills before the final resume: every checkpoint-write phase once
    (at a random save), 3 kills after a random step, 3 at random times (1 or 2 kills each)."""
    saves = list(range(KILL_RUN["save_every"], KILL_RUN["max_steps"] + 1, KILL_RUN["save_every"]))
    plan: list[list[tuple[str, object]]] = []
    for phase in SAVE_PHASES:
        steps = saves[1:] if phase == "cleanup" else saves  # the first save deletes nothing
        plan.append([("save", f"{rng.choice(steps)}:{phase}")])
    for _ in range(3):
        plan.append([("step", rng.randint(1, KILL_RUN["max_steps"]))])
    for _ in range(3):
        plan.append([("timer", rng.uniform(0.05, 1.0) * ref_seconds) for _ in range(rng.randint(1, 2))])
    return plan


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


def test_sigkill_at_random_moments_resumes_bitwise_equal(tmp_path, run_env):
    (tmp_path / "ref").mkdir()
    ref_cfg = str(write_config(tmp_path / "ref" / "c.yaml", run_env, **KILL_RUN))
    t0 = time.monotonic()
    assert _fork_main(["train", ref_cfg]) == 0
    ref_seconds = time.monotonic() - t0
    ref = _final_weights(tmp_path / "ref" / "out")
    ref_log = read_jsonl(tmp_path / "ref" / "out" / "logs" / "train.jsonl")

    plan = _kill_plan(random.Random(SEED), ref_seconds)
    assert len(plan) >= 10
    killed = 0
    for i, kills in enumerate(plan):
        trial = tmp_path / f"trial{i}"
        trial.mkdir()
        cfg = str(write_config(trial / "c.yaml", run_env, **KILL_RUN))
        for n, (kind, when) in enumerate(kills):
            argv = ["train", cfg] + (["--resume", "auto"] if n else [])
            env = {"TAID_VLM_TEST_KILL_AT_STEP": str(when)} if kind == "step" else {}
            env.update({"TAID_VLM_TEST_KILL_IN_SAVE": str(when)} if kind == "save" else {})
            rc = _fork_main(argv, env, kill_after=when if kind == "timer" else None)
            assert rc in (0, -9), f"trial {i} {kind}={when}: exit {rc}"
            killed += rc == -9
            for ckpt in list_checkpoints(trial / "out"):  # what passes as complete must be complete
                assert {f.name for f in ckpt.iterdir()} >= CKPT_FILES, f"trial {i}: {ckpt} is incomplete"
            if kind != "timer":
                assert rc == -9, f"trial {i}: the {kind} hook {when} did not fire"
        assert _fork_main(["train", cfg, "--resume", "auto"]) == 0, f"trial {i} {kills}: resume failed"
        out = trial / "out"
        got = _final_weights(out)
        assert got.keys() == ref.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref), f"trial {i} {kills}: weights differ"
        log = read_jsonl(out / "logs" / "train.jsonl")
        assert [r["step"] for r in log] == [r["step"] for r in ref_log], f"trial {i} {kills}"
        for key in ("loss", "taid_t", "grad_norm"):
            assert [r[key] for r in log] == [r[key] for r in ref_log], f"trial {i} {kills}: {key}"
        assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{KILL_RUN['max_steps']}"]
        assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert killed >= 9  # every hook kill fired; timer kills may land after the run ended


# -- hostile records ------------------------------------------------------------------------------

def _rec(rid: str, image: str | None, question: str = "What colour is it?", answer: str = "red") -> dict:
    first = f"<image>\n{question}" if image is not None else question
    rec = {"id": rid, "conversations": [{"from": "human", "value": first}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    return rec


def _hostile_corpus(folder: Path) -> tuple[list[str], dict[str, int]]:
    """A JSONL file of good and bad records; returns (ids of the good ones, skips by reason)."""
    im = folder / "images"
    im.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(im / "ok.png")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(im / "1x1.png")
    Image.new("RGB", (1, 40), (1, 2, 3)).save(im / "1xN.png")
    Image.new("RGB", (3000, 2), (1, 2, 3)).save(im / "wide.png")
    Image.new("RGB", (2, 3000), (1, 2, 3)).save(im / "tall.png")
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(im / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(im / "palette.png", transparency=0)
    (im / "empty.png").write_bytes(b"")
    (im / "truncated.png").write_bytes((im / "ok.png").read_bytes()[:40])
    (im / "text.png").write_text("not an image")
    good = [
        _rec("plain", "images/ok.png"), _rec("one_by_one", "images/1x1.png"), _rec("one_by_n", "images/1xN.png"),
        _rec("wide", "images/wide.png"), _rec("tall", "images/tall.png"), _rec("animated", "images/anim.gif"),
        _rec("palette_alpha", "images/palette.png"), _rec("control_chars", None, "a\x00b\x01c\x1b[31m d\ttab\x7f?"),
        _rec("dup", "images/ok.png"),
        _rec("dup", "images/ok.png", answer="blue"), _rec("unicode", None, "ünïcødé 日本語 🙂?"),
        {**_rec("nested_extra", "images/ok.png"), "meta": json.loads("[" * 50 + "]" * 50)},
    ]
    bad = [
        ("bad_path", _rec("nul_in_path", "images/ok\x00.png")),
        ("missing_image", _rec("control_in_path", "images/\x07bell\n.png")),
        ("missing_image", _rec("missing", "images/nope.png")),
        ("corrupt_image", _rec("zero_bytes", "images/empty.png")),
        ("corrupt_image", _rec("truncated", "images/truncated.png")),
        ("corrupt_image", _rec("not_an_image", "images/text.png")),
        ("path_escape", _rec("escape", "../../etc/passwd")),
        ("empty_answer", _rec("empty_answer", "images/ok.png", answer="")),
        # Only whole assistant turns are trained on: one that cannot fit max_length is skipped.
        ("response_truncated", _rec("long_answer", "images/ok.png", answer="very " * 3000 + "long")),
    ]
    lines = [json.dumps(r).encode() for r in good + [r for _, r in bad]]
    lines.append(b"[" * 100_000 + b"]" * 100_000)  # nested past any recursion limit: bad_record
    lines.append(b'{"id": "torn", "conversations": [')  # not JSON: bad_record
    lines.append(b'{"id": "latin1", "conversations": [{"from": "human", "value": "caf\xe9?"}, '
                 b'{"from": "gpt", "value": "x"}]}')  # not UTF-8: bad_text
    (folder / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    skipped: dict[str, int] = {}
    for reason in [r for r, _ in bad] + ["bad_record", "bad_record", "bad_text"]:
        skipped[reason] = skipped.get(reason, 0) + 1
    ids = [r["id"] for r in good]
    return [x if ids.index(x) == i else f"{x}#2" for i, x in enumerate(ids)], skipped


def test_hostile_records_good_ones_arrive_bad_ones_skipped_with_reason(tmp_path, run_env, monkeypatch):
    good, skipped = _hostile_corpus(tmp_path / "d")
    data = str(tmp_path / "d" / "train.jsonl")
    seen: list[str] = []
    from taid_vlm.data.collate import PairCollator

    real_call = PairCollator.__call__

    def spy(self, samples):
        batch = real_call(self, samples)
        skipped_ids = {sid for sid, _, _ in (batch or {}).get("skipped", [])}
        seen.extend(s.id for s in samples if s.id not in skipped_ids)
        return batch

    monkeypatch.setattr(PairCollator, "__call__", spy)
    cfg = str(write_config(tmp_path / "c.yaml", run_env, loss="sft", max_steps=0, epochs=1.0, batch_size=1))
    # Validation on other data (synthetic ids), so every id seen here comes from a training batch.
    assert main(["train", cfg, f"data.train={data}", f"data.val={run_env['train']}", "eval.max_batches=1"]) == 0
    report = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())["data_report"]
    assert report["read"] == len(good) + sum(skipped.values())
    assert report["skipped"] == skipped
    assert report["used"] == len(good)
    seen = [x for x in seen if not x.startswith("train_")]
    assert sorted(seen) == sorted(good)  # every good record reached a training batch, once


@pytest.mark.parametrize(("name", "content", "field"), [
    ("empty_list.json", b"[]", "data.train"),
    ("zero_bytes.json", b"", "data.train"),
    ("nested.json", b"[" * 100_000 + b"]" * 100_000, "data.train"),
    ("latin1.json", b'[{"id": "a", "image": "caf\xe9.png"}]', "data.train"),
])
def test_unusable_data_file_is_a_message(tmp_path, run_env, capsys, name, content, field):
    (tmp_path / name).write_bytes(content)
    cfg = str(write_config(tmp_path / "c.yaml", run_env, loss="sft"))
    assert main(["train", cfg, f"data.train={tmp_path / name}", f"data.val={tmp_path / name}"]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- config fuzzing -------------------------------------------------------------------------------

SECTIONS = ["student", "teacher", "data", "loss", "taid", "train", "eval", "logging", "sampling"]
NESTED = ["student.config", "student.config.vision", "student.config.vision.config", "student.config.projector",
          "student.config.text", "student.config.text.config"]
FUZZ = (
    [(f"nosuch_{i}=1", f"nosuch_{i}") for i in range(1)]
    + [(f"{s}.nosuch=1", f"{s}.nosuch") for s in SECTIONS + NESTED]
    + [(f"{s}.hidden_sise=8", f"{s}.hidden_sise") for s in NESTED[2::3]]
    + [
        ("train.lr=abc", "train.lr"), ("train.max_steps=1.5", "train.max_steps"), ("train.cpu=maybe", "train.cpu"),
        ("data.max_length=[1]", "data.max_length"), ("student.config=5", "student.config"),
        ("logging.tensorboard=2", "logging.tensorboard"), ("train=3", "train"), ("loss.distil_ratio=x", "loss.distil_ratio"),
        ("student.config.vision=3", "student.config.vision"), ("eval.every=true", "eval.every"),
        ("train.batch_size=0", "train.batch_size"), ("train.lr=-1", "train.lr"), ("train.keep_last=0", "train.keep_last"),
        ("train.grad_accum=-2", "train.grad_accum"), ("train.max_steps=-1", "train.max_steps"),
        ("taid.t_start=2", "taid.t_start"), ("train.scheduler=nope", "train.scheduler"),
        ("student.dtype=float8", "student.dtype"), ("loss.name=nope", "loss.name"),
        ("student.family=nosuch", "student.family"), ("teacher.family=nosuch", "teacher.family"),
        ("student.config.text.config.model_type=nosuch", "student.config.text.config.model_type"),
        ("train.mixed_precision=fp8", "train.mixed_precision"), ("data.train=/no/such.json", "data.train"),
        ("teacher.path=/no/such", "teacher.path"), ("student.tokenizer=/no/such", "student.tokenizer"),
        ("data.train=[]", "data.train"),
    ]
)


def test_config_fuzz_exits_2_naming_the_field_before_weights(tmp_path, run_env, capsys, monkeypatch):
    from taid_vlm.train import setup

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded for a bad config")

    monkeypatch.setattr(setup, "build_adapter", no_weights)
    cfg = str(write_config(tmp_path / "c.yaml", run_env))
    slow = []
    for override, field in FUZZ:
        t0 = time.monotonic()
        assert main(["train", cfg, override]) == 2, override
        seconds = time.monotonic() - t0
        slow += [(override, seconds)] if seconds > 5 else []
        err = capsys.readouterr().err
        assert field in err and "Traceback" not in err, (override, err)
        assert not (tmp_path / "out").exists(), override
    assert not slow
    assert len(FUZZ) >= 40
