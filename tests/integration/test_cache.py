"""Teacher cache end to end: exact when k = V, fingerprint checks, resumable caching."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.cache.format import read_shard
from taid_vlm.cli import main

from .conftest import read_jsonl, write_config


@pytest.fixture(scope="module")
def cached(tmp_path_factory, run_env):
    root = tmp_path_factory.mktemp("cache")
    cfg = write_config(root / "c.yaml", run_env, loss="fkl", max_steps=3)
    cache_dir = root / "teacher_cache"
    assert main(["cache-teacher", str(cfg), "--output", str(cache_dir), "--top-k", "100000",
                 "--dtype", "float32", "--shard-size", "8"]) == 0
    return root, cfg, cache_dir


def test_training_from_full_cache_equals_live_teacher(tmp_path, run_env, cached):
    _, _, cache_dir = cached
    live_dir, cache_run = tmp_path / "live", tmp_path / "from_cache"
    live_dir.mkdir()
    cache_run.mkdir()
    live = write_config(live_dir / "c.yaml", run_env, loss="fkl", max_steps=3)
    assert main(["train", str(live)]) == 0
    from_cache = write_config(cache_run / "c.yaml", run_env, loss="fkl", max_steps=3)
    assert main(["train", str(from_cache), f"teacher.cache={cache_dir}"]) == 0
    a, b = read_jsonl(live_dir / "out/logs/train.jsonl"), read_jsonl(cache_run / "out/logs/train.jsonl")
    assert [r["distil_loss"] for r in b] == pytest.approx([r["distil_loss"] for r in a], rel=1e-5)
    assert [r["grad_norm"] for r in b] == pytest.approx([r["grad_norm"] for r in a], rel=1e-4)
    wa = load_file(str(live_dir / "out/final/model.safetensors"))
    wb = load_file(str(cache_run / "out/final/model.safetensors"))
    # AdamW scales each element's step to about lr whatever its gradient's size, so an element whose
    # gradient is ~0 can step +lr in one run and -lr in the other from float noise alone (the cache
    # path computes the teacher's log-probs in another order). Nearly all elements must agree.
    off = sum(int(((wa[k] - wb[k]).abs() > 1e-5).sum()) for k in wa)
    assert off <= 1e-3 * sum(w.numel() for w in wa.values())


def test_cache_for_other_settings_is_refused(tmp_path, run_env, cached, capsys):
    _, _, cache_dir = cached
    cfg = write_config(tmp_path / "c.yaml", run_env, loss="fkl", max_steps=1)
    assert main(["train", str(cfg), f"teacher.cache={cache_dir}", "data.max_length=100"]) == 2
    assert "max_length" in capsys.readouterr().err


def test_interrupted_caching_resumes_only_missing_shards(tmp_path, cached):
    _, cfg, cache_dir = cached
    shards = sorted(cache_dir.glob("shard-*.safetensors"))
    assert len(shards) == 3  # 24 samples, 8 per shard
    before = {p.name: (p.stat().st_mtime_ns, read_shard(p)) for p in shards}
    # Simulate a crash before the second shard and the index were written.
    shards[1].unlink()
    (cache_dir / "index.json").unlink()
    assert main(["cache-teacher", str(cfg), "--output", str(cache_dir), "--top-k", "100000",
                 "--dtype", "float32", "--shard-size", "8"]) == 0
    assert (cache_dir / "index.json").is_file()
    for p in sorted(cache_dir.glob("shard-*.safetensors")):
        ids, rows = read_shard(p)
        old_mtime, (old_ids, old_rows) = before[p.name]
        assert ids == old_ids and all(torch.equal(rows[k], old_rows[k]) for k in rows)
        assert (p.stat().st_mtime_ns == old_mtime) == (p.name != shards[1].name)
