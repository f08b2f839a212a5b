"""``eval/build_demo_teachers.py --train``: the teacher recipe on any LLaVA-format set, stopping on a
validation split carved from the training images (never the test split)."""

from __future__ import annotations

import json

import pytest

from taid_vlm.data.synthetic import generate_synthetic
from taid_vlm.demo.presets import _conv
from tests.conftest import load_eval_script


@pytest.fixture(scope="module")
def build():
    return load_eval_script("build_demo_teachers")


def test_carve_holds_back_whole_images_from_the_end(build):
    recs = [{"id": f"r{i}", "image": f"im{i // 2}.png", "conversations": []} for i in range(10)]
    recs.append({"id": "text", "conversations": []})
    fit, carved = build.carve_by_image(recs, 2)
    assert [r["id"] for r in carved] == ["r6", "r7", "r8", "r9"]
    assert [r["id"] for r in fit] == ["r0", "r1", "r2", "r3", "r4", "r5", "text"]
    assert build.carve_by_image(recs, 0) == (recs, [])
    with pytest.raises(ValueError, match="stop.carve = 5 images leaves none"):
        build.carve_by_image(recs, 5)


def test_builds_a_teacher_on_a_llava_file_and_stops_on_the_carved_split(tmp_path, build, monkeypatch, one_thread):
    # Any LLaVA set: here a small synthetic one, read only through its LLaVA file and VQA records.
    paths = generate_synthetic(tmp_path / "set", seed=3, n_train=48, n_val=24, image_size=32)
    recipe = {"model": _conv(8, 1, 32, 1, 32),
              "train": {"max_steps": 12, "batch_size": 8, "lr": 0.05, "warmup_steps": 0},
              "stop": {"carve": 8, "every": 2, "patience": 2}}
    monkeypatch.setattr(build, "TEACHERS", {"M": recipe})
    dest = tmp_path / "built"
    assert build.main(["--train", str(paths["train"]), "--held-out-vqa", str(paths["val_vqa"]), "--teachers", "M",
                       "--dest", str(dest), "--work", str(tmp_path / "work")]) == 0
    info = json.loads((dest / "M" / "build.json").read_text())
    stop = info["stopping"]
    # The carved split: the last 8 training images with all their records, none of them trained on.
    fit = json.loads((tmp_path / "work" / "split_M" / "carved" / "fit.json").read_text())
    val = json.loads((tmp_path / "work" / "split_M" / "carved" / "val.json").read_text())
    assert len({r["image"] for r in val}) == 8 and not {r["image"] for r in val} & {r["image"] for r in fit}
    assert (stop["fit_records"], stop["carved_records"]) == (len(fit), len(val)) == (40, 8)
    # Evaluated every 2 steps; the shipped step is the curve's lowest validation loss.
    curve = stop["val_curve"]
    assert [c["step"] for c in curve][:3] == [2, 4, 6]
    best = min(curve, key=lambda c: c["val_loss"])
    assert stop["stopped_early"] and stop["best_step"] == best["step"]
    # Scored on the held-out VQA records by type; the set's file and digest are on record.
    assert info["scores"]["held_out_questions"] == 24
    assert set(info["scores"]["vqa_by_type"]) == {"colour", "shape", "count", "position", "exists", "size"}
    assert info["spec"]["data"]["train"] == str(paths["train"]) and len(info["spec"]["data"]["sha256"]) == 64
    assert info["spec"]["stop"] == recipe["stop"]
    assert (dest / "M" / "model.safetensors").is_file() and (dest / "M" / "tokenizer.json").is_file()
    assert not (dest / "M" / "config.yaml").exists()


def test_train_without_dest_is_refused(build, capsys):
    with pytest.raises(SystemExit):
        build.main(["--train", "x.json"])
    assert "give --dest too" in capsys.readouterr().err


def test_a_candidate_recipe_builds_on_its_own_synthetic_set_with_its_spec_on_record(tmp_path, build, one_thread):
    data = {"seed": 1, "n_train": 48, "n_val": 20, "image_size": 32, "tokenizer_vocab": 320, "questions": 6}
    recipe = {"data": data, "teachers": {"S": {"model": _conv(8, 1, 32, 1, 32),
                                               "train": {"max_steps": 4, "batch_size": 8, "lr": 2e-3, "warmup_steps": 0},
                                               "stop": {"carve": 8, "every": 2, "patience": 3}}}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    dest = tmp_path / "cand"
    assert build.main(["--recipe", str(tmp_path / "r.json"), "--teachers", "S", "--dest", str(dest),
                       "--work", str(tmp_path / "work")]) == 0
    info = json.loads((dest / "S" / "build.json").read_text())
    assert info["spec"] == {"data": data, **recipe["teachers"]["S"]}
    assert info["command"].startswith("python eval/build_demo_teachers.py --recipe")
    # The synthetic set's held-out questions (all 20), by type; the carve came out of its training split.
    assert info["scores"]["held_out_questions"] == 20 and len(info["scores"]["vqa_by_type"]) == 6
    assert info["stopping"]["carved_images"] == 8 and info["stopping"]["val_curve"][0]["step"] == 2
    fit = json.loads((tmp_path / "work" / "split_S" / "carved" / "fit.json").read_text())
    assert len({r["image"] for r in fit}) == 40 and all(len(r["conversations"]) in (2, 12) for r in fit)


def test_a_recipe_never_overwrites_the_shipped_teachers(build, capsys):
    with pytest.raises(SystemExit):
        build.main(["--recipe", "r.json"])
    assert "--recipe: give --dest too" in capsys.readouterr().err
