"""Pre-training distillation at small scale: the shape of the paper's raw-text comparison.

    python eval/pretrain_study.py                 # full: 3 seeds x 3 students, about 5 min on 2 quiet CPU cores
    python eval/pretrain_study.py --quick         # a few steps, 1 seed (used by a test)
    python eval/pretrain_study.py --prepare-only  # just data/lee/ (for configs/tiny_text_pretrain.yaml)

Corpus: the Lee news corpus (Lee, Pincombe & Welsh 2005: 300 + 50 Australian news articles),
which ships as test data inside the ``gensim`` wheel (``gensim/test/test_data/lee_background.cor``
and ``lee.cor``). The files are read from an installed gensim, or taken from the wheel that
``pip download gensim --no-deps`` fetches (gensim itself is not installed or imported).

Set-up (as in the paper's pre-training experiment, scaled down): a teacher LM is trained with the
plain LM loss on all 300 background articles; students see only the first ``--student-docs`` of
them and learn by TAID, forward KL or the plain LM loss (no teacher), with every token a target
and documents packed into rows (``data.format: text``). Score: perplexity on the 50 held-out
articles of ``lee.cor``, mean and 95% t-interval over seeds. Writes ``pretrain_study.{json,md}``
to --output, the corpus and tokenizer to --data and the runs to --work (the teacher in
``<work>/teacher``, which ``configs/tiny_text_pretrain.yaml`` distils from).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from taid_vlm.demo.studies import ci95, provenance, write_study

LM_SMALL = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
            "tie_word_embeddings": True}
LM_TEACHER = {**LM_SMALL, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3}
FILES = ("lee_background.cor", "lee.cor")


def corpus_cache() -> Path:
    """Where the extracted corpus (and the wheel it came from) is kept between runs."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taid_vlm" / "corpora"


def find_corpus(cache: Path | None = None) -> dict[str, Path]:
    """The two Lee corpus files: from an installed gensim, else from gensim's wheel (one
    ``pip download``, kept in ``cache``)."""
    cache = cache or corpus_cache()
    try:
        import importlib.util

        spec = importlib.util.find_spec("gensim")
        if spec and spec.submodule_search_locations:
            base = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
            if all((base / f).is_file() for f in FILES):
                return {f: base / f for f in FILES}
    except (ImportError, ValueError):
        pass
    out = cache / "lee"
    if not all((out / f).is_file() for f in FILES):
        wheels = cache / "wheels"
        if not list(wheels.glob("gensim-*.whl")):
            print("[pretrain_study] fetching gensim's wheel (for its bundled Lee corpus) with pip download")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "-d", str(wheels), "gensim"], check=True)
        wheel = sorted(wheels.glob("gensim-*.whl"))[-1]
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for f in FILES:
                (out / f).write_bytes(z.read(f"gensim/test/test_data/{f}"))
        wheel.unlink()  # 27 MB; the two files are all that is used
    return {f: out / f for f in FILES}


