"""``taid-vlm demo``: the whole job on the built-in synthetic set, end to end.

Stages (each reused on a re-run unless ``--fresh``): synthetic data (the students' part of the set
the shipped teacher was built on: see ``teachers.py``) -> the teacher's outputs on it, cached once
-> students on the shipped teacher's frozen vision tower, distilled from that teacher with TAID and
forward KL, and SFT students, the preset's seeds each (per seed the same data order and init for
every method) -> evaluation of all of them on the held-out set (VQA accuracy, captions, response
NLL, agreement with the teacher) -> table with intervals over seeds, differences paired by seed,
verdicts and plots under ``--output``.
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


def make_set(out: Path, data: dict[str, Any], seed: int, tokenizer_vocab: int | None = None) -> dict[str, str]:
    """Generate the synthetic set of ``data`` (``n_train``, ``n_val``, ``image_size``, optional
    ``questions``) into
    ``out / "data"`` unless a set of the same settings is there, and train a BPE tokenizer on its
    text into ``out / "tokenizer"`` when ``tokenizer_vocab`` is given. Returns the paths (see
    ``generate_synthetic``; ``tokenizer`` too when trained). A folder generated with other settings is
    generated again; the runs trained on the old set then retrain, as their reuse keys hold the
    data files' contents (``stage_train``)."""
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    data_dir, tok_dir = out / "data", out / "tokenizer"
    spec = {**data, "seed": seed, "tokenizer_vocab": tokenizer_vocab}
    paths_file = data_dir / "paths.json"
    if paths_file.is_file() and json.loads(paths_file.read_text()).get("spec") != spec:
        _log(f"{data_dir} holds a set of other settings; generating it again")
        for d in (data_dir, tok_dir):
            shutil.rmtree(d, ignore_errors=True)
    if not paths_file.is_file():
        _log(f"generating the synthetic set in {data_dir}")
        paths = {k: str(v) for k, v in generate_synthetic(data_dir, seed=seed, n_train=data["n_train"],
                                                          n_val=data["n_val"], image_size=data["image_size"],
                                                          questions=data.get("questions", 0)).items()}
        paths_file.write_text(json.dumps({**paths, "spec": spec}))
    paths = {k: v for k, v in json.loads(paths_file.read_text()).items() if k != "spec"}
    if tokenizer_vocab:
        if not (tok_dir / "tokenizer.json").is_file():
            _log("training the BPE tokenizer on the set's text")
            train_bpe_tokenizer(synthetic_corpus(data_dir), vocab_size=tokenizer_vocab).save_pretrained(tok_dir)
        paths["tokenizer"] = str(tok_dir)
    return paths


def stage_data(out: Path, preset: dict) -> dict[str, str]:
    """The students' part of the teachers' set (its first ``preset["data"]["n_train"]`` training
    images, the first ``n_val`` held-out ones), and the preset teacher's tokenizer as ``tokenizer``
    (students and teacher share the vocabulary) and the teacher itself as ``teacher``."""
    from taid_vlm.demo.presets import TEACHER_DATA
    from taid_vlm.demo.teachers import teacher_dir

    data = preset["data"]
    if data["n_train"] > TEACHER_DATA["n_train"] or data["image_size"] != TEACHER_DATA["image_size"]:
        raise ValueError(f"preset data {data}: the students' images must be a part of the teachers' set "
                         f"{TEACHER_DATA}")
    teacher = teacher_dir(preset["teacher"])
    if "questions" in TEACHER_DATA:  # the students' records are a prefix of the teachers' only if asked alike
        data = {**data, "questions": TEACHER_DATA["questions"]}
    paths = make_set(out, data, TEACHER_DATA["seed"])
    return {**paths, "tokenizer": str(teacher), "teacher": str(teacher), "tower": str(teacher_dir(preset["tower"]))}


