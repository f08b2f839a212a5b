"""eval/qat_study.py --quick: the five students per task, paired differences, size and speed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_eval_script


def test_qat_study_quick(demo_tiny, tmp_path):
    try:  # the pre-training task needs the Lee corpus (gensim's wheel); the demo task does not
        load_eval_script("pretrain_study").find_corpus()
        task = "both"
    except Exception:  # noqa: BLE001 - no corpus reachable: the demo task alone
        task = "demo"
    study = load_eval_script("qat_study")
    assert study.main(["--quick", "--task", task, "--work", str(tmp_path / "w"), "--demo-work", str(demo_tiny),
                       "--data", str(tmp_path / "lee"), "--output", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "qat_study.json").read_text())
    cells = ["taid", "ptq", "qat_sft", "qat_taid", "qat_fkl"]
    for name, res in rep["tasks"].items():
        assert list(res["summary"]["cells"]) == cells
        size = res["footprint_seed0"]
        # Every quantized student ships smaller than the float one, and decodes.
        assert all(size[c]["weight_bytes"] < size["taid"]["weight_bytes"] for c in cells[1:])
        assert all(s["tokens_per_s"] > 0 for s in size.values())
        d = {(x["a"], x["b"]): x for x in res["summary"]["differences"]}
        metric = "heldout_ppl" if name == "pretrain" else "nll"
        by = {r["cell"]: r[metric] for r in res["runs"]}
        assert d[("qat_taid", "ptq")][metric] == pytest.approx(by["qat_taid"] - by["ptq"])
    # PTQ is the float TAID student quantized: same run, different weights file.
    demo = rep["tasks"]["demo"]["runs"]
    ptq = demo_tiny / next(r["run"] for r in demo if r["cell"] == "ptq") / "final"  # runs are relative to --work
    assert json.loads((ptq / "quantization.json").read_text())["quantized_linears"] > 0
    assert (tmp_path / "out" / "qat_study.png").is_file() and "(d) QAT + TAID" in (tmp_path / "out" / "qat_study.md").read_text()


def test_summary_pairs_by_seed_with_t_intervals():
    study = load_eval_script("qat_study")
    rows = [{"cell": c, "seed": s, "heldout_ppl": v} for c, vs in {"ptq": [10.0, 12.0], "qat_taid": [9.0, 10.0]}.items()
            for s, v in enumerate(vs)]
    out = study.summarise(rows, ("heldout_ppl",))
    assert out["cells"]["ptq"]["heldout_ppl_mean"] == 11.0 and out["cells"]["ptq"]["n"] == 2
    (d,) = out["differences"]
    assert (d["a"], d["b"]) == ("qat_taid", "ptq") and d["heldout_ppl_diffs"] == [-1.0, -2.0]
    assert d["heldout_ppl"] == -1.5 and d["heldout_ppl_ci95"] == pytest.approx(12.706 * 0.5 ** 0.5 / 2 ** 0.5, rel=1e-3)


def test_one_task_keeps_the_other_task_s_results(tmp_path):
    study = load_eval_script("qat_study")
    path = tmp_path / "qat_study.json"
    earlier = {"command": "python eval/qat_study.py --task pretrain", "date": "d0", "machine": "m0",
               "scheme": dict(study.SCHEME), "seeds": 3, "gen_tokens": 64,
               "tasks": {"pretrain": {"runs": [1]}, "demo": {"runs": [2]}}}
    path.write_text(json.dumps(earlier))
    kept = study._earlier_tasks(path, dict(study.SCHEME), keep={"pretrain"})
    assert list(kept) == ["pretrain"] and kept["pretrain"]["runs"] == [1]
    assert kept["pretrain"]["provenance"]["command"] == earlier["command"] and kept["pretrain"]["seeds"] == 3
    # Another scheme's results are not mixed in.
    assert study._earlier_tasks(path, {**study.SCHEME, "group_size": 16}, keep={"pretrain"}) == {}
