"""The shipped demo teachers: present, built with today's settings, larger ones better, checked on load."""

from __future__ import annotations

import json
import shutil

import pytest

from taid_vlm.demo.presets import PRESETS, TEACHER_DATA, TEACHERS
from taid_vlm.demo.teachers import BUILD_FILE, SHIPPED, build_info, build_spec, teacher_dir


def test_every_teacher_is_shipped_with_todays_settings_and_its_record():
    for name in TEACHERS:
        info = build_info(name)  # raises when missing or built from other settings
        assert info["spec"]["data"] == TEACHER_DATA
        assert info["command"].startswith("python eval/build_demo_teachers.py") and info["machine"]
        assert info["scores"]["held_out_questions"] == 1000 and info["train_seconds"] > 0
        assert (teacher_dir(name) / "tokenizer.json").is_file()
        assert not (teacher_dir(name) / "config.yaml").exists()  # the build machine's paths stay out


def test_larger_teachers_are_better_ones():
    # The capacity-gap study needs teachers of increasing quality, not only of increasing size. It is
    # judged by the low-noise metrics (held-out NLL per token over ~7,000 response tokens, CIDEr):
    # L and M are within the VQA accuracy interval of each other (about +-3 points on 1,000 questions).
    info = [build_info(n) for n in ("S", "M", "L")]
    params = [i["params"] for i in info]
    nll = [i["scores"]["nll"] for i in info]
    cider = [i["scores"]["cider"] for i in info]
    vqa = [i["scores"]["vqa_accuracy"] for i in info]
    assert params[0] < params[1] < params[2] and params[2] >= 10 * params[0]
    assert nll[0] > nll[1] > nll[2] and cider[0] < cider[1] < cider[2]
    assert vqa[0] + 15 < min(vqa[1], vqa[2]) and abs(vqa[2] - vqa[1]) < 3


def test_presets_train_students_on_a_quarter_or_less_of_the_teachers_images():
    for preset in PRESETS.values():
        assert preset["teacher"] in TEACHERS
        assert 4 * preset["data"]["n_train"] <= TEACHER_DATA["n_train"]
        assert preset["data"]["image_size"] == TEACHER_DATA["image_size"]


def test_a_missing_or_stale_teacher_is_refused_with_the_command_that_builds_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval/build_demo_teachers.py --teachers M"):
        teacher_dir("M", root=tmp_path)
    shutil.copytree(SHIPPED / "S", tmp_path / "S")
    assert teacher_dir("S", root=tmp_path) == tmp_path / "S"
    info = json.loads((tmp_path / "S" / BUILD_FILE).read_text())
    info["spec"]["train"]["max_steps"] += 1  # built with other settings than the presets say
    (tmp_path / "S" / BUILD_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="rebuild it"):
        teacher_dir("S", root=tmp_path)
    with pytest.raises(ValueError, match="valid: S, M, L"):
        teacher_dir("XL")
    assert build_spec("M")["model"] == json.loads(json.dumps(TEACHERS["M"]["model"]))
