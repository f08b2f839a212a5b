"""The encoding-cache benchmark in quick mode: same batches with and without the cache, and the
cache serves every draw after the first of each record."""

import json

from tests.conftest import load_eval_script


def test_quick_benchmark_gives_identical_batches_and_counts_hits(tmp_path):
    mod = load_eval_script("bench_encode_cache")
    # The tiny preset: 400 records, batch 16; 30 steps draw 480, so 80 draws repeat a record.
    assert mod.main(["--quick", "--steps", "30", "--work", str(tmp_path / "w"), "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_encode_cache.json").read_text())
    assert report["command"].startswith("python eval/bench_encode_cache.py --quick") and report["machine"]
    c = report["collate"]
    assert c["identical_batches"] is True
    assert (c["misses"], c["hits"]) == (400, 80)
    assert c["off_s_per_batch"] > 0 and c["on_s_per_batch"] > 0 and report["train"]["on_s"] > 0
