"""Reuse keys: content hashes in place of paths, field-by-field changes, defaults of new options."""

from __future__ import annotations

import time

from taid_vlm.run_key import CONTENT, key_changes, reuse_key


def _cfg(data: str, tok: str, steps: int = 4, out: str = "runs/a") -> dict:
    return {"student": {"tokenizer": tok, "config": {"text": {"hidden_size": 8}}},
            "data": {"train": data, "num_workers": 1, "cache_dir": None},
            "train": {"output_dir": out, "max_steps": steps, "lr": 1e-3}, "logging": {"report_to": ["x"]}}


def test_paths_become_content_hashes_so_location_does_not_matter(tmp_path, monkeypatch):
    for d in ("a", "b"):
        (tmp_path / d / "tok").mkdir(parents=True)
        (tmp_path / d / "tok" / "tokenizer.json").write_text("{}")
        (tmp_path / d / "train.json").write_text("[1]")
    a = reuse_key(_cfg(str(tmp_path / "a" / "train.json"), str(tmp_path / "a" / "tok"), out="x"))
    monkeypatch.chdir(tmp_path / "b")
    b = reuse_key(_cfg("train.json", "tok", out="elsewhere"))
    assert a["config"] == b["config"] and key_changes(a, b) == []
    assert a["config"]["data"]["train"].startswith(CONTENT) and "output_dir" not in a["config"]["train"]
    assert "logging" not in a["config"] and a["files"]["student.tokenizer"]["path"] == str(tmp_path / "a" / "tok")


def test_a_file_rewritten_in_place_changes_the_key_and_the_change_names_it(tmp_path):
    data = tmp_path / "train.json"
    data.write_text("[1]")
    before = reuse_key(_cfg(str(data), "gpt2"))
    time.sleep(0.05)  # file times tick in kernel jiffies; a rewrite happens later than that in practice
    data.write_text("[2]")  # same size, same path: hashed again (the per-process cache keys on mtime too)
    after = reuse_key(_cfg(str(data), "gpt2", steps=6))
    assert key_changes(before, after) == [f"data.train: the content of {data} changed", "train.max_steps: 4 -> 6"]
    # Hub ids (no such path) stay names.
    assert after["config"]["student"]["tokenizer"] == "gpt2"


def test_a_new_option_counts_only_away_from_its_default():
    stored = reuse_key(_cfg("no/such/file", "gpt2"))
    for value, changed in ((1.0, []), (0.5, ["train.max_grad_norm: new setting 0.5"])):
        current = reuse_key(_cfg("no/such/file", "gpt2"))
        current["config"]["train"]["max_grad_norm"] = value  # an option older runs did not record
        assert key_changes(stored, current) == changed
    # A removed option does not count; an unknown new key (no default known) does.
    current = reuse_key(_cfg("no/such/file", "gpt2"))
    del current["config"]["train"]["lr"]
    current["config"]["student"]["config"]["text"]["layers"] = 2
    assert key_changes(stored, current) == ["student.config.text.layers: new setting 2"]
