"""``taid-vlm make-synthetic``: a seeded VQA + captioning set of coloured shapes.

Writes into ``output_dir``::

    images/train_00000.png ...   white square images with 1-3 coloured shapes
    train.json                   LLaVA records: multi-turn VQA (1-3 questions, or ``questions``) or one
                                 caption turn
    val.json                     the same kind of records for the validation images (loss hook)
    val_vqa.json                 VQA records: image, question, answers (10 copies), question_type
    val_caption.json             caption records: image, captions (4 phrasings)
    scenes.json                  the scene of every image (shape, colour, position, size)

Questions need the image: colour of a shape, shape of a colour, count, position, size, yes/no
existence; answers are one word or a digit. The set is small-vocabulary and regular so a tiny
model learns it in minutes on a CPU. Same seed, same bytes (PNG has no timestamp; JSON is written
in a fixed order).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from taid_vlm.data.synthetic_scenes import (
    CAPTION_PROMPT,
    QUESTION_TYPES,
    captions,
    draw_scene,
    question,
    random_scene,
    scene_dict,
    vocabulary,
)

CAPTION_FRACTION = 0.25  # of training records; the rest are VQA conversations


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _llava_record(name: str, image: str, objs: list, rng: random.Random, questions: int = 0) -> dict[str, Any]:
    if rng.random() < CAPTION_FRACTION:
        turns = [("<image>\n" + CAPTION_PROMPT, captions(objs)[0])]
    else:
        kinds = rng.sample(QUESTION_TYPES, questions or rng.choice((1, 2, 3)))
        turns = [question(objs, k, rng) for k in kinds]
        turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    conv = []
    for q, a in turns:
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": name, "image": image, "conversations": conv}


def _split(out: Path, split: str, n: int, rng: random.Random, image_size: int, scenes: dict,
           questions: int = 0) -> list[tuple]:
    """Draw and save ``n`` images of ``split`` with their LLaVA records; returns ``[(name, relative
    path, objects, record)]``. Each record is drawn right after its image, so the first ``k`` items
    of a split are the same whatever ``n`` is: a smaller set is a prefix of a larger one (the demo's
    students train on a prefix of the set its teacher was built on)."""
    items = []
    for i in range(n):
        name = f"{split}_{i:05d}"
        objs = random_scene(rng)
        rel = f"images/{name}.png"
        draw_scene(objs, image_size).save(out / rel, format="PNG", optimize=False)
        scenes[name] = scene_dict(objs)
        items.append((name, rel, objs, _llava_record(name, rel, objs, rng, questions)))
    return items


def generate_synthetic(output_dir: str | Path, seed: int = 0, n_train: int = 1000, n_val: int = 100,
                       image_size: int = 64, questions: int = 0) -> dict[str, Path]:
    """Write the set (see the module docstring); returns ``{"train", "val", "val_vqa",
    "val_caption", "scenes", "train_text", "val_text", "images"}`` -> paths (``*_text``: the same
    questions with the scene described in words instead of shown). Deterministic in all arguments.

    ``questions``: question turns of every VQA record, each of another type (1-6; all six ask
    everything the set can ask of an image, as multi-turn LLaVA sets do); 0: 1-3 at random. The
    held-out ``val_vqa.json`` is the same whatever it is."""
    if n_train < 1 or n_val < 0 or image_size < 16 or not 0 <= questions <= len(QUESTION_TYPES):
        raise ValueError(f"need n_train >= 1, n_val >= 0, image_size >= 16, 0 <= questions <= "
                         f"{len(QUESTION_TYPES)}; got {n_train}, {n_val}, {image_size}, {questions}")
    out = Path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes: dict[str, Any] = {}
    # Separate streams per split: adding validation images never changes the training set.
    train_rng, val_rng = random.Random(f"taid-synthetic-{seed}-train"), random.Random(f"taid-synthetic-{seed}-val")
    train_items = _split(out, "train", n_train, train_rng, image_size, scenes, questions)
    train = [it[3] for it in train_items]
    val_items = _split(out, "val", n_val, val_rng, image_size, scenes)
    val = [it[3] for it in val_items]
    text = {"train_text": [_text_record(r, it[2]) for r, it in zip(train, train_items)],
            "val_text": [_text_record(r, it[2]) for r, it in zip(val, val_items)]}
    val_vqa, val_caption = [], []
    for i, (name, rel, objs, _) in enumerate(val_items):
        kind = QUESTION_TYPES[i % len(QUESTION_TYPES)]  # balanced question types
        q, a = question(objs, kind, val_rng)
        val_vqa.append({"question_id": name, "image": rel, "question": q, "answers": [a] * 10,
                        "question_type": kind})
        val_caption.append({"id": name, "image": rel, "captions": captions(objs)})
    paths = {k: out / f"{k}.json" for k in ("train", "val", "val_vqa", "val_caption", "scenes", *text)}
    for key, data in (("train", train), ("val", val), ("val_vqa", val_vqa), ("val_caption", val_caption),
                      ("scenes", scenes), *text.items()):
        _write_json(paths[key], data)
    paths["images"] = out / "images"
    return paths


def _text_record(rec: dict[str, Any], objs: list) -> dict[str, Any]:
    """The text-only twin of a LLaVA record (``messages`` format): the scene is described in
    words where the image was, so a text LM can be distilled on the same questions."""
    messages = []
    for turn in rec["conversations"]:
        text = turn["value"].replace("<image>", captions(objs)[0])
        messages.append({"role": "user" if turn["from"] == "human" else "assistant", "content": text})
    return {"id": rec["id"], "messages": messages}


def synthetic_corpus(data_dir: str | Path) -> list[str]:
    """Every text of a generated set plus the generator's whole vocabulary and the chat role
    names, for ``train_bpe_tokenizer``."""
    d = Path(data_dir)
    texts = list(vocabulary()) + ["system user assistant", "You are a helpful assistant."]
    for name in ("train.json", "val.json"):
        if (d / name).is_file():
            for rec in json.loads((d / name).read_text(encoding="utf-8")):
                texts += [t["value"].replace("<image>", "").strip() for t in rec["conversations"]]
    if (d / "val_vqa.json").is_file():
        for rec in json.loads((d / "val_vqa.json").read_text(encoding="utf-8")):
            texts += [rec["question"], *sorted(set(rec["answers"]))]
    if (d / "val_caption.json").is_file():
        for rec in json.loads((d / "val_caption.json").read_text(encoding="utf-8")):
            texts += rec["captions"]
    return texts


def main_make_synthetic(argv: list[str] | None = None) -> int:
    """``taid-vlm make-synthetic --output DIR [--seed S] [--n-train N] [--n-val N] [--image-size P]``."""
    parser = argparse.ArgumentParser(prog="taid-vlm make-synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder to write the set into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=1000, help="training images")
    parser.add_argument("--n-val", type=int, default=100, help="validation images")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels")
    parser.add_argument("--questions", type=int, default=0,
                        help="question turns per VQA training record, each of another type (0: 1-3 at random)")
    parser.add_argument("--tokenizer-vocab", type=int, default=512,
                        help="also train a BPE tokenizer on the set's text into DIR/tokenizer (0: don't)")
    args = parser.parse_args(argv)
    try:
        paths = generate_synthetic(args.output, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                                   image_size=args.image_size, questions=args.questions)
    except ValueError as err:
        parser.error(str(err))
    if args.tokenizer_vocab:
        from taid_vlm.data.tokenizer import train_bpe_tokenizer

        paths["tokenizer"] = Path(args.output) / "tokenizer"
        train_bpe_tokenizer(synthetic_corpus(args.output), vocab_size=args.tokenizer_vocab).save_pretrained(
            paths["tokenizer"])
    for key, p in paths.items():
        print(f"{key}: {p}")
    return 0
