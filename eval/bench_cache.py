"""Teacher cache: bytes per response token, step time from cache vs live teacher, quality gap.

    python eval/bench_cache.py            # default demo models
    python eval/bench_cache.py --quick    # tiny preset (used by a test)

Writes ``bench_cache.json`` to --output. Live and cached runs train the same TAID student with the
same data, steps and seed; the only difference is where the teacher distribution comes from.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from taid_vlm.cache import cache_teacher
from taid_vlm.cache.writer import cache_key
from taid_vlm.config_io import config_from_dict
from taid_vlm.demo.run import student_config
from taid_vlm.demo.studies import open_study, provenance, study_parser
from taid_vlm.run_key import reuse_verdict
from taid_vlm.train.run_log import read_log


def _step_seconds(run: Path) -> float:
    """Median optimizer-step time of a run (tokens / tokens-per-second of each logged step)."""
    log = read_log(run / "logs" / "train.jsonl")
    return statistics.median(r["tokens"] / r["tokens_per_s"] for r in log if r.get("tokens_per_s"))


def _response_tokens(cache_dir: Path) -> int:
    from taid_vlm.cache.format import read_shard

    return sum(int(read_shard(p)[1]["targets"].numel()) for p in cache_dir.glob("shard-*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/bench_cache")
    ap.add_argument("--top-k", type=int, default=64)
    args = ap.parse_args(argv)
    study = open_study(args)
    teacher = study.teacher()
    cache_dir = study.work / f"cache_k{args.top_k}"
    t0 = time.perf_counter()
    cfg = config_from_dict(student_config(study.work / "cache_cfg", study.paths, study.preset, "taid", 0,
                                          str(teacher), None))
    # Made again when the teacher, tokenizer or data changed since (its reuse key: run_key).
    if not (cache_dir / "index.json").is_file() or reuse_verdict(cache_dir, cache_key(cfg, top_k=args.top_k,
                                                                                       dtype="float16")):
        cache_teacher(cfg, cache_dir, top_k=args.top_k)
    cache_seconds = time.perf_counter() - t0
    n_tokens = _response_tokens(cache_dir)
    shard_bytes = sum(p.stat().st_size for p in cache_dir.glob("shard-*.safetensors"))
    # The preset's own full-vocabulary cache is switched off: this row runs the teacher at every step.
    live = study.student("taid", 0, teacher, name="student_live", overrides={"teacher": {"cache": None}})
    cached = study.student("taid", 0, teacher, name="student_cached",
                           overrides={"teacher": {"cache": str(cache_dir)}})
    report = {
        **provenance(argv, "eval/bench_cache.py"), "preset": study.preset_name, "top_k": args.top_k,
        "response_tokens": n_tokens, "bytes_per_response_token": shard_bytes / max(1, n_tokens),
        "bytes_goal": 400, "cache_seconds": cache_seconds,
        "step_seconds_live": _step_seconds(study.run_dir(live)),
        "step_seconds_cached": _step_seconds(study.run_dir(cached)),
        "live": live, "cached": cached,
        "vqa_gap": cached["vqa_accuracy"] - live["vqa_accuracy"], "cider_gap": cached["cider"] - live["cider"],
    }
    report["step_time_ratio_cached_over_live"] = report["step_seconds_cached"] / report["step_seconds_live"]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cache.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
