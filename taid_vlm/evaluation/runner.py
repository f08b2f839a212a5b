"""``taid-vlm eval``: batched greedy generation + metrics, with every prediction saved.

Three levels, each used by someone:

- ``evaluate(adapter, samples, task)`` -> full results (scores + per-sample predictions);
- ``evaluate_file(adapter, path, task)`` -> scores only (the trainer's eval hook, the demo), with
  the full results written to ``output`` when given;
- ``eval_main(argv)`` -> the command line (loads the model through the adapter registry).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taid_vlm.data.types import Sample
from taid_vlm.evaluation.tasks import (
    DEFAULT_PROMPTS,
    TASKS,
    check_records,
    check_samples,
    check_task,
    prompt_sample,
)


def batch_starts(n: int, batch_size: int, progress: bool, desc: str) -> Any:
    """``range(0, n, batch_size)``, under a tqdm bar of samples done when ``progress``."""
    starts = range(0, n, batch_size)
    if not progress:
        yield from starts
        return
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=desc, unit="sample", dynamic_ncols=True) as bar:
        for start in starts:
            yield start
            bar.update(min(batch_size, n - start))


def _generate(adapter: Any, samples: Sequence[Sample], batch_size: int, max_new_tokens: int,
              progress: bool = False, desc: str = "eval") -> list[str]:
    model = getattr(adapter, "model", None)
    was_training = bool(model is not None and model.training)
    if model is not None:
        model.eval()  # no dropout in generation, whatever mode the trainer left the model in
    out: list[str] = []
    try:
        for start in batch_starts(len(samples), batch_size, progress, desc):
            batch = list(samples[start:start + batch_size])
            texts = adapter.generate(batch, max_new_tokens=max_new_tokens)
            if len(texts) != len(batch):
                raise RuntimeError(f"adapter.generate returned {len(texts)} answers for {len(batch)} samples")
            out.extend(t.strip() for t in texts)
    finally:
        if was_training:
            model.train()
    return out


def evaluate(adapter: Any, samples: Sequence[Sample], task: str, *, batch_size: int = 8, max_new_tokens: int = 32,
             prompt: str | None = None, max_length: int = 2048, caption_metrics: Sequence[str] | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Score ``adapter`` on ``samples``.

    Args:
        adapter: an ``Adapter`` (``generate`` for vqa/caption; ``encode``/``collate``/
            ``response_hidden`` for text) with ``supports_images``.
        samples: VQA samples (``meta['question']``, ``meta['answers']``), caption samples
            (``meta['captions']``) or conversations (text).
        task: ``vqa`` | ``caption`` | ``text``.
        batch_size: samples per generate / forward call.
        max_new_tokens: generation budget per answer.
        prompt: vqa: template with ``{question}`` or an instruction after the question; caption: the
            user text. Default: ``tasks.DEFAULT_PROMPTS``.
        max_length: token limit per sample for the text task.
        caption_metrics: subset of ``caption.METRICS`` (default: all).
        progress: a progress bar over the samples on stderr (``taid-vlm eval`` shows one).
    Returns:
        ``{"task", "scores": {name: float}, "num_samples", "settings", "predictions": [...]}``;
        each prediction has ``id``, ``question`` (the VQA question; the prompt for captions),
        ``prompt`` (the full user text), ``prediction``, ``references`` and its own ``scores``
        (text task: ``id``, ``nll``, ``num_tokens``).
    Raises:
        ValueError: unknown task, missing fields, or an image task for a text-only model, before
            anything is generated.
    """
    check_samples(samples, task, bool(getattr(adapter, "supports_images", False)))
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "max_length": max_length,
                "prompt": DEFAULT_PROMPTS.get(task) if prompt is None else prompt}
    if task == "text":
        from taid_vlm.evaluation.text import perplexity

        scores, per = perplexity(adapter, samples, batch_size=batch_size, max_length=max_length, progress=progress)
        return {"task": task, "scores": scores, "num_samples": len(samples), "settings": settings, "predictions": per}
    prompted = [prompt_sample(s, task, prompt) for s in samples]
    preds = _generate(adapter, prompted, batch_size, max_new_tokens, progress, f"eval {task}")
    if task == "vqa":
        from taid_vlm.evaluation.vqa import vqa_scores

        refs = [list(s.meta["answers"]) for s in samples]
        scores, per_scores = vqa_scores(preds, refs)
    else:
        from taid_vlm.evaluation.caption import METRICS, caption_scores

        refs = [list(s.meta["captions"]) for s in samples]
        scores, per_scores = caption_scores(preds, refs, caption_metrics or METRICS)
    prompts = [p.messages[0]["content"][-1]["text"] for p in prompted]
    per = [{"id": s.id, "question": s.meta.get("question", pr), "prompt": pr, "prediction": p, "references": r,
            "scores": sc} for s, pr, p, r, sc in zip(samples, prompts, preds, refs, per_scores)]
    return {"task": task, "scores": scores, "num_samples": len(samples), "settings": settings, "predictions": per}