def student_spec(preset: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """The preset's student model dict with its vision tower taken from the shipped model
    ``paths["tower"]`` (``vision.from_model``: architecture and weights)."""
    return {**preset["student"], "vision": {"from_model": paths["tower"]}}


def stage_teacher_cache(out: Path, paths: dict[str, str], preset: dict[str, Any], teacher: str) -> Path:
    """The teacher's next-token distributions on the students' training set, computed once and
    reused by every distilled student of the run: all ``V`` tokens (top-k with k = the vocabulary,
    float32), so a student reads the teacher's full distribution from the cache instead of running
    the teacher at every step. Kept in ``out / "teacher_cache_<name>"``; made again when its reuse
    key (the teacher's, the tokenizer's and the data's contents and settings: ``cache_key``)
    differs from the one it was made with."""
    from transformers import AutoTokenizer

    from taid_vlm.cache.writer import cache_key, cache_teacher
    from taid_vlm.config_io import config_from_dict
    from taid_vlm.demo.teachers import teacher_dir
    from taid_vlm.run_key import reuse_verdict

    cache = out / f"teacher_cache_{teacher}"
    tdir = teacher_dir(teacher)
    cfg = config_from_dict(student_config(out / "unused", paths, preset, "fkl", 0, str(tdir), None))
    vocab = len(AutoTokenizer.from_pretrained(str(tdir)))
    why = reuse_verdict(cache, cache_key(cfg, top_k=vocab, dtype="float32"))
    if (cache / "index.json").is_file() and not why:
        _log(f"teacher cache {teacher}: reusing {cache}")
        return cache
    if cache.exists():
        _log(f"teacher cache {teacher}: {cache} was made from other inputs ({'; '.join(why)})")
    _log(f"teacher cache {teacher}: running the teacher once over the students' set")
    cache_teacher(cfg, cache, top_k=vocab, dtype="float32", batch_size=preset["eval"]["batch_size"])
    return cache


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in recursively (new dict; inputs untouched)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_config(run_dir: Path, paths: dict, student: dict, train: dict, loss: str, seed: int,
                 teacher_path: str | None, overrides: dict[str, Any] | None = None,
                 teacher_cache: str | None = None, student_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config dict of one demo/study run (a composed model trained on ``paths["train"]``);
    with ``teacher_cache`` the distilled student reads the teacher's outputs from that cache.
    ``student_options``: other keys of the ``student`` section (e.g. ``train_vision``)."""
    cfg: dict[str, Any] = {
        "student": {"family": "composed", "config": student, "tokenizer": paths["tokenizer"],
                    **(student_options or {})},
        # One loader process: decoding the images and rendering the chat template cost about as much as
        # a small model's step on a CPU (profiled: 0.26 s against 0.35 s per batch of 32), so on two
        # cores the worker prepares the next batch while the step runs (after the first epoch it
        # mostly serves the encoding cache).
        "data": {"train": paths["train"], "max_length": 256, "num_workers": 1},
        "loss": {"name": loss},
        "train": {"output_dir": str(run_dir), "seed": seed, "scheduler": "cosine", "save_every": 0,
                  "keep_last": 1, "cpu": True, **train},
        "logging": {"report_to": []},
    }
    if teacher_path:
        cfg["teacher"] = {"family": "composed", "path": teacher_path}
        if teacher_cache:
            cfg["teacher"]["cache"] = teacher_cache
    return deep_merge(cfg, overrides or {})


def student_config(run_dir: Path, paths: dict, preset: dict[str, Any], loss: str, seed: int,
                   teacher_path: str | None, teacher_cache: str | None,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``train_config`` of one of the preset's students (its tower from ``paths["tower"]``, its
    options), distilled from ``teacher_path`` (through ``teacher_cache`` when given) or SFT."""
    return train_config(run_dir, paths, student_spec(preset, paths), preset["student_train"], loss, seed,
                        teacher_path, overrides, teacher_cache=teacher_cache if teacher_path else None,
                        student_options=preset.get("student_options"))


def stage_train(run_dir: Path, cfg_dict: dict[str, Any], label: str) -> float:
    """Train one model unless a finished run with the same reuse key exists (``run_key``: the
    resolved config plus the contents of the weights, tokenizer and data files it names); returns
    the train time in seconds. A folder holding an unfinished run, or a run of other inputs, is
    trained afresh, and the log says what changed."""
    from taid_vlm.config_io import config_from_dict, config_to_dict
    from taid_vlm.run_key import reuse_key, reuse_verdict, write_key
    from taid_vlm.train.loop import train

    cfg = config_from_dict(cfg_dict)
    key = reuse_key(config_to_dict(cfg))
    done = run_dir / "final" / "metrics.json"
    timing = run_dir / "train_time.json"
    if done.is_file() and timing.is_file():
        why = reuse_verdict(run_dir, key)
        if not why:
            _log(f"{label}: reusing {run_dir / 'final'}")
            return json.loads(timing.read_text())["seconds"]
        _log(f"{label}: {run_dir} holds a run of another config or other inputs; training again. Changed: "
             + "; ".join(why))
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished or different earlier run
    _log(f"{label}: training ({cfg_dict['loss']['name']}, {cfg_dict['train']['max_steps']} steps)")
    t0 = time.time()
    train(cfg)
    seconds = time.time() - t0
    write_key(run_dir, key)
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


def stage_eval(model_dir: Path, paths: dict, preset: dict, result_file: Path) -> dict[str, Any]:
    """Scores of one saved model, reused while the model's files, the held-out files and the
    preset's evaluation settings are the ones they were made from (their reuse key, kept in
    ``result_file``).

    Returns ``{"vqa", "caption", "nll": scores, "params", "items"}``; ``items`` holds the per-item
    values the intervals resample: ``vqa`` ``[N]`` accuracy and ``pred`` ``[N]`` answers of the
    first ``eval.limit`` held-out questions, ``nll`` / ``tokens`` ``[M]`` per-conversation mean
    response NLL (teacher forcing, no generation) and response tokens of the held-out
    conversations (``val.json``, VQA turns and captions).
    """
    from taid_vlm.run_key import key_changes, reuse_key

    key = reuse_key({"model": str(model_dir), "eval": preset["eval"],
                     "held_out": [paths["val_vqa"], paths["val_caption"], paths["val"]]})
    if result_file.is_file():
        kept = json.loads(result_file.read_text())
        if "reuse_key" in kept and not key_changes(kept.pop("reuse_key"), key):
            return kept
    from taid_vlm.adapters import build_adapter
    from taid_vlm.evaluation import evaluate, load_task_samples
    from taid_vlm.evaluation.caption import METRICS as CAPTION_METRICS
    from taid_vlm.evaluation.text import perplexity

    adapter = build_adapter("composed", path=str(model_dir))
    ev = preset["eval"]
    samples, _ = load_task_samples(paths["val_vqa"], "vqa", limit=ev["limit"])
    # The synthetic training data asks the bare question, so the evaluation does too.
    vqa = evaluate(adapter, samples, "vqa", prompt="{question}", max_new_tokens=ev["max_new_tokens"],
                   batch_size=ev["batch_size"])
    caps, _ = load_task_samples(paths["val_caption"], "caption", limit=ev.get("caption_limit", ev["limit"]))
    # The report shows CIDEr and BLEU-4; METEOR (a JVM per call) would be a third of the evaluation time.
    cap = evaluate(adapter, caps, "caption", max_new_tokens=ev["max_new_tokens"] * 2, batch_size=ev["batch_size"],
                   caption_metrics=tuple(m for m in CAPTION_METRICS if m != "METEOR"))
    convs, _ = load_task_samples(paths["val"], "text", limit=ev["limit"])
    nll, per_conv = perplexity(adapter, convs, batch_size=ev["batch_size"], max_length=256)
    per_conv = [p for p in per_conv if "skipped" not in p]
    items = {"vqa": [p["scores"]["vqa_accuracy"] for p in vqa["predictions"]],
             "pred": [p["prediction"] for p in vqa["predictions"]],
             "nll": [p["nll"] for p in per_conv], "tokens": [p["num_tokens"] for p in per_conv]}
    params = sum(p.numel() for p in adapter.model.parameters())
    result = {"vqa": vqa["scores"], "caption": cap["scores"], "nll": nll, "params": params, "items": items}
    result_file.write_text(json.dumps({**result, "reuse_key": key}, indent=1))
    return result


def demo_main(argv: list[str] | None = None) -> int:
    """``taid-vlm demo [--output DIR] [--preset default|tiny] [--fresh] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="taid-vlm demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo_output", help="folder for data, models, results")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--fresh", action="store_true", help="redo every stage")
    parser.add_argument("--seed", type=int, default=0, help="the students' first training seed (the data and teacher "
                        "are fixed)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default: the preset's)")
    parser.add_argument("--methods", default="taid,fkl,sft", help="students to train, from " + ",".join(METHODS))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    # Absolute, as a Study's work folder is: the runs' configs name their paths (reuse compares the
    # files' contents, so either spelling reuses; the saved configs then agree too).
    out, preset = Path(args.output).resolve(), PRESETS[args.preset]
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    paths = stage_data(out, preset)
    stages = {"data": time.time() - t0}  # wall seconds of this invocation's stages (reused ones ~0)
    from taid_vlm.demo.teachers import build_info

    _log(f"teacher: the shipped demo teacher {preset['teacher']} ({paths['teacher']}; built by "
         "eval/build_demo_teachers.py)")
    times = {"teacher": build_info(preset["teacher"])["train_seconds"]}
    models = {"teacher": Path(paths["teacher"])}
    cache = None
    if preset.get("teacher_cache") and any(m != "sft" for m in methods):
        t_cache = time.time()
        cache = str(stage_teacher_cache(out, paths, preset, preset["teacher"]))
        stages["teacher_cache"] = time.time() - t_cache
    seeds = range(args.seed, args.seed + (args.seeds or preset.get("seeds", 1)))
    runs: dict[str, list[str]] = {m: [] for m in methods}  # method -> its runs' names, one per seed
    for seed in seeds:  # seed-major: an interrupted demo leaves whole seeds behind
        for m in methods:
            name = f"student_{m}_s{seed}"
            teacher = None if m == "sft" else paths["teacher"]
            cfg = student_config(out / name, paths, preset, m, seed, teacher, cache)
            times[name] = stage_train(out / name, cfg, f"student ({METHODS[m]}, seed {seed})")
            models[name] = out / name / "final"
            runs[m].append(name)
    (out / "results").mkdir(exist_ok=True)
    results = {}
    for name, model_dir in models.items():
        _log(f"evaluating {name}")
        t_eval = time.time()
        results[name] = stage_eval(model_dir, paths, preset, out / "results" / f"{name}.json")
        stages[f"eval_{name}"] = time.time() - t_eval
    from taid_vlm.demo.report import write_report
    from taid_vlm.demo.scoring import blind_prior

    # The prior of a model that reads the students' questions and labels but never the image.
    prior = blind_prior(paths["train"], paths["val_vqa"], preset["eval"]["limit"])
    stages.update({f"train_{k}": v for k, v in times.items() if k != "teacher"})
    stages["total"] = time.time() - t0
    types = [r.get("question_type", "all") for r in json.loads(Path(paths["val_vqa"]).read_text())]
    text = write_report(out, results, runs, times, prior, preset, args, stages,
                        question_types=types[: len(prior)])
    print(text)
    _log(f"done in {time.time() - t0:.0f} s; report: {out / 'report.md'}")
    return 0
