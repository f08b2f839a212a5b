"""eval/bench_lora.py and eval/lora_study.py on tiny settings: the numbers they report are the
ones peft trains, and the study's rows are the recipes it says."""

from __future__ import annotations

import pytest

from tests.conftest import load_eval_script


def test_bench_lora_counts_and_measures_each_row():
    bench = load_eval_script("bench_lora")
    spec = {**bench.configurations(quick=True)[0], "rows": ["full", "lora"], "warmup": 1}
    res = bench.run_config(spec, rounds=1)
    full, lora = res["rows"]["full"], res["rows"]["lora"]
    s = spec["student"]
    h, inter, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = s["num_key_value_heads"] * h // s["num_attention_heads"]
    # r * (in + out) for q, k, v, o, gate, up, down of every layer: the head is not adapted.
    per_layer = 16 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    assert lora["trainable_params"] == layers * per_layer
    assert full["trainable_params"] == full["total_params"]
    assert lora["persistent_mib"] < full["persistent_mib"] and lora["trainable_ratio"] < 0.5
    assert all(r["median_s"] > 0 and r["loss"] == r["loss"] for r in (full, lora))


def test_lora_study_rows_start_from_the_base(tmp_path):
    from taid_vlm.config_io import config_from_dict

    study = load_eval_script("lora_study")
    ps = study._pretrain_study()
    paths = {"tokenizer": "tok", "student": "s.txt", "heldout": "h.txt"}
    cfgs = {row: config_from_dict(study.row_config(ps, tmp_path / row, paths, tmp_path / "base", row, 1, 7,
                                                   tmp_path / "teacher")) for row in study.ROWS}
    assert all(c.student.path == str(tmp_path / "base" / "final") and c.train.seed == 1 for c in cfgs.values())
    assert (cfgs["taid_lora"].loss.name, cfgs["sft_lora"].loss.name, cfgs["taid_full"].loss.name) == ("taid", "sft", "taid")
    assert cfgs["taid_lora"].student.peft.r == cfgs["sft_lora"].student.peft.r == 16
    assert cfgs["taid_full"].student.peft is None
    assert cfgs["taid_lora"].teacher.path == str(tmp_path / "teacher" / "final")


@pytest.mark.parametrize("name", ["bench_lora", "lora_study"])
def test_scripts_have_entry_points(name):
    assert callable(load_eval_script(name).main)