def load_task_samples(path: str | Path, task: str, *, limit: int | None = None, image_root: str | None = None,
                      strict: bool = False) -> tuple[list[Sample], dict[str, Any]]:
    """Check the raw records' fields for ``task``, then read them with the data layer.

    Returns ``(samples, data_report_dict)``. Records with a corrupt or missing image file are
    skipped and counted (``strict=True`` raises instead); a missing *field* is always an error.
    """
    from taid_vlm.data.readers import iter_records, load_samples
    from taid_vlm.data.report import DataReport

    check_task(task)
    check_records(iter_records(path), task, source=str(path), limit=limit)
    report = DataReport()
    fmt = task if task in ("vqa", "caption") else "auto"
    samples = load_samples(path, format=fmt, image_root=image_root, strict=strict, report=report, limit=limit)
    return samples, report.to_dict()


def evaluate_file(adapter: Any, path: str | Path, task: str, *, limit: int | None = None, output: str | Path | None = None,
                  image_root: str | None = None, **kwargs: Any) -> dict[str, float]:
    """``evaluate`` on a data file; returns the scores only (full results go to ``output``).

    ``kwargs`` go to ``evaluate`` (``batch_size``, ``max_new_tokens``, ``prompt``, ...).
    """
    samples, report = load_task_samples(path, task, limit=limit, image_root=image_root)
    results = evaluate(adapter, samples, task, **kwargs)
    results.update(data=str(path), data_report=report)
    if output is not None:
        write_results(results, output)
    return dict(results["scores"])


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write results as indented JSON (NaN written as null so any JSON reader accepts the file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)

    def clean(x: Any) -> Any:
        if isinstance(x, float) and x != x:
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    p.write_text(json.dumps(clean(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def _score_str(name: str, value: Any) -> str:
    """Scores with 4 decimals; counts (``num_tokens``, ``num_samples``) as the integers they are."""
    if isinstance(value, float) and name.startswith("num_") and value.is_integer():
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def summary(results: dict[str, Any]) -> str:
    """A few lines: task, model, sample count and each score."""
    head = f"{results['task']}: {results.get('model', '?')} on {results.get('data', '?')} ({results['num_samples']} samples)"
    lines = [head] + [f"  {k:<14} {_score_str(k, v)}" for k, v in results["scores"].items()]
    skipped = (results.get("data_report") or {}).get("skipped")
    if skipped:  # scores are over the usable records only: say how many were dropped and why
        lines.append(f"  skipped records: {skipped}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taid-vlm eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="saved model folder (student, HF VLM or LM)")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--data", required=True, help="VQA / caption records (.json, .jsonl, parquet) or conversations")
    p.add_argument("--output", default=None, help="results JSON (default: results_<task>.json beside the model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 16 (vqa), 64 (caption)")
    p.add_argument("--prompt", default=None, help="vqa: template with {question} or an instruction; caption: text")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records only")
    p.add_argument("--family", default="auto", help="adapter family (default: from the model's config)")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the data's)")
    p.add_argument("--max-length", type=int, default=2048, help="text task: token limit per sample")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar while generating / scoring")
    return p


def _load_model(build_adapter: Any, args: argparse.Namespace) -> Any:
    """The adapter of ``--model``; a name that is no folder here and that the hub could not serve
    (no network) is "no such model folder", not the hub client's connection error."""
    try:
        return build_adapter(args.family, path=args.model, dtype=args.dtype)
    except OSError as err:
        if Path(args.model).exists():
            raise
        from taid_vlm.path_hints import missing

        raise FileNotFoundError(f"--model: no such model folder: {missing(args.model)}; as a hub id it "
                                f"could not be fetched ({str(err)[:200]})") from None


def eval_main(argv: list[str] | None = None) -> int:
    """``taid-vlm eval --model DIR --task vqa|caption|text --data FILE [...]``; returns an exit status."""
    args = _parser().parse_args(argv)
    try:
        check_task(args.task)
        if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
            raise ValueError("--batch-size and --limit must be >= 1")
        # Data first: a missing field fails before the (possibly large) model is loaded.
        samples, report = load_task_samples(args.data, args.task, limit=args.limit, image_root=args.image_root)
        if not samples:
            raise ValueError(f"{args.data}: no usable records ({report})")
        from taid_vlm.path_hints import check_model_source

        check_model_source(args.model, "--model")
        from taid_vlm.adapters import build_adapter

        adapter = _load_model(build_adapter, args)
        max_new = args.max_new_tokens or {"vqa": 16, "caption": 64}.get(args.task, 0)
        t0 = time.time()
        results = evaluate(adapter, samples, args.task, batch_size=args.batch_size, max_new_tokens=max_new,
                           prompt=args.prompt, max_length=args.max_length, progress=not args.no_progress)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: missing model or data files
        print(f"taid-vlm eval: error: {err}", file=sys.stderr)
        return 2
    results.update(model=str(args.model), family=getattr(adapter, "name", args.family), data=str(args.data),
                   data_report=report, seconds=round(time.time() - t0, 2))
    out = Path(args.output) if args.output else Path(args.model) / f"results_{args.task}.json"
    write_results(results, out)
    print(summary(results))
    print(f"taid-vlm eval: results and per-sample predictions in {out}")
    return 0
