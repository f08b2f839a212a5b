"""LoRA / DoRA / QLoRA students against full fine-tuning of the same student, side by side in one run.

For each model configuration (a text student, a composed VLM student; tiny random-weight models
from configs, a shared live teacher), one ``Trainer`` per row on the same batches, TAID loss:
``full`` (every weight trained), ``lora`` (``student.peft`` r=16 on every LM linear but the head;
in the VLM the projector trained in full and the tower frozen, the usual LoRA-VLM recipe),
``dora`` (the same with ``use_dora``) and, for the text student, ``qlora`` (``lora`` on a base
loaded in 4 bits by bitsandbytes, whose CPU backend runs it).

Per row: trainable and total parameters; persistent training memory (weights + gradients + AdamW
state, counted from the tensors after a step); extra peak RSS of one step (VmHWM reset through
``/proc/self/clear_refs``, as ``bench_step.py``; the script re-executes itself with glibc's mmap
threshold at 1 MiB so that freed tensors leave RSS, and every row is timed under that allocator
too); median step time over round-robin rounds (rows take turns so machine load hits them alike).
Writes ``bench_lora.json``.

    python eval/bench_lora.py [--quick] [--output eval/results] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TEXT = {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "tie_word_embeddings": True}
PEFT = {"lora": {"r": 16}, "dora": {"r": 16, "use_dora": True}, "qlora": {"r": 16, "load_in_4bit": True}}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def configurations(quick: bool) -> list[dict]:
    text = {**TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2} if quick else TEXT
    teacher = {**text, "hidden_size": 2 * text["hidden_size"], "intermediate_size": 2 * text["intermediate_size"]}
    shape = {"batch": 2, "prompt": 20, "answer": 15, "rounds": 2, "warmup": 1} if quick else \
        {"batch": 4, "prompt": 96, "answer": 64, "rounds": 5, "warmup": 2}
    vocab = 2000 if quick else 32000
    composed = _load("bench_step")._composed
    return [
        {"name": "text", "family": "text", "V": vocab, "student": text, "teacher": teacher,
         "rows": ["full", "lora", "dora", "qlora"], **shape},
        {"name": "composed", "family": "composed", "V": vocab, "student": composed(32, text),
         "teacher": composed(48, teacher), "rows": ["full", "lora", "dora"], **shape},
    ]


def _config(spec: dict, root: Path, row: str):
    from taid_vlm.config_io import config_from_dict

    student = {"family": spec["family"], "config": spec["student"], "tokenizer": str(root / "tok")}
    if row != "full":
        student.update(peft=PEFT[row], train_vision=False)
        if PEFT[row].get("load_in_4bit"):  # 4 bits are quantized on load: the same weights, from disk
            student = {"family": "text", "path": str(root / "student"), "peft": PEFT[row]}
    if spec["family"] == "text":
        student.pop("train_vision", None)
    return config_from_dict({
        "student": student,
        "teacher": {"family": spec["family"], "path": str(root / "teacher")},
        "data": {"train": str(root / "train.json"), "max_length": spec["prompt"] + spec["answer"] + 64},
        "loss": {"name": "taid"},
        "train": {"output_dir": str(root / "runs" / row), "max_steps": 10_000, "batch_size": spec["batch"],
                  "lr": 1e-4, "cpu": True, "seed": 0},
        "logging": {"report_to": [], "progress": False},
    })


def _persistent_mib(tr) -> float:
    """Weights (unique storages; 4-bit ones at their packed size) + gradients + AdamW state."""
    model = tr.parts.student.model
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    params = [p for g in tr.parts.optimizer.param_groups for p in g["params"]]
    total += sum(p.numel() * p.element_size() for p in params)  # gradients, alive between backward and step
    total += sum(v.numel() * v.element_size() for s in tr.parts.optimizer.state.values() for v in s.values()
                 if hasattr(v, "numel"))
    return total / 2**20


def run_config(spec: dict, rounds: int) -> dict:
    import torch

    from taid_vlm.adapters import build_adapter
    from taid_vlm.train.loop import Trainer

    bench_step = _load("bench_step")
    meter_mod = _load("bench_losses")
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_step._tokenizer(spec["V"], root / "tok")
        bench_step._data(spec, root, 2 * spec["batch"])
        torch.manual_seed(1)
        build_adapter(spec["family"], config=spec["teacher"], tokenizer=str(root / "tok")).save(str(root / "teacher"))
        if "qlora" in spec["rows"]:
            torch.manual_seed(0)  # the student every other row starts from (train.seed 0)
            build_adapter("text", config=spec["student"], tokenizer=str(root / "tok")).save(str(root / "student"))
        trainers = {row: Trainer(_config(spec, root, row)) for row in spec["rows"]}
        teacher = trainers["full"].parts.teacher
        for tr in trainers.values():
            tr.parts.teacher = teacher  # one frozen teacher in memory for every row
        samples = trainers["full"].parts.samples
        micro = [[samples[i] for i in range(j, j + spec["batch"])] for j in (0, spec["batch"])]
        batches = {row: [tr.parts.collate(m) for m in micro] for row, tr in trainers.items()}
        for row, tr in trainers.items():
            model = tr.parts.student.model
            trainable = sum(p.numel() for g in tr.parts.optimizer.param_groups for p in g["params"])
            for i in range(spec["warmup"]):
                tr._optimizer_step([batches[row][i % 2]])
            gc.collect()
            meter = meter_mod._PeakMeter("cpu")
            meter.start()
            tr._optimizer_step([batches[row][0]])
            out[row] = {"trainable_params": trainable, "total_params": sum(p.numel() for p in model.parameters()),
                        "persistent_mib": _persistent_mib(tr), "step_peak_extra_mib": meter.stop(),
                        "mem_method": meter.mode, "times_s": []}
        order = list(trainers)
        for r in range(rounds):
            for row in order[r % len(order):] + order[:r % len(order)]:
                t0 = time.perf_counter()
                loss = trainers[row]._optimizer_step([batches[row][r % 2]])["loss"]
                out[row]["times_s"].append(time.perf_counter() - t0)
                out[row]["loss"] = loss
    for r in out.values():
        r["median_s"] = statistics.median(r["times_s"])
    full = out["full"]
    for r in out.values():
        r.update(trainable_ratio=r["trainable_params"] / full["trainable_params"],
                 persistent_ratio=r["persistent_mib"] / full["persistent_mib"], time_ratio=r["median_s"] / full["median_s"])
    return {"name": spec["name"], "family": spec["family"], "V": spec["V"], "batch": spec["batch"], "rows": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 rounds (tests the script)")
    parser.add_argument("--output", default="eval/results")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configs = []
    for spec in configurations(args.quick):
        res = run_config(spec, args.rounds or spec["rounds"])
        configs.append(res)
        for row, r in res["rows"].items():
            print(f"{res['name']:>9} {row:>6}: {r['trainable_params']:>10,} trained ({r['trainable_ratio']:.3f}x)  "
                  f"{r['persistent_mib']:7.1f} MiB state ({r['persistent_ratio']:.2f}x)  "
                  f"{r['step_peak_extra_mib']:6.1f} MiB step peak  {r['median_s'] * 1e3:7.1f} ms ({r['time_ratio']:.2f}x)",
                  flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "note": "CPU, shared with other jobs: times are indicative"},
              "command": " ".join(["python eval/bench_lora.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick, "configs": configs}
    (out / f"bench_lora{'_quick' if args.quick else ''}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    import os

    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # read by glibc at start-up only: start again with it
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    sys.exit(main())
