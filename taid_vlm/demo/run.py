"""``taid-vlm demo``: the whole job on the built-in synthetic set, end to end.

Stages (each reused on a re-run unless ``--fresh``): synthetic data (the teacher's training set and
the students' smaller part of it) -> BPE tokenizer -> teacher VLM trained by SFT on its set ->
students distilled with TAID and forward KL, and an SFT student, same data, steps and seed ->
evaluation of all four on the held-out set (VQA accuracy, captions, response NLL, agreement with
the teacher) -> table with bootstrap 95% intervals, paired differences, verdicts and plots under
``--output``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import METHODS, PRESETS


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def stage_data(out: Path, preset: dict, seed: int) -> dict[str, str]:
    """Synthetic images + LLaVA train JSON + VQA/caption eval files, and the tokenizer.

    ``preset["data"]["n_student"]`` (optional): the students train on the first ``n_student``
    training records only, the teacher on all of them (a teacher that has seen more than the
    students' labels). ``paths["train"]`` is the students' file, ``paths["train_teacher"]`` the
    teacher's. A folder generated with other data settings is generated again.
    """
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    data_dir, tok_dir = out / "data", out / "tokenizer"
    spec = {**preset["data"], "seed": seed, "tokenizer_vocab": preset["tokenizer_vocab"]}
    gen = {k: v for k, v in preset["data"].items() if k != "n_student"}
    paths_file = data_dir / "paths.json"
    if paths_file.is_file() and json.loads(paths_file.read_text()).get("spec") != spec:
        from taid_vlm.train.setup import RUN_MARKER

        # Runs keep the data by path, so a run made on the old set would pass for one on the new.
        stale = sorted(d for d in out.iterdir() if (d / RUN_MARKER).is_file())
        _log(f"{data_dir} holds a set of other settings; generating it again and removing "
             f"the {len(stale)} runs trained on it")
        for d in [data_dir, tok_dir, *stale]:
            shutil.rmtree(d, ignore_errors=True)
    if not paths_file.is_file():
        _log(f"generating the synthetic set in {data_dir}")
        paths = {k: str(v) for k, v in generate_synthetic(data_dir, seed=seed, **gen).items()}
        paths["train_teacher"] = paths["train"]
        if preset["data"].get("n_student"):
            records = json.loads(Path(paths["train"]).read_text())
            paths["train"] = str(data_dir / "train_student.json")
            Path(paths["train"]).write_text(json.dumps(records[:preset["data"]["n_student"]], indent=1) + "\n")
        paths_file.write_text(json.dumps({**paths, "spec": spec}))
    paths = {k: v for k, v in json.loads(paths_file.read_text()).items() if k != "spec"}
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
                 teacher_path: str | None, overrides: dict[str, Any] | None = None,
                 train_file: str | None = None) -> dict[str, Any]:
    """The config dict of one demo/study run (a composed model on the synthetic set); it trains on
    ``train_file`` (default: the students' file ``paths["train"]``)."""
    cfg: dict[str, Any] = {
        "student": {"family": "composed", "config": student, "tokenizer": paths["tokenizer"]},
        "data": {"train": train_file or paths["train"], "max_length": 256},
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
    """Scores of one saved model, reused when the result file is newer than the model.

    Returns ``{"vqa", "caption", "nll": scores, "params", "items"}``; ``items`` holds the per-item
    values the intervals resample: ``vqa`` ``[N]`` accuracy and ``pred`` ``[N]`` answers of the
    first ``eval.limit`` held-out questions, ``nll`` / ``tokens`` ``[M]`` per-conversation mean
    response NLL (teacher forcing, no generation) and response tokens of the held-out
    conversations (``val.json``, VQA turns and captions).
    """
    if result_file.is_file() and result_file.stat().st_mtime >= (model_dir / "metrics.json").stat().st_mtime:
        return json.loads(result_file.read_text())
    from taid_vlm.adapters import build_adapter
    from taid_vlm.evaluation import evaluate, load_task_samples
    from taid_vlm.evaluation.text import perplexity

    adapter = build_adapter("composed", path=str(model_dir))
    ev = preset["eval"]
    samples, _ = load_task_samples(paths["val_vqa"], "vqa", limit=ev["limit"])
    # The synthetic training data asks the bare question, so the evaluation does too.
    vqa = evaluate(adapter, samples, "vqa", prompt="{question}", max_new_tokens=ev["max_new_tokens"],
                   batch_size=ev["batch_size"])
    caps, _ = load_task_samples(paths["val_caption"], "caption", limit=ev.get("caption_limit", ev["limit"]))
    cap = evaluate(adapter, caps, "caption", max_new_tokens=ev["max_new_tokens"] * 2, batch_size=ev["batch_size"])
    convs, _ = load_task_samples(paths["val"], "text", limit=ev["limit"])
    nll, per_conv = perplexity(adapter, convs, batch_size=ev["batch_size"], max_length=256)
    per_conv = [p for p in per_conv if "skipped" not in p]
    items = {"vqa": [p["scores"]["vqa_accuracy"] for p in vqa["predictions"]],
             "pred": [p["prediction"] for p in vqa["predictions"]],
             "nll": [p["nll"] for p in per_conv], "tokens": [p["num_tokens"] for p in per_conv]}
    params = sum(p.numel() for p in adapter.model.parameters())
    result = {"vqa": vqa["scores"], "caption": cap["scores"], "nll": nll, "params": params, "items": items}
    result_file.write_text(json.dumps(result, indent=1))
    return result


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
    stages = {"data": time.time() - t0}  # wall seconds of this invocation's stages (reused ones ~0)
    teacher_dir = out / "teacher"
    times = {"teacher": stage_train(teacher_dir, train_config(
        teacher_dir, paths, preset["teacher"], preset["teacher_train"], "sft", args.seed, None,
        train_file=paths["train_teacher"]), "teacher")}
    for m in methods:
        run = out / f"student_{m}"
        teacher = None if m == "sft" else str(teacher_dir / "final")
        cfg = train_config(run, paths, preset["student"], preset["student_train"], m, args.seed, teacher)
        times[f"student_{m}"] = stage_train(run, cfg, f"student ({METHODS[m]})")
    (out / "results").mkdir(exist_ok=True)
    results = {}
    for name in times:
        _log(f"evaluating {name}")
        t_eval = time.time()
        results[name] = stage_eval(out / name / "final", paths, preset, out / "results" / f"{name}.json")
        stages[f"eval_{name}"] = time.time() - t_eval
    from taid_vlm.demo.report import write_report
    from taid_vlm.demo.scoring import blind_prior

    prior = blind_prior(paths["train_teacher"], paths["val_vqa"], preset["eval"]["limit"])
    stages.update({f"train_{k}": v for k, v in times.items()})
    stages["total"] = time.time() - t0
    text = write_report(out, results, times, prior, preset, args, stages)
    print(text)
    _log(f"done in {time.time() - t0:.0f} s; report: {out / 'report.md'}")
    return 0