def _docs(path: Path) -> list[str]:
    """One article per line; ``lee.cor`` is Latin-1 (a pound sign), ``lee_background.cor`` ASCII."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [d.strip() for d in text.splitlines() if d.strip()]


def prepare(data: Path, student_docs: int, vocab: int) -> dict[str, str]:
    """``data``: teacher.txt (all background docs), student.txt (the first ``student_docs``),
    heldout.txt (lee.cor), tokenizer/ (BPE trained on the teacher's text)."""
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    files = find_corpus()
    data.mkdir(parents=True, exist_ok=True)
    docs, held = (_docs(files[f]) for f in FILES)
    for name, part in (("teacher", docs), ("student", docs[:student_docs]), ("heldout", held)):
        (data / f"{name}.txt").write_text("\n\n".join(part) + "\n")
    if not (data / "tokenizer").is_dir():
        train_bpe_tokenizer(docs, vocab_size=vocab).save_pretrained(data / "tokenizer")
    return {"teacher_docs": len(docs), "student_docs": min(student_docs, len(docs)), "heldout_docs": len(held),
            **{k: str(data / f"{k}.txt") for k in ("teacher", "student", "heldout")},
            "tokenizer": str(data / "tokenizer")}


def run_config(out: Path, paths: dict, model: dict, data: str, loss: str, seed: int, steps: int,
               teacher: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "student": {"family": "text", "config": model, "tokenizer": paths["tokenizer"]},
        "data": {"train": data, "val": paths["heldout"], "format": "text", "max_length": 128,
                 "cache_dir": str(out.parent / "hf_cache")},
        "loss": {"name": loss},
        "train": {"output_dir": str(out), "seed": seed, "max_steps": steps, "batch_size": 8, "lr": 2e-3,
                  "warmup_steps": max(1, steps // 20), "scheduler": "cosine", "save_every": 0, "keep_last": 1,
                  "cpu": True},
        "eval": {"every": 0, "max_batches": 0},
        "logging": {"report_to": [], "progress": False},
    }
    if teacher:
        cfg["teacher"] = {"family": "text", "path": teacher}
    return cfg


def heldout_ppl(run: Path) -> float:
    import json

    return math.exp(json.loads((run / "final" / "metrics.json").read_text())["metrics"]["val_lm_loss"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--work", default="runs/pretrain_study")
    ap.add_argument("--data", default="data/lee", help="where the corpus files and tokenizer go")
    ap.add_argument("--output", default="eval/results")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--student-docs", type=int, default=60)
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--student-steps", type=int, default=150)
    ap.add_argument("--losses", nargs="+", default=["taid", "fkl", "sft"])
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.teacher_steps, args.student_steps = 1, 4, 3
    work = Path(args.work)
    paths = prepare(Path(args.data), args.student_docs, 512 if args.quick else 2048)
    if args.prepare_only:
        print(f"corpus written to {args.data}")
        return 0
    from taid_vlm.demo.run import stage_train

    teacher = work / "teacher"
    stage_train(teacher, run_config(teacher, paths, LM_TEACHER, paths["teacher"], "sft", 0, args.teacher_steps, None),
                "teacher")
    runs: dict[str, list[dict[str, Any]]] = {}
    for loss in args.losses:
        for seed in range(args.seeds):
            run = work / f"{loss}_s{seed}"
            secs = stage_train(run, run_config(run, paths, LM_SMALL, paths["student"], loss, seed, args.student_steps,
                                               None if loss == "sft" else str(teacher / "final")), f"{loss} s{seed}")
            runs.setdefault(loss, []).append({"seed": seed, "heldout_ppl": heldout_ppl(run), "train_s": secs})
    cells = {loss: dict(zip(("ppl_mean", "ppl_ci95"), ci95([r["heldout_ppl"] for r in rs])), n=len(rs))
             for loss, rs in runs.items()}
    t_ppl = heldout_ppl(teacher)
    names = {"taid": "TAID", "fkl": "forward KL", "sft": "LM loss only (no teacher)"}
    table = "| student | held-out perplexity (mean ± 95% CI) | seeds |\n|---|---|---|\n" + "".join(
        f"| {names.get(k, k)} | {c['ppl_mean']:.1f} ± {c['ppl_ci95']:.1f} | {c['n']} |\n" for k, c in cells.items())
    table += f"| teacher ({paths['teacher_docs']} docs, {args.teacher_steps} steps) | {t_ppl:.1f} | 1 |\n"
    report = {**provenance(argv, "eval/pretrain_study.py"), "corpus": "Lee news corpus (gensim wheel test data)",
              "data": {k: v for k, v in paths.items() if k.endswith("_docs")},
              "teacher": {"model": LM_TEACHER, "steps": args.teacher_steps, "heldout_ppl": t_ppl},
              "student": {"model": LM_SMALL, "steps": args.student_steps}, "cells": cells, "runs": runs}
    write_study(args.output, "pretrain_study", "Pre-training distillation on raw text (Lee corpus)", report, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
