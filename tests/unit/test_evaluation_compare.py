"""``taid-vlm compare``: Markdown table and PNG chart from results files and dicts."""

from __future__ import annotations

import json

import pytest

from taid_vlm.evaluation.compare import compare_main, compare_results, flat_scores, markdown_table


def _results(path, model, acc, em):
    res = {"task": "vqa", "model": model, "num_samples": 3,
           "scores": {"vqa_accuracy": acc, "exact_match": em, "anls": 10.0}, "predictions": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return path


def test_flat_scores_forms():
    assert flat_scores({"scores": {"a": 1, "num_tokens": 5.0}, "predictions": []}) == {"a": 1.0}
    assert flat_scores({"vqa": {"vqa_accuracy": 50.0}, "caption": {"CIDEr": 0.5}, "name": "x"}) == {
        "vqa/vqa_accuracy": 50.0, "caption/CIDEr": 0.5}


def test_markdown_table_union_of_metrics():
    table = markdown_table(["A", "B"], [{"x": 1.0, "y": 2.0}, {"x": 0.5, "z": 3.0}])
    assert table.splitlines() == ["| run | x | y | z |", "|---|---|---|---|", "| A | 1 | 2 | - |", "| B | 0.5 | - | 3 |"]


def test_compare_main_writes_markdown_and_png(tmp_path, capsys):
    a = _results(tmp_path / "taid" / "results_vqa.json", "out/taid", 62.5, 60.0)
    b = _results(tmp_path / "fkl.json", "out/fkl", 40.0, 33.3)
    out = tmp_path / "cmp"
    assert compare_main([str(a), str(b), "--output", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "| taid | 62.5 | 60 | 10 |" in md and "| fkl | 40 | 33.3 | 10 |" in md
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert "62.5" in capsys.readouterr().out


def test_compare_results_dicts_with_names(tmp_path):
    table, png = compare_results([{"VQA acc": 50.0}, {"VQA acc": 70.0}], names=["SFT", "TAID"], output=tmp_path)
    assert "| TAID | 70 |" in table and png.is_file()


def test_compare_errors(tmp_path, capsys):
    assert compare_main([str(tmp_path / "missing.json"), "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="2 names for 1 results"):
        compare_results([{"a": 1.0}], names=["x", "y"], output=tmp_path)
    with pytest.raises(ValueError, match="no numeric scores"):
        compare_results([{"a": "text"}], names=["x"], output=tmp_path)
