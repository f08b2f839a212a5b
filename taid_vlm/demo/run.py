"""``taid-vlm demo``: the whole job on the built-in synthetic set, end to end.

Stages (each reused on a re-run unless ``--fresh``): synthetic data -> BPE tokenizer -> teacher
VLM trained by SFT -> students distilled with TAID and forward KL, and an SFT student, same data,
steps and seed -> VQA/caption evaluation of all four -> table and plots under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import METHODS, PRESETS


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def stage_data(out: Path, preset: dict, seed: int) -> dict[str, str]:
    """Synthetic images + LLaVA train JSON + VQA/caption eval files, and the tokenizer."""
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    data_dir, tok_dir = out / "data", out / "tokenizer"
    paths_file = data_dir / "paths.json"
    if not paths_file.is_file():
        _log(f"generating the synthetic set in {data_dir}")
        paths = generate_synthetic(data_dir, seed=seed, **preset["data"])
        paths_file.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    paths = json.loads(paths_file.read_text())
    if not (tok_dir / "tokenizer.json").is_file():
        _log("training the BPE tokenizer on the set's text")
        tok = train_bpe_tokenizer(synthetic_corpus(data_dir), vocab_size=preset["tokenizer_vocab"])
        tok.save_pretrained(tok_dir)
    paths["tokenizer"] = str(tok_dir)
    return paths


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in recursively (new dict; inputs untouched)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_config(run_dir: Path, paths: dict, student: dict, train: dict, loss: str, seed: int,
                 teacher_path: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config dict of one demo/study run (a composed student on the synthetic set)."""
    cfg: dict[str, Any] = {
        "student": {"family": "composed", "config": student, "tokenizer": paths["tokenizer"]},
        "data": {"train": paths["train"], "max_length": 256},
        "loss": {"name": loss},
        "train": {"output_dir": str(run_dir), "seed": seed, "scheduler": "cosine", "save_every": 0,
                  "keep_last": 1, "cpu": True, **train},
        "logging": {"report_to": []},
    }
    if teacher_path:
        cfg["teacher"] = {"family": "composed", "path": teacher_path}
    return deep_merge(cfg, overrides or {})


def stage_train(run_dir: Path, cfg_dict: dict[str, Any], label: str) -> float:
    """Train one model unless a finished run of the same config exists; returns the train time in
    seconds. A folder holding an unfinished run, or a run of another config, is trained afresh."""
    import yaml

    from taid_vlm.config_io import config_from_dict, config_to_dict
    from taid_vlm.train.loop import train
    from taid_vlm.train.setup import RUN_MARKER

    cfg = config_from_dict(cfg_dict)
    done = run_dir / "final" / "metrics.json"
    timing = run_dir / "train_time.json"
    marker = run_dir / RUN_MARKER
    if done.is_file() and timing.is_file() and marker.is_file():
        if yaml.safe_load(marker.read_text()) == config_to_dict(cfg):
            _log(f"{label}: reusing {run_dir / 'final'}")
            return json.loads(timing.read_text())["seconds"]
        _log(f"{label}: {run_dir} holds a run of another config; training again")
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished or different earlier run
    _log(f"{label}: training ({cfg_dict['loss']['name']}, {cfg_dict['train']['max_steps']} steps)")
    t0 = time.time()
    train(cfg)
    seconds = time.time() - t0
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


def stage_eval(model_dir: Path, paths: dict, preset: dict, result_file: Path) -> dict[str, Any]:
    """VQA + caption scores of one saved model (reused when the result file is newer)."""
    if result_file.is_file() and result_file.stat().st_mtime >= (model_dir / "metrics.json").stat().st_mtime:
        return json.loads(result_file.read_text())
    from taid_vlm.adapters import build_adapter
    from taid_vlm.evaluation import evaluate_file

    adapter = build_adapter("composed", path=str(model_dir))
    ev = preset["eval"]
    # The synthetic training data asks the bare question, so the evaluation does too.
    vqa = evaluate_file(adapter, paths["val_vqa"], task="vqa", limit=ev["limit"], prompt="{question}",
                        max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"])
    cap = evaluate_file(adapter, paths["val_caption"], task="caption", limit=ev["limit"],
                        max_new_tokens=ev["max_new_tokens"] * 2, batch_size=ev["batch_size"])
    params = sum(p.numel() for p in adapter.model.parameters())
    result = {"vqa": vqa, "caption": cap, "params": params}
    result_file.write_text(json.dumps(result, indent=2))
    return result


def blind_baseline(paths: dict, limit: int) -> float:
    """VQA accuracy of answering each question with its most common training answer, image unseen.

    This is the "chance" level a model reaches from the question text alone.
    """
    from taid_vlm.evaluation.vqa import vqa_accuracy

    train = json.loads(Path(paths["train"]).read_text())
    answers: dict[str, Counter] = defaultdict(Counter)
    for rec in train:
        turns = rec["conversations"]
        for q, a in zip(turns[::2], turns[1::2]):
            answers[q["value"].replace("<image>", "").strip()][a["value"].strip()] += 1
    overall = Counter(a for c in answers.values() for a in c.elements())
    val = json.loads(Path(paths["val_vqa"]).read_text())[:limit]
    scores = []
    for rec in val:
        prior = answers.get(rec["question"].strip()) or overall
        scores.append(vqa_accuracy(prior.most_common(1)[0][0], rec["answers"]))
    return sum(scores) / max(1, len(scores))


def demo_main(argv: list[str] | None = None) -> int:
    """``taid-vlm demo [--output DIR] [--preset default|tiny] [--fresh] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="taid-vlm demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo_output", help="folder for data, models, results")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--fresh", action="store_true", help="redo every stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="taid,fkl,sft", help="students to train, from " + ",".join(METHODS))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    out, preset = Path(args.output), PRESETS[args.preset]
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    paths = stage_data(out, preset, args.seed)
    teacher_dir = out / "teacher"
    times = {"teacher": stage_train(teacher_dir, train_config(
        teacher_dir, paths, preset["teacher"], preset["teacher_train"], "sft", args.seed, None), "teacher")}
    for m in methods:
        run = out / f"student_{m}"
        teacher = None if m == "sft" else str(teacher_dir / "final")
        cfg = train_config(run, paths, preset["student"], preset["student_train"], m, args.seed, teacher)
        times[f"student_{m}"] = stage_train(run, cfg, f"student ({METHODS[m]})")
    (out / "results").mkdir(exist_ok=True)
    results = {}
    for name in times:
        _log(f"evaluating {name}")
        results[name] = stage_eval(out / name / "final", paths, preset, out / "results" / f"{name}.json")
    from taid_vlm.demo.report import write_report

    chance = blind_baseline(paths, preset["eval"]["limit"])
    table = write_report(out, results, times, chance, preset, args)
    print(table)
    _log(f"done in {time.time() - t0:.0f} s; report: {out / 'report.md'}")
    return 0
