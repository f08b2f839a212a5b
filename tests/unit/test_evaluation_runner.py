"""The eval runner with a fake adapter: prompts, batching, scores, saved predictions, bad input."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from taid_vlm.data.types import Sample
from taid_vlm.evaluation import evaluate, evaluate_file
from taid_vlm.evaluation.runner import eval_main
from taid_vlm.evaluation.tasks import render_prompt


class FakeVLM:
    """``generate`` answers from a table keyed by the user text; records every batch it gets."""

    name = "fake"
    supports_images = True

    def __init__(self, answers: dict[str, str] | None = None, supports_images: bool = True):
        self.answers = answers or {}
        self.supports_images = supports_images
        self.batches: list[list[Sample]] = []

    def generate(self, samples, max_new_tokens=32):
        self.batches.append(list(samples))
        out = []
        for s in samples:
            text = s.messages[-1]["content"][-1]["text"]
            out.append(self.answers.get(text.split("\n")[0], "no idea") + "  ")
        return out


@pytest.fixture
def vqa_file(tmp_path):
    Image.new("RGB", (4, 4), "red").save(tmp_path / "a.png")
    recs = [
        {"question_id": "q1", "image": "a.png", "question": "How many dogs?", "answers": ["2 dogs"] * 10},
        {"question_id": "q2", "image": "a.png", "question": "What colour?", "answers": ["red"] * 3 + ["pink"] * 7},
        {"question_id": "q3", "image": "a.png", "question": "Is it big?", "answers": ["yes"] * 10},
    ]
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(recs))
    return path


ANSWERS = {"How many dogs?": "Two dogs.", "What colour?": "Red", "Is it big?": "no"}


def test_evaluate_file_vqa_scores_and_saved_predictions(vqa_file, tmp_path):
    adapter = FakeVLM(ANSWERS)
    out = tmp_path / "res" / "results.json"
    scores = evaluate_file(adapter, vqa_file, "vqa", batch_size=2, max_new_tokens=4, output=out)
    # q1: "Two dogs." == "2 dogs" x10 -> 100; q2: 3 of 10 -> 90; q3: 0.  Mean 190/3.
    assert scores["vqa_accuracy"] == pytest.approx(190 / 3)
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert [len(b) for b in adapter.batches] == [2, 1]
    # Prompt: image first, then question + the default instruction; no answer turn.
    first = adapter.batches[0][0]
    assert [m["role"] for m in first.messages] == ["user"]
    assert first.messages[0]["content"][0] == {"type": "image"}
    assert first.messages[0]["content"][1]["text"] == (
        "How many dogs?\nAnswer the question using a single word or phrase.")
    saved = json.loads(out.read_text())
    assert saved["scores"] == scores
    assert [p["id"] for p in saved["predictions"]] == ["q1", "q2", "q3"]
    p1 = saved["predictions"][0]
    assert p1["prediction"] == "Two dogs." and p1["references"] == ["2 dogs"] * 10
    assert p1["question"] == "How many dogs?" and p1["scores"]["vqa_accuracy"] == 100.0
    assert p1["prompt"] == "How many dogs?\nAnswer the question using a single word or phrase."
    assert saved["settings"]["prompt"].startswith("{question}")
    assert saved["data_report"]["read"] == 3


def test_prompt_forms():
    assert render_prompt("vqa", "Q: {question} A:", "why?") == "Q: why? A:"
    assert render_prompt("vqa", "Answer briefly.", "why?") == "why?\nAnswer briefly."
    assert render_prompt("vqa", "{question} {json}", "why?") == "why? {json}"
    assert render_prompt("caption", None) == "Describe the image."


def test_eval_main_writes_results_and_summary(vqa_file, tmp_path, monkeypatch, capsys):
    import taid_vlm.adapters as adapters

    fake = FakeVLM(ANSWERS)
    seen = {}

    def build(family, **spec):
        seen.update(family=family, **spec)
        return fake

    monkeypatch.setattr(adapters, "build_adapter", build)
    (tmp_path / "m").mkdir()  # eval checks that the model folder exists before it loads anything
    out = tmp_path / "r.json"
    rc = eval_main(["--model", str(tmp_path / "m"), "--task", "vqa", "--data", str(vqa_file), "--output", str(out),
                    "--limit", "2", "--prompt", "{question}", "--batch-size", "4"])
    assert rc == 0
    assert seen["family"] == "auto" and seen["path"] == str(tmp_path / "m")
    res = json.loads(out.read_text())
    assert res["num_samples"] == 2 and res["scores"]["vqa_accuracy"] == pytest.approx(95.0)
    assert res["predictions"][1]["question"] == "What colour?"
    assert "vqa_accuracy" in capsys.readouterr().out


def _run_bad(argv, monkeypatch, capsys, adapter=None):
    import taid_vlm.adapters as adapters

    fake = adapter or FakeVLM(ANSWERS)
    monkeypatch.setattr(adapters, "build_adapter", lambda family, **spec: fake)
    work = Path(tempfile.mkdtemp())
    (work / "m").mkdir()  # the model folder "m" exists (relative to the working folder)
    monkeypatch.chdir(work)
    rc = eval_main(argv)
    return rc, capsys.readouterr().err, fake


def test_unknown_task(vqa_file, monkeypatch, capsys):
    rc, err, fake = _run_bad(["--model", "m", "--task", "vqa2", "--data", str(vqa_file)], monkeypatch, capsys)
    assert rc == 2 and "unknown evaluation task 'vqa2'" in err and "vqa, caption, text" in err


def test_missing_field_names_record_and_field(vqa_file, tmp_path, monkeypatch, capsys):
    recs = json.loads(vqa_file.read_text())
    del recs[1]["answers"]
    vqa_file.write_text(json.dumps(recs))
    rc, err, fake = _run_bad(["--model", "m", "--task", "vqa", "--data", str(vqa_file)], monkeypatch, capsys)
    assert rc == 2 and "record 1 (id 'q2')" in err and "'answers'" in err
    assert fake.batches == []
    rc, err, _ = _run_bad(["--model", "m", "--task", "caption", "--data", str(vqa_file)], monkeypatch, capsys)
    assert rc == 2 and "record 0" in err and "'captions'" in err


def test_text_only_model_for_image_task(vqa_file, monkeypatch, capsys):
    text_model = FakeVLM(ANSWERS, supports_images=False)
    rc, err, fake = _run_bad(["--model", "m", "--task", "vqa", "--data", str(vqa_file)], monkeypatch, capsys,
                             adapter=text_model)
    assert rc == 2 and "cannot take images" in err
    assert fake.batches == []  # the error comes before any generation


def test_evaluate_checks_samples_before_generation():
    fake = FakeVLM()
    no_answers = Sample("s1", [], images=["x.png"], meta={"question": "why?"})
    with pytest.raises(ValueError, match="sample 's1' has no 'answers'"):
        evaluate(fake, [no_answers], "vqa")
    no_image = Sample("s2", [], meta={"captions": ["a dog"]})
    with pytest.raises(ValueError, match="sample 's2' has no image"):
        evaluate(fake, [no_image], "caption")
    assert fake.batches == []


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")
def test_evaluate_caption_with_fake(tmp_path):
    fake = FakeVLM({"Describe the image.": "a red square"})
    samples = [Sample("c1", [], images=["x"], meta={"captions": ["a red square", "red square"]}),
               Sample("c2", [], images=["y"], meta={"captions": ["a blue circle"]})]
    res = evaluate(fake, samples, "caption", caption_metrics=("Bleu_1", "CIDEr"))
    assert set(res["scores"]) == {"Bleu_1", "CIDEr"}
    assert res["predictions"][0]["scores"]["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert res["predictions"][1]["references"] == ["a blue circle"]
