"""``taid-vlm cache-teacher``: run the teacher once over the data and keep its top-k distribution.

Batched, resumable (a shard that exists is not recomputed) and multi-process under
``accelerate launch`` (rank r writes shards r, r + world, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from taid_vlm.cache.format import INDEX, TOKENIZER_DIR, fingerprint, read_index, write_index, write_shard
from taid_vlm.data.types import IGNORE_INDEX
from taid_vlm.losses.fused import chunk_rows
from taid_vlm.run_key import hash_path
from taid_vlm.train.step import teacher_response


def topk_rows(logits: torch.Tensor, k: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Top-k ids and log-probs plus the remaining mass of ``logits [N, V]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    k = min(k, logp.shape[-1])
    vals, ids = logp.topk(k, dim=-1)
    rest = (1.0 - vals.exp().sum(-1)).clamp_min(0.0)
    return {"topk_ids": ids.to(torch.int32), "topk_logprobs": vals.to(dtype), "rest_mass": rest}


def run_starts(labels: torch.Tensor) -> torch.Tensor:
    """``[N]`` uint8: 1 where a response row starts an assistant turn's response, else 0.

    Args:
        labels: ``[B, L]`` batch labels (-100 outside responses); rows are the predicted labels
            ``labels[:, 1:]`` ordered by sample then position, as in ``ResponseHidden``.
    """
    m = labels[:, 1:] != IGNORE_INDEX
    prev = torch.nn.functional.pad(m[:, :-1], (1, 0), value=False)
    return (m & ~prev)[m].to(torch.uint8)


def _shard_rows(teacher: Any, collate: Any, samples: list, batch_size: int, k: int,
                dtype: torch.dtype, chunk: int | str, device: torch.device) -> tuple[list[str], dict[str, torch.Tensor]]:
    ids: list[str] = []
    parts: dict[str, list[torch.Tensor]] = {"topk_ids": [], "topk_logprobs": [], "rest_mass": [], "targets": [],
                                            "run_start": []}
    counts: list[int] = []
    for i in range(0, len(samples), batch_size):
        batch = collate(samples[i : i + batch_size])
        if batch is None or batch.get("student") is None:
            continue
        rh = teacher_response(teacher, send_to_device(batch["student"], device))
        per_chunk = chunk_rows(chunk, rh.weight.shape[0])
        for start in range(0, rh.hidden.shape[0], per_chunk):  # bounded [chunk, V] logits at a time
            sl = slice(start, start + per_chunk)
            part = dataclasses.replace(rh, hidden=rh.hidden[sl], targets=rh.targets[sl],
                                       sample_index=rh.sample_index[sl])
            for key, v in topk_rows(part.logits(), k, dtype).items():
                parts[key].append(v.cpu())
        parts["targets"].append(rh.targets.to(torch.int32).cpu())
        starts = run_starts(batch["student"]["labels"])
        if starts.numel() != rh.targets.numel():  # an adapter whose rows are not the shifted labels
            raise RuntimeError(f"cache-teacher: the teacher labels {starts.numel()} response tokens but returned "
                               f"{rh.targets.numel()} response rows; its adapter must take rows from labels[:, 1:]")
        parts["run_start"].append(starts)
        counts += torch.bincount(rh.sample_index.cpu(), minlength=len(batch["ids"])).tolist()
        ids += list(batch["ids"])
    rows = {key: torch.cat(v) if v else torch.zeros(0) for key, v in parts.items()}
    rows["offsets"] = torch.tensor([0, *torch.tensor(counts, dtype=torch.int64).cumsum(0).tolist()])
    return ids, rows


def cache_key(cfg: Any, *, top_k: int, dtype: str, shard_size: int = 256) -> dict[str, Any]:
    """The reuse key of a cache of ``cfg`` (a ``Config``): the teacher, the data and the tokenizer
    sections, their files' contents included, and the cache's own settings (``run_key``)."""
    from taid_vlm.config_io import config_to_dict
    from taid_vlm.run_key import reuse_key

    return reuse_key(config_to_dict(cfg), sections=("teacher", "data", "student.tokenizer"),
                     extra={"top_k": top_k, "dtype": dtype, "shard_size": shard_size})


def _claim(out: Path, key: dict[str, Any]) -> None:
    """Keep the shards in ``out`` only when they were made from the same inputs (``key``): a resumed
    cache of a teacher rebuilt since, or of other data, would mix the old outputs with the new."""
    from taid_vlm.run_key import reuse_verdict, write_key

    old = sorted(out.glob("shard-*.safetensors"))
    why = reuse_verdict(out, key)
    if (old or (out / INDEX).exists()) and why:
        print(f"cache-teacher: {out} was made from other inputs ({'; '.join(why)}); computing it again",
              file=sys.stderr, flush=True)
        for f in [*old, out / INDEX]:
            f.unlink(missing_ok=True)
    write_key(out, key)


def cache_teacher(cfg: Any, output: str | Path, *, top_k: int = 64, shard_size: int = 256,
                  dtype: str = "float16", batch_size: int | None = None) -> Path:
    """Write the cache of ``cfg.teacher`` over ``cfg.data.train`` into ``output``; returns it.
    Shards already there are kept when the recorded reuse key (``cache_key``) matches, else
    computed again."""
    from accelerate import Accelerator

    from taid_vlm.adapters import build_adapter
    from taid_vlm.data.collate import PairCollator
    from taid_vlm.data.readers import DataReport, load_samples
    from taid_vlm.train.placement import check_placement, place_teacher
    from taid_vlm.train.setup import check_paths

    check_paths(cfg)  # missing teacher/data/tokenizer paths: a message naming the field, not a traceback
    acc = Accelerator(cpu=cfg.train.cpu)
    check_placement(cfg.teacher, acc)  # same placements as training, refused before weights load
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        _claim(out, cache_key(cfg, top_k=top_k, dtype=dtype, shard_size=shard_size))
    acc.wait_for_everyone()
    teacher = build_adapter(**cfg.teacher.adapter_kwargs())
    place_teacher(teacher.model, cfg.teacher, acc)
    report = DataReport()
    samples = load_samples(cfg.data.train, format=cfg.data.format, image_root=cfg.data.image_root,
                           strict=cfg.data.strict, report=report, split=cfg.data.split,
                           max_images=cfg.data.max_images, subset=cfg.data.subset)
    collate = PairCollator(teacher, None, max_length=cfg.data.max_length, report=report, strict=cfg.data.strict)
    torch_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
    n_shards = (len(samples) + shard_size - 1) // shard_size
    mine = range(acc.process_index, n_shards, acc.num_processes)
    for s in tqdm(mine, desc="cache-teacher", disable=not acc.is_main_process):
        path = out / f"shard-{s:05d}.safetensors"
        if path.is_file():
            continue  # resumed run: this shard is done
        chunk = samples[s * shard_size : (s + 1) * shard_size]
        ids, rows = _shard_rows(teacher, collate, chunk, batch_size or cfg.train.batch_size, top_k, torch_dtype,
                                cfg.loss.chunk_size, acc.device)
        write_shard(path, ids, rows)
    acc.wait_for_everyone()
    if acc.is_main_process:
        template = cfg.teacher.chat_template or getattr(teacher.tokenizer, "chat_template", None)
        fp = fingerprint(data=cfg.data.train, tokenizer=teacher.tokenizer, template=template,
                         max_length=cfg.data.max_length,
                         teacher=hash_path(cfg.teacher.path) if cfg.teacher.path and Path(cfg.teacher.path).exists()
                         else str(cfg.teacher.path or cfg.teacher.config))
        # The teacher's tokenizer travels with the cache: a student with another tokenizer decodes the
        # cached ids with it (cross-tokenizer alignment) without the teacher's files.
        teacher.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        write_index(out, {"fingerprint": fp, "top_k": top_k, "vocab_size": teacher.vocab_size, "dtype": dtype,
                          "teacher_tokenizer": TOKENIZER_DIR,
                          "shards": [f"shard-{s:05d}.safetensors" for s in range(n_shards)],
                          "data_report": report.to_dict() if hasattr(report, "to_dict") else {}})
        read_index(out)
    acc.wait_for_everyone()
    return out


def cache_main(argv: list[str]) -> int:
    """``taid-vlm cache-teacher CONFIG.yaml --output DIR [--top-k K] [key.sub=value ...]``."""
    from taid_vlm.cli import add_config_args, parse_config_args

    parser = argparse.ArgumentParser(prog="taid-vlm cache-teacher", description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--output", required=True)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256, help="samples per shard (the resume unit)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage of the log-probs; float32 makes cache training match live exactly")
    args = parse_config_args(parser, argv)  # overrides may come after the options
    from taid_vlm.config import ConfigError
    from taid_vlm.config_io import load_config

    try:
        cfg = load_config(args.config, [*args.overrides, "teacher.cache=null"])
        if args.top_k < 1:
            raise ConfigError("--top-k: must be >= 1")
        if not cfg.teacher.path and cfg.teacher.config is None:
            raise ConfigError("teacher.path: cache-teacher needs the teacher model (path or config)")
    except ConfigError as err:
        print(f"taid-vlm cache-teacher: config error: {err}", file=sys.stderr)
        return 2
    out = cache_teacher(cfg, args.output, top_k=args.top_k, shard_size=args.shard_size, dtype=args.dtype)
    print(f"taid-vlm cache-teacher: wrote {out}")
    return 0
