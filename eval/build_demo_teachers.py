"""Build the demo's teachers (S, M, L) once, on the synthetic set or on any LLaVA-format set.

    python eval/build_demo_teachers.py                  # all three, into taid_vlm/demo/teachers/
    python eval/build_demo_teachers.py --teachers M     # one of them
    python eval/build_demo_teachers.py --train DATA.json [--image-root DIR] [--held-out-vqa VQA.json] \\
        --teachers M --dest teachers_on_my_set/         # the same recipe on another set
    python eval/build_demo_teachers.py --recipe R.json --teachers M --dest candidates/   # another recipe

Each teacher is trained by SFT with the model, steps and stopping rule of ``presets.TEACHERS`` and
saved with its tokenizer (a BPE tokenizer trained here on the set's text: every teacher and student
of a set shares it) and a ``build.json``: the settings, command, date, machine, train time and
scores.

Without ``--train`` the set is the synthetic one of ``TEACHER_DATA`` (its first ``n_train``
training images), the teachers are scored on its held-out questions and go into the package, where
``make demo`` and the eval/ studies load them instead of training a teacher (on two CPU cores that
would take longer than the whole demo may).

With ``--train`` the set is any LLaVA-format file (JSON or JSONL records with ``image`` and
``conversations``; image paths relative to ``--image-root``, default the file's folder). The
teachers go to ``--dest``; with ``--held-out-vqa`` (VQA records: ``image``, ``question``,
``answers``, optionally ``question_type``) they are scored on it, by type when types are given.

The stopping rule (a recipe's ``stop``: ``carve`` images, ``every``, ``patience``) never looks at a
test split: the last ``carve`` images of the training set (all their records) are held back as a
validation split, the validation loss on them is measured every ``every`` steps, training stops
after ``patience`` evaluations without improvement, and the teacher that ships is the one of the
best evaluation. A recipe without ``stop`` trains its ``max_steps`` on every training image.

``--recipe R.json`` builds another recipe than the presets' (a candidate): a JSON object with
``teachers`` (name -> ``model``, ``train``, optional ``stop``) and optionally ``data`` (the synthetic
set's settings, as ``TEACHER_DATA``). Its ``build.json`` holds that spec, so a candidate chosen
later ships as built once ``presets.py`` says the same.

Rebuilding gives the same weights only on the same torch build and thread count (floating-point
order); the demo checks the settings, not the bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import PRESETS, TEACHER_DATA, TEACHERS
from taid_vlm.demo.report import mean_by_type
from taid_vlm.demo.run import make_set, stage_eval, stage_train, train_config
from taid_vlm.demo.studies import provenance, study_parser
from taid_vlm.demo.teachers import BUILD_FILE, SHIPPED


def carve_by_image(records: list[dict[str, Any]], n_images: int) -> tuple[list[dict], list[dict]]:
    """Split ``records`` into ``(fit, carved)``: ``carved`` holds every record of the last
    ``n_images`` distinct images (in file order), so no image is in both. Records without an image
    stay in ``fit``.

    Raises:
        ValueError: ``n_images`` leaves no image to train on.
    """
    images = list(dict.fromkeys(r["image"] for r in records if isinstance(r.get("image"), str)))
    if n_images <= 0:
        return list(records), []
    if n_images >= len(images):
        raise ValueError(f"stop.carve = {n_images} images leaves none of the set's {len(images)} to train on")
    held = set(images[-n_images:])
    fit = [r for r in records if r.get("image") not in held]
    carved = [r for r in records if r.get("image") in held]
    return fit, carved


def conversation_texts(records: list[dict[str, Any]]) -> list[str]:
    """Every turn's text of LLaVA records, ``<image>`` removed (a tokenizer's training corpus)."""
    return [t["value"].replace("<image>", "").strip() for r in records for t in r.get("conversations", ())]


def _read_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA records")
    return data


def custom_set(work: Path, train: Path, image_root: Path | None) -> dict[str, str]:
    """Paths of a build on a LLaVA file: the file itself as ``train``, its image folder as
    ``image_root`` and a BPE tokenizer trained on its text (``TEACHER_DATA``'s vocabulary size)."""
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    records = _read_records(train)
    tok = work / "tokenizer"
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    stamp = tok / "source.sha256"
    if not stamp.is_file() or stamp.read_text() != digest:
        shutil.rmtree(tok, ignore_errors=True)
        # The chat roles and the system prompt are in every rendered conversation.
        corpus = conversation_texts(records) + ["system user assistant", "You are a helpful assistant."]
        train_bpe_tokenizer(corpus, vocab_size=TEACHER_DATA["tokenizer_vocab"]).save_pretrained(tok)
        stamp.write_text(digest)
    return {"train": str(train), "tokenizer": str(tok), "image_root": str(image_root or train.parent)}


def stopping_overrides(work: Path, paths: dict[str, str], stop: dict[str, Any]) -> tuple[dict, dict, dict]:
    """The training file, the config overrides and the record of a recipe's stopping rule
    (see the module docstring): ``(paths with the carved train file, overrides, summary)``."""
    if not stop:
        return paths, {}, {}
    records = _read_records(Path(paths["train"]))
    fit, carved = carve_by_image(records, int(stop["carve"]))
    split = work / "carved"
    split.mkdir(parents=True, exist_ok=True)
    (split / "fit.json").write_text(json.dumps(fit))
    (split / "val.json").write_text(json.dumps(carved))
    # Images stay where they are: the carved files resolve them from the original folder.
    root = paths.get("image_root") or str(Path(paths["train"]).parent)
    overrides = {"data": {"val": str(split / "val.json"), "image_root": root},
                 "eval": {"every": int(stop["every"]), "metric": "val_loss", "patience": int(stop["patience"]),
                          "keep_best": True, "max_batches": 0}}
    summary = {"fit_records": len(fit), "carved_records": len(carved), "carved_images": int(stop["carve"])}
    return {**paths, "train": str(split / "fit.json")}, overrides, summary


def _watch(run: Path) -> dict[str, Any]:
    """What the stopping rule did: final metrics' best step and whether the run stopped early, and
    the validation curve from the run's log."""
    metrics = json.loads((run / "final" / "metrics.json").read_text())["metrics"]
    log = run / "logs" / "train.jsonl"
    curve = [{"step": r["step"], "val_loss": r["val_loss"]}
             for r in map(json.loads, log.read_text().splitlines() if log.is_file() else []) if "val_loss" in r]
    return {"best_step": int(metrics.get("best_step", -1)), "stopped_early": bool(metrics.get("stopped_early")),
            "val_curve": curve}


def _vqa_by_type(model_dir: Path, vqa_file: Path, image_root: str | None) -> dict[str, Any]:
    """VQA accuracy of a saved teacher on a records file, overall and by ``question_type``."""
    from taid_vlm.adapters import build_adapter
    from taid_vlm.evaluation import evaluate, load_task_samples

    samples, _ = load_task_samples(str(vqa_file), "vqa", image_root=image_root)
    res = evaluate(build_adapter("composed", path=str(model_dir)), samples, "vqa", prompt="{question}",
                   max_new_tokens=8, batch_size=100)
    acc = [p["scores"]["vqa_accuracy"] for p in res["predictions"]]
    by_id = {r.get("id", r.get("question_id")): r.get("question_type", "all") for r in _read_records(vqa_file)}
    types = [by_id.get(p.get("id"), "all") for p in res["predictions"]]
    return {"vqa_accuracy": res["scores"]["vqa_accuracy"],
            "vqa_by_type": dict(sorted(mean_by_type(acc, types).items())), "held_out_questions": len(acc)}


def _ship(run: Path, target: Path, info: dict[str, Any]) -> None:
    shutil.rmtree(target, ignore_errors=True)
    # config.yaml is the build run's config with this machine's paths (build.json says it
    # portably). The modelling-code copies (*.py, auto_map) are left out too: the package loads
    # its own classes, and a second copy of its source in the package would drift from it.
    shutil.copytree(run / "final", target, ignore=shutil.ignore_patterns("config.yaml", "*.py"))
    for cfg_file in target.glob("*.json"):
        data = json.loads(cfg_file.read_text())
        if isinstance(data, dict) and data.pop("auto_map", None) is not None:
            cfg_file.write_text(json.dumps(data, indent=2) + "\n")
    (target / BUILD_FILE).write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/demo_teachers")
    ap.add_argument("--teachers", default=",".join(TEACHERS), help="comma list of S, M, L")
    ap.add_argument("--dest", default=None, help="where the built teachers go (default: the package's "
                    "teachers/ for the synthetic set; required with --train)")
    ap.add_argument("--train", default=None, help="a LLaVA-format training file instead of the synthetic set")
    ap.add_argument("--image-root", default=None, help="folder the --train file's image paths are relative to")
    ap.add_argument("--held-out-vqa", default=None, help="VQA records to score the teachers on (with --train)")
    ap.add_argument("--recipe", default=None, help="JSON: {teachers: {name: recipe}, data: {...}} instead of presets'")
    args = ap.parse_args(argv)
    teachers, teacher_data = dict(TEACHERS), dict(TEACHER_DATA)
    if args.recipe:
        if not args.dest:
            ap.error("--recipe: give --dest too (the package's teachers/ holds the presets' recipe)")
        recipe = json.loads(Path(args.recipe).read_text())
        teachers.update(recipe.get("teachers", {}))
        teacher_data = recipe.get("data", teacher_data)
    names = [n for n in args.teachers.split(",") if n]
    unknown = [n for n in names if n not in teachers]
    if unknown:
        ap.error(f"--teachers: unknown {unknown}; valid: {', '.join(TEACHERS)}")
    if args.train and not args.dest:
        ap.error("--train: give --dest too (the package's teachers/ holds the synthetic set's teachers)")
    if args.held_out_vqa and not args.train:
        ap.error("--held-out-vqa goes with --train (the synthetic set brings its held-out questions)")
    work = Path(args.work).resolve()
    dest = Path(args.dest or SHIPPED)
    if args.train:
        train = Path(args.train).resolve()
        if not train.is_file():
            ap.error(f"--train: {train} is not a file")
        paths = custom_set(work, train, Path(args.image_root).resolve() if args.image_root else None)
    else:
        data = {k: v for k, v in teacher_data.items() if k not in ("seed", "tokenizer_vocab")}
        paths = make_set(work, data, teacher_data["seed"], teacher_data["tokenizer_vocab"])
    preset = PRESETS["default"]
    for name in names:
        spec = teachers[name]
        run = work / f"teacher_{name}"
        run_paths, overrides, carved = stopping_overrides(work / f"split_{name}", paths, spec.get("stop", {}))
        if "image_root" in paths:
            overrides.setdefault("data", {})["image_root"] = paths["image_root"]
        cfg = train_config(run, run_paths, spec["model"], spec["train"], "sft", teacher_data["seed"], None, overrides)
        seconds = stage_train(run, cfg, f"teacher {name}")
        watch = {**carved, **_watch(run)} if carved else {}
        if args.train:
            held_out = Path(args.held_out_vqa) if args.held_out_vqa else None
            scores = _vqa_by_type(run / "final", held_out, paths["image_root"]) if held_out else {}
            info = {"spec": {"data": {"train": str(train), "sha256": hashlib.sha256(train.read_bytes()).hexdigest()},
                             **json.loads(json.dumps(spec))},
                    **provenance(argv, "eval/build_demo_teachers.py"), "train_seconds": seconds, "scores": scores}
        else:
            res = stage_eval(run / "final", paths, preset, run / "eval.json")
            types = [r["question_type"] for r in json.loads(Path(paths["val_vqa"]).read_text())]
            spec_json = json.loads(json.dumps({"data": teacher_data, **spec}))
            info = {"spec": spec_json, **provenance(argv, "eval/build_demo_teachers.py"),
                    "train_seconds": seconds, "params": res["params"],
                    "scores": {"vqa_accuracy": res["vqa"]["vqa_accuracy"], "nll": res["nll"]["nll"],
                               "cider": res["caption"]["CIDEr"] * 100,
                               "vqa_by_type": dict(sorted(mean_by_type(res["items"]["vqa"], types).items())),
                               "held_out_questions": len(res["items"]["vqa"])}}
        if watch:
            info["stopping"] = watch
        _ship(run, dest / name, info)
        print(json.dumps({"teacher": name, "train_seconds": round(seconds), **info["scores"],
                          **({"best_step": watch["best_step"]} if watch else {})}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
