"""The synthetic shapes set: byte-determinism, answers that match the drawn pictures, the CLI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from taid_vlm.data.readers import DataReport, load_samples
from taid_vlm.data.synthetic import generate_synthetic, main_make_synthetic, synthetic_corpus
from taid_vlm.data.synthetic_scenes import COLOURS, POSITIONS

N_TRAIN, N_VAL, SIZE = 30, 12, 32


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    paths = generate_synthetic(out, seed=0, n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE)
    return out, paths


def test_same_seed_same_bytes_other_seed_differs(synth, tmp_path):
    out, paths = synth
    again = generate_synthetic(tmp_path / "a", seed=0, n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE)
    other = generate_synthetic(tmp_path / "b", seed=1, n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE)
    d0, d1, d2 = digest(out), digest(tmp_path / "a"), digest(tmp_path / "b")
    assert d0 == d1 and len(d0) == N_TRAIN + N_VAL + 7
    assert d2["train.json"] != d0["train.json"]
    assert sum(d2[k] != d0[k] for k in d0 if k.endswith(".png")) > (N_TRAIN + N_VAL) // 2
    assert set(paths) == set(again) == set(other) == {"train", "val", "val_vqa", "val_caption", "scenes",
                                                         "train_text", "val_text", "images"}


def test_a_smaller_training_set_is_a_prefix_of_a_larger_one(synth, tmp_path):
    # The demo's students train on the first n images of the set its shipped teacher was built on.
    out, _ = synth
    small = generate_synthetic(tmp_path / "s", seed=0, n_train=N_TRAIN // 3, n_val=N_VAL, image_size=SIZE)
    full = json.loads((out / "train.json").read_text())
    assert json.loads(small["train"].read_text()) == full[: N_TRAIN // 3]
    big, part = digest(out / "images"), digest(tmp_path / "s" / "images")
    assert part and all(big[k] == v for k, v in part.items())


def test_text_variant_describes_the_scene_in_words(synth):
    out, _ = synth
    train = json.loads((out / "train.json").read_text())
    text = json.loads((out / "train_text.json").read_text())
    assert [r["id"] for r in text] == [r["id"] for r in train]
    for llava, plain in zip(train, text):
        msgs = plain["messages"]
        assert [m["role"] for m in msgs] == ["user" if t["from"] == "human" else "assistant"
                                             for t in llava["conversations"]]
        assert "<image>" not in msgs[0]["content"] and len(msgs[0]["content"]) > len(llava["conversations"][0]["value"])
        assert [m["content"] for m in msgs[1:]] == [t["value"] for t in llava["conversations"][1:]]


def expected_answer(question: str, objs: list[dict]) -> str:
    """Answer a generator question from the scene description, independently of the generator."""
    if question == "How many shapes are there?":
        return str(len(objs))
    m = re.fullmatch(r"What colour is the (\w+)\?", question)
    if m:
        return next(o["colour"] for o in objs if o["shape"] == m[1])
    m = re.fullmatch(r"What shape is the (\w+) object\?", question)
    if m:
        return next(o["shape"] for o in objs if o["colour"] == m[1])
    m = re.fullmatch(r"Where is the (\w+) (\w+)\?", question)
    if m:
        return next(o["position"] for o in objs if (o["colour"], o["shape"]) == (m[1], m[2]))
    m = re.fullmatch(r"Is the (\w+) small or large\?", question)
    if m:
        return next(o["size"] for o in objs if o["shape"] == m[1])
    m = re.fullmatch(r"Is there a (\w+) (\w+)\?", question)
    if m:
        return "yes" if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objs) else "no"
    raise AssertionError(f"unexpected question {question!r}")


def test_pictures_match_scene_descriptions(synth):
    out, paths = synth
    scenes = json.loads(paths["scenes"].read_text())
    assert len(scenes) == N_TRAIN + N_VAL
    for name, objs in scenes.items():
        img = Image.open(out / "images" / f"{name}.png")
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"
        assert 1 <= len(objs) <= 3 and len({o["shape"] for o in objs}) == len({o["colour"] for o in objs}) == len(objs)
        for pos, (fx, fy) in POSITIONS.items():
            pixel = img.getpixel((int(fx * SIZE), int(fy * SIZE)))
            here = [o for o in objs if o["position"] == pos]
            assert pixel == (COLOURS[here[0]["colour"]] if here else (255, 255, 255)), (name, pos)
        assert {c for _, c in img.getcolors()} == {(255, 255, 255)} | {COLOURS[o["colour"]] for o in objs}


def test_answers_and_captions_consistent(synth):
    _, paths = synth
    scenes = json.loads(paths["scenes"].read_text())
    vqa = json.loads(paths["val_vqa"].read_text())
    assert len(vqa) == N_VAL and len({r["question_type"] for r in vqa}) == 6
    for rec in vqa:
        assert rec["answers"] == [expected_answer(rec["question"], scenes[rec["question_id"]])] * 10
    n_turns = 0
    for rec in json.loads(paths["train"].read_text()):
        conv, objs = rec["conversations"], scenes[rec["id"]]
        assert conv[0]["value"].startswith("<image>\n") and rec["image"] == f"images/{rec['id']}.png"
        for q, a in zip(conv[::2], conv[1::2]):
            text = q["value"].replace("<image>\n", "")
            if text == "Describe the image.":
                assert all(o["colour"] in a["value"] and o["shape"] in a["value"] for o in objs)
            else:
                assert a["value"] == expected_answer(text, objs)
                n_turns += 1
    assert n_turns > N_TRAIN // 2
    for rec in json.loads(paths["val_caption"].read_text()):
        assert len(rec["captions"]) == 4
        for cap in rec["captions"]:
            assert all(o["colour"] in cap and o["shape"] in cap for o in scenes[rec["id"]])


def test_files_read_cleanly_and_corpus_covers_them(synth):
    out, paths = synth
    report = DataReport()
    for key in ("train", "val", "val_vqa", "val_caption"):
        assert load_samples(paths[key], report=report)
    assert report.read == report.used == N_TRAIN + 3 * N_VAL
    corpus = " ".join(synthetic_corpus(out))
    for word in [*COLOURS, "circle", "square", "triangle", "centre", "yes", "no", "Describe the image."]:
        assert word in corpus


def test_cli_entry(tmp_path, capsys):
    assert main_make_synthetic(["--output", str(tmp_path / "s"), "--seed", "3", "--n-train", "4", "--n-val", "2",
                                "--image-size", "24"]) == 0
    assert len(json.loads((tmp_path / "s" / "train.json").read_text())) == 4
    assert "val_vqa:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main_make_synthetic(["--output", str(tmp_path / "t"), "--n-train", "0"])


def test_questions_asks_every_type_per_record_and_leaves_the_held_out_files_alone(synth, tmp_path):
    from taid_vlm.data.synthetic_scenes import CAPTION_PROMPT, QUESTION_TYPES

    out, _ = synth
    dense = generate_synthetic(tmp_path / "d", seed=0, n_train=N_TRAIN, n_val=N_VAL, image_size=SIZE, questions=6)
    recs = json.loads(dense["train"].read_text())
    scenes = json.loads(dense["scenes"].read_text())
    vqa = [r for r in recs if not r["conversations"][0]["value"].endswith(CAPTION_PROMPT)]
    assert vqa and len(vqa) < len(recs)  # captions keep their share
    openers = {"colour": "What colour", "shape": "What shape", "count": "How many", "position": "Where is",
               "exists": "Is there ", "size": "Is the "}
    for r in vqa:
        asks = [t["value"].replace("<image>\n", "") for t in r["conversations"][::2]]
        assert len(asks) == len(QUESTION_TYPES)
        assert sorted(k for a in asks for k, o in openers.items() if a.startswith(o)) == sorted(QUESTION_TYPES)
        answers = [t["value"] for t in r["conversations"][1::2]]
        assert str(len(scenes[r["id"]])) in answers  # the count turn is right
    for name in ("val.json", "val_vqa.json", "val_caption.json"):
        assert (tmp_path / "d" / name).read_bytes() == (out / name).read_bytes()
    with pytest.raises(ValueError, match="0 <= questions <= 6"):
        generate_synthetic(tmp_path / "x", n_train=2, n_val=0, image_size=SIZE, questions=7)
