"""A cross-tokenizer student against a same-tokenizer one, on the text twin of the synthetic set.

    python eval/cross_tokenizer.py            # 300 teacher / 150 student steps, 512 records, 3 seeds
    python eval/cross_tokenizer.py --quick    # a few steps, 1 seed (used by a test)

A text teacher is trained by SFT with tokenizer A. Students of one architecture are then trained
with TAID for the same number of steps: one with tokenizer A (``shared``), one with tokenizer B
(same corpus, another vocabulary size and pre-tokenizer) in ``byte_aligned`` and in ``uld`` mode,
and an SFT student with tokenizer B (no teacher) as the floor. Scores on the validation answers are
tokenizer-independent: the negative log-likelihood per character of the reference answer and the
exact match of the greedy answer, on 256 held-out records; mean and 95% t-interval over seeds, and
the per-seed differences to the same-tokenizer student and to the SFT floor. Writes ``cross_tokenizer.json``, ``cross_tokenizer.md`` and ``cross_tokenizer.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from taid_vlm.demo.studies import ci95, provenance, write_study

TEXT = {"model_type": "qwen2", "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
        "tie_word_embeddings": True}
TEACHER = {**TEXT, "hidden_size": 96, "intermediate_size": 288, "num_hidden_layers": 2}
STUDENT = {**TEXT, "hidden_size": 48, "intermediate_size": 144, "num_hidden_layers": 1}
RUNS = [  # (name, tokenizer, alignment, loss, distil_ratio); the SFT floor last
    ("same tokenizer, taid", "tok_a", "shared", "taid", 1.0),
    ("cross tokenizer, byte_aligned taid", "tok_b", "byte_aligned", "taid", 1.0),
    ("cross tokenizer, uld taid", "tok_b", "uld", "taid", 1.0),
    # With the LM loss on the labels beside the distillation loss, as ULD (Boizard et al.) and GOLD
    # define their objectives: ranks alone (uld) say nothing about which token is right, and
    # byte_aligned drops the columns that are not in both vocabularies.
    ("cross tokenizer, byte_aligned taid + LM loss (ratio 0.5)", "tok_b", "byte_aligned", "taid", 0.5),
    ("cross tokenizer, uld taid + LM loss (ratio 0.5)", "tok_b", "uld", "taid", 0.5),
    ("cross tokenizer, sft (no teacher)", "tok_b", "shared", "sft", 1.0),
]


def _prepare(work: Path, n_train: int, n_val: int) -> dict[str, str]:
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer

    data = work / "data"
    if not (data / "train_text.json").is_file():
        generate_synthetic(data, seed=0, n_train=n_train, n_val=n_val, image_size=32)
    corpus = synthetic_corpus(data)
    if not (work / "tok_a").is_dir():
        train_bpe_tokenizer(corpus, vocab_size=512).save_pretrained(work / "tok_a")
        train_bpe_tokenizer(corpus, vocab_size=384, pre_tokenizer="split_digits_punct").save_pretrained(work / "tok_b")
    return {"train": str(data / "train_text.json"), "val": str(data / "val_text.json")}


def _train(work: Path, name: str, section: dict, data: dict, steps: int, loss: str, teacher: dict | None,
           seed: int = 0, distil_ratio: float = 1.0) -> Path:
    from taid_vlm.demo.run import stage_train

    out = work / name
    cfg = {"student": section, "data": {**data, "max_length": 256}, "loss": {"name": loss, "distil_ratio": distil_ratio},
           "train": {"output_dir": str(out), "max_steps": steps, "batch_size": 16, "lr": 3e-3,
                     "warmup_steps": min(10, steps // 4), "cpu": True, "seed": seed},
           "eval": {"max_batches": 2}, "logging": {"report_to": [], "progress": False}}
    if teacher is not None:
        cfg["teacher"] = teacher
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    # Reused only when the config and the files it names (teacher, tokenizer, data) are unchanged.
    stage_train(out, cfg, name)
    return out


def _plot(runs: list[dict], teacher: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["teacher", *[r["name"] for r in runs]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.5), sharey=True)
    colors = ["tab:gray", *["tab:blue" if r["alignment"] == "shared" and r["loss"] != "sft" else
                            "tab:olive" if r["loss"] == "sft" else "tab:red" for r in runs]]
    ax.barh(names, [teacher["nll_per_char"], *[r["nll_per_char"] for r in runs]], color=colors)
    ax.set(xlabel="NLL per character of the reference answers (lower is better)")
    bx.barh(names, [teacher["exact_match"], *[r["exact_match"] for r in runs]], color=colors)
    bx.set(xlabel="exact match %")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


def score(model_dir: Path, val: str, limit: int) -> dict[str, float]:
    """NLL per character of the reference answers and greedy exact match (tokenizer-independent)."""
    from taid_vlm.adapters import build_adapter
    from taid_vlm.data.collate import PairCollator
    from taid_vlm.data.readers import load_samples
    from taid_vlm.evaluation.vqa import normalize_answer

    student = build_adapter("text", path=str(model_dir))
    student.model.eval()
    samples = load_samples(val, format="auto")[:limit]
    nll, chars, hits = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            chunk = samples[i:i + 16]
            batch = PairCollator(student, None, max_length=256)(chunk)
            if batch["student"] is None:
                continue
            rows = student.response_hidden(batch["student"])
            nll += float(torch.nn.functional.cross_entropy(rows.logits().float(), rows.targets, reduction="sum"))
            chars += sum(len(student.tokenizer.decode(rows.targets[rows.sample_index == k], skip_special_tokens=True))
                         for k in range(len(batch["ids"])))
            answers = student.generate(chunk, max_new_tokens=24)
            refs = [_text(s.messages[-1]["content"]) for s in chunk]
            hits += sum(normalize_answer(a) == normalize_answer(r) for a, r in zip(answers, refs))
    return {"nll_per_char": nll / max(chars, 1), "exact_match": 100.0 * hits / max(len(samples), 1)}


def _cell(runs: list[dict], key: str) -> str:
    m, h = ci95([r[key] for r in runs])
    return f"{m:.3f} ± {h:.3f}" if key == "nll_per_char" else f"{m:.1f} ± {h:.1f}"


def _diff(runs: list[dict], base: list[dict], key: str) -> dict[str, float | list[float]]:
    """Per-seed differences ``runs - base`` (paired by seed) with their mean and 95% t-interval."""
    d = [r[key] - b[key] for r, b in zip(runs, base)]
    m, h = ci95(d)
    return {"per_seed": d, "mean": m, "ci95": h}


def cached_score(run: Path, val: str, limit: int) -> dict[str, float]:
    """``score`` of ``run/final``, kept in ``run/score.json`` so a rerun that adds rows scores only
    those; kept while the model's and the held-out file's contents are the same (``run_key``)."""
    from taid_vlm.run_key import key_changes, reuse_key

    path, key = run / "score.json", reuse_key({"model": str(run / "final"), "val": val, "limit": limit})
    if path.is_file():
        saved = json.loads(path.read_text())
        if isinstance(saved.get("key"), dict) and "config" in saved["key"] and not key_changes(saved["key"], key):
            return saved["score"]
    result = score(run / "final", val, limit)
    path.write_text(json.dumps({"key": key, "score": result}))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few steps on a small set, 1 seed (for tests)")
    ap.add_argument("--work", default="runs/eval_cross_tokenizer", help="folder for data and runs (reused)")
    ap.add_argument("--output", default="eval/results/cross_tokenizer", help="where the report goes")
    ap.add_argument("--seeds", type=int, default=None, help="student seeds (default 3; --quick 1)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n_train, n_val, t_steps, s_steps = (32, 8, 4, 3) if args.quick else (512, 256, 300, 150)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    data = _prepare(work, n_train, n_val)
    teacher_dir = _train(work, "teacher", {"family": "text", "config": TEACHER, "tokenizer": str(work / "tok_a")},
                         data, t_steps, "sft", None) / "final"
    runs: dict[str, list[dict]] = {}
    for name, tok, mode, loss, ratio in RUNS:
        folder = name.replace(", ", "_").replace(" ", "_").replace("(", "").replace(")", "")
        teacher = {"family": "text", "path": str(teacher_dir), "tokenizer_alignment": mode}
        for seed in seeds:
            out = _train(work, f"{folder}_s{seed}", {"family": "text", "config": STUDENT, "tokenizer": str(work / tok)},
                         data, s_steps, loss, None if loss == "sft" else teacher, seed, ratio)
            report = json.loads((out / "final" / "metrics.json").read_text())
            shares = {k: report["metrics"][k] for k in ("xtok_one_to_one", "xtok_merged", "xtok_unaligned")
                      if k in report["metrics"]}
            runs.setdefault(name, []).append({
                "name": name, "seed": seed, "tokenizer": tok, "alignment": mode, "loss": loss, "distil_ratio": ratio,
                "run": out.relative_to(work).as_posix(),
                **cached_score(out, data["val"], n_val), "shares_last_step": shares,
                "data_report": report["data_report"]})
    teacher_score = score(teacher_dir, data["val"], n_val)
    same, floor = runs[RUNS[0][0]], runs[RUNS[-1][0]]
    diffs = {name: {"vs_same_tokenizer": {k: _diff(rs, same, k) for k in ("nll_per_char", "exact_match")},
                    "vs_sft_floor": {k: _diff(rs, floor, k) for k in ("nll_per_char", "exact_match")}}
             for name, rs in runs.items()}
    rep = {**provenance(argv, "eval/cross_tokenizer.py"), "quick": args.quick, "teacher": teacher_score,
           "steps": {"teacher": t_steps, "student": s_steps}, "records": {"train": n_train, "heldout": n_val},
           "seeds": seeds, "runs": runs, "differences": diffs}
    rows = [f"Mean ± 95% t-interval over {len(seeds)} seed(s); {n_val} held-out records.", "",
            "| student | NLL / char (lower is better) | exact match % | NLL / char minus SFT floor | one-to-one / merged share |",
            "|---|---|---|---|---|",
            f"| teacher (tokenizer A, SFT) | {teacher_score['nll_per_char']:.3f} | {teacher_score['exact_match']:.1f} | | |"]
    for name, rs in runs.items():
        sh = [r["shares_last_step"] for r in rs if r["shares_last_step"]]
        share = (f"{statistics.fmean(x['xtok_one_to_one'] for x in sh):.2f} / "
                 f"{statistics.fmean(x['xtok_merged'] for x in sh):.2f}") if sh else ""
        d = diffs[name]["vs_sft_floor"]["nll_per_char"]
        rows.append(f"| {name} | {_cell(rs, 'nll_per_char')} | {_cell(rs, 'exact_match')} | "
                    f"{d['mean']:+.3f} ± {d['ci95']:.3f} | {share} |")
    out = write_study(args.output, "cross_tokenizer", "Cross-tokenizer vs same-tokenizer students", rep,
                      "\n".join(rows))
    _plot([dict(rs[0], nll_per_char=statistics.fmean(r["nll_per_char"] for r in rs),
                exact_match=statistics.fmean(r["exact_match"] for r in rs)) for rs in runs.values()],
          teacher_score, out / "cross_tokenizer.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
