"""Lazily read training data through the CLI: skips met in a loader worker reach the run's report."""

from __future__ import annotations

import json
import shutil

from taid_vlm.cli import main

from .conftest import write_config


def test_skips_found_in_a_worker_are_counted(tmp_path, run_env):
    recs = json.loads(open(run_env["train"]).read())
    data = tmp_path / "data"
    shutil.copytree(run_env["root"] + "/data/images", data / "images")
    outside = tmp_path / "outside.png"
    shutil.copy(next((data / "images").iterdir()), outside)
    bad = [
        {**recs[0], "id": "missing", "image": "images/nope.png"},
        {**recs[1], "id": "empty", "conversations": [recs[1]["conversations"][0], {"from": "gpt", "value": " "}]},
        {**recs[2], "id": "abs", "image": str(outside)},
    ]
    path = data / "train.json"
    path.write_text(json.dumps(recs + bad))
    cfg = write_config(tmp_path / "c.yaml", run_env, loss="sft", max_steps=len(recs) + 3, batch_size=1)
    assert main(["train", str(cfg), f"data.train={path}", "data.num_workers=1", "data.val=null",
                 f"data.cache_dir={tmp_path / 'hf'}"]) == 0
    rep = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())["data_report"]
    assert rep["read"] == len(recs) + 3
    assert rep["skipped"] == {"empty_answer": 1, "missing_image": 1, "path_escape": 1}
    assert "data.allow_absolute_paths" in rep["examples"]["path_escape"][0]
