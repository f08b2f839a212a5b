"""GPU check of the scale paths the CPU test suite cannot run; writes one JSON report.

    python eval/gpu_check.py --output eval/results/gpu_check.json [--steps 4] [--timeout 300]

On the GPUs present (tiny random-weight models, a synthetic set, a few steps each; a few minutes):
1. ``bf16_from_launcher``: one process, ``accelerate launch --mixed_precision bf16``, recipe precision
   unset -> the run logs mixed_precision=bf16 from the launcher and trains to a finite loss;
2. ``ddp``: all GPUs, same global batch -> the loss curve equals the one-process curve (bf16 tolerance);
3. ``fsdp2``: FSDP2 over all GPUs with the student auto-wrapped by its ``_no_split_modules`` ->
   curve equal to DDP's; the final student is gathered and loads with ``from_pretrained``;
4. ``fsdp2_resume``: SIGKILL after step 3 (checkpoint at 2), ``--resume auto`` (accelerate ``load_state``) -> the
   same curve as the uninterrupted run;
5. ``fsdp2_sharded_teacher``: ``teacher.placement=sharded`` -> curve equal to the replicated teacher's;
6. ``dispatched_teacher``: one process, teacher spread over every GPU with ``device_map`` -> equal
   to the replicated teacher's;
7. ``zero3``: if deepspeed imports, ZeRO-3 is refused with its config error (documented), ZeRO-2 trains;
8. ``lora`` / ``lora_ddp``: a LoRA student (``student.peft``, tower frozen) in bf16 on one GPU, then DDP
   over all GPUs -> the same curve; the checkpoint holds the adapter only, final/ is a peft adapter;
9. ``qlora``: a text student loaded in 4 bits (bitsandbytes, ``load_in_4bit``) trains to finite losses
   and saves its adapter against the base path.
10. ``loss_rows_bf16``: ``eval/bench_losses.py`` in bf16 on one GPU at N = 2,048, V = 151,936 (full vs
   fused TAID, and the peer rows: Liger-Kernel's chunked JSD, Cut Cross-Entropy's Triton kernel),
   timed by CUDA-synchronised wall clock and ``max_memory_allocated``; ok when every row ran. With
   ``--cpu-smoke`` it runs bench_losses' quick shapes in bf16 on the CPU (no peers).
11. ``compiled_taid_kernel``: the torch.compile'd TAID kernel (``losses/_compiled.py``, Triton on the
   GPU) against the eager one at 256 x 151,936 in fp32: values and gradient agree, both timed.

Each check records ok / error and its numbers; the exit status is 0 only if all ran checks pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TOL = 2e-2  # relative, bf16 autocast with different reduction orders


def _env(root: Path) -> dict:
    from taid_vlm.adapters import build_adapter
    from taid_vlm.data.synthetic import generate_synthetic, synthetic_corpus
    from taid_vlm.data.tokenizer import train_bpe_tokenizer
    from taid_vlm.demo.presets import _composed

    paths = {k: str(v) for k, v in generate_synthetic(root / "data", seed=0, n_train=64, n_val=8,
                                                          image_size=32).items()}
    tok = train_bpe_tokenizer(synthetic_corpus(root / "data"), vocab_size=320)
    tok.save_pretrained(root / "tokenizer")
    teacher = build_adapter("composed", config=_composed(48, 2, 64, 2, 32, 8, "mlp"), tokenizer=str(root / "tokenizer"))
    teacher.save(str(root / "teacher"))
    paths.update(tokenizer=str(root / "tokenizer"), teacher=str(root / "teacher"),
                 student=_composed(32, 2, 32, 2, 32, 8, "mlp"))
    # QLoRA loads a saved text LM in 4 bits; it trains on the set's texts as raw text.
    text = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256}
    build_adapter("text", config=text, tokenizer=str(root / "tokenizer")).save(str(root / "text_student"))
    (root / "corpus.txt").write_text("\n\n".join(synthetic_corpus(root / "data")))
    paths.update(text_student=str(root / "text_student"), text_teacher={**text, "hidden_size": 96},
                 corpus=str(root / "corpus.txt"))
    return paths


def _recipe(path: Path, env: dict, steps: int, batch: int, **teacher) -> Path:
    cfg = {"student": {"family": "composed", "config": env["student"], "tokenizer": env["tokenizer"]},
           "teacher": {"family": "composed", "path": env["teacher"], **teacher},
           "data": {"train": env["train"], "max_length": 128}, "loss": {"name": "taid"},
           "train": {"output_dir": str(path.parent / "out"), "max_steps": steps, "batch_size": batch, "lr": 1e-3,
                     "save_every": 2, "keep_last": 3},
           "logging": {"report_to": [], "progress": False}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _peft_recipe(path: Path, env: dict, steps: int, batch: int, qlora: bool = False) -> Path:
    _recipe(path, env, steps, batch)
    cfg = yaml.safe_load(path.read_text())
    cfg["student"].update(train_vision=False, peft={"r": 8})
    if qlora:
        tok = env["tokenizer"]
        cfg["student"] = {"family": "text", "path": env["text_student"], "peft": {"r": 8, "load_in_4bit": True}}
        cfg["teacher"] = {"family": "text", "config": env["text_teacher"], "tokenizer": tok}
        cfg["data"] = {"train": env["corpus"], "format": "text", "max_length": 64, "cache_dir": str(path.parent / "hf")}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _peft_saved(recipe: Path) -> dict:
    out = recipe.parent / "out"
    ckpt = next((out / "checkpoints").glob("checkpoint-*"), None)
    keys = list(json.loads((out / "final" / "adapter_config.json").read_text()))
    return {"adapter_saved": bool(keys), "checkpoint_adapter_only": ckpt is not None and all(
        ".lora_" in k or "projector" in k for k in _safetensors_keys(ckpt / "model.safetensors"))}


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def _launch(args: list[str], recipe: Path, timeout: int, extra: list[str] = (), env: dict | None = None) -> dict:
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    cmd = [launcher, "launch", *args, "-m", "taid_vlm.cli", "train", str(recipe), *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return {"rc": proc.returncode, "seconds": round(time.time() - t0, 1), "stderr_tail": proc.stderr[-2000:],
            "stdout_tail": proc.stdout[-1000:]}


def _curve(recipe: Path) -> list[float]:
    log = recipe.parent / "out" / "logs" / "train.jsonl"
    return [json.loads(ln)["loss"] for ln in log.read_text().splitlines() if ln.strip()]


def _load_eval(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) > 0 and all(abs(x - y) <= TOL * max(abs(x), 1e-6) for x, y in zip(a, b))


def _fsdp_args(n: int) -> list[str]:
    return ["--use_fsdp", "--fsdp_version", "2", "--num_processes", str(n), "--mixed_precision", "bf16",
            "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "FULL_STATE_DICT",
            "--fsdp_reshard_after_forward", "true"]


def compiled_kernel(device: str, rows: int) -> dict:
    """The torch.compile'd TAID kernel (Triton on a GPU) against the eager one at V = 151,936, fp32:
    values and gradient within fp32 summation-order tolerance, and both times (median of 5)."""
    import torch

    from taid_vlm.losses import _compiled
    from taid_vlm.losses.taid import taid_value_and_grad

    g = torch.Generator(device=device).manual_seed(0)
    s = torch.log_softmax(torch.randn(rows, 151936, device=device, generator=g) * 3, -1)
    t = torch.randn(rows, 151936, device=device, generator=g) * 3
    out, times, kept = {}, {}, os.environ.get("TAID_VLM_COMPILE")
    for mode in ("0", "1"):
        os.environ["TAID_VLM_COMPILE"] = mode
        runs = []
        for _ in range(6):  # the first compiles
            tb = t.clone()
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            kl, ce, grad = taid_value_and_grad(s, tb, 0.4, 1.0, True, True)
            if device == "cuda":
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
        out[mode], times[mode] = (kl, ce, grad), sorted(runs[1:])[2]
    if kept is None:  # the later checks' subprocesses inherit the environment as it was
        os.environ.pop("TAID_VLM_COMPILE")
    else:
        os.environ["TAID_VLM_COMPILE"] = kept
    diff = {k: float((a - b).abs().max()) for k, a, b in zip(("kl", "ce", "grad"), out["0"], out["1"])}
    ok = (not _compiled._STATE["failed"] and diff["kl"] < 1e-3 * max(1.0, float(out["0"][0].abs().max()))
          and diff["grad"] < 1e-5)
    return {"ok": ok, "rows": rows, "max_abs_diff": diff, "eager_s": times["0"], "compiled_s": times["1"],
            "compile_failed": bool(_compiled._STATE["failed"])}


def run_checks(work: Path, steps: int, timeout: int, cpu_smoke: bool = False) -> dict:
    import torch

    n = 0 if cpu_smoke else torch.cuda.device_count()
    env = _env(work)
    gb = 4 * max(n, 1)  # global batch, the same in every check
    res: dict = {"gpus": n, "device": torch.cuda.get_device_name(0) if n else None, "checks": {}}

    def check(name: str, fn) -> None:
        try:
            res["checks"][name] = fn()
        except Exception as err:  # noqa: BLE001 - a report, not a test runner: keep going
            res["checks"][name] = {"ok": False, "error": repr(err)}
        print(name, json.dumps(res["checks"][name])[:300], flush=True)

    def single():
        r = _recipe(work / "single" / "c.yaml", env, steps, gb)
        out = _launch(["--num_processes", "1", "--mixed_precision", "bf16", *(["--cpu"] if cpu_smoke else [])],
                      r, timeout)
        ok = out["rc"] == 0 and "mixed_precision=bf16" in out["stdout_tail"] + out["stderr_tail"]
        return {"ok": ok, "curve": _curve(r) if out["rc"] == 0 else None, **out}

    check("bf16_from_launcher", single)
    base = res["checks"]["bf16_from_launcher"].get("curve")

    def peft(tag: str, procs: int, qlora: bool = False):
        r = _peft_recipe(work / tag / "c.yaml", env, steps, gb // procs, qlora)
        launch = ["--multi_gpu"] if procs > 1 else [*(["--cpu"] if cpu_smoke else [])]
        out = _launch([*launch, "--num_processes", str(procs), "--mixed_precision", "bf16"], r, timeout)
        c = _curve(r) if out["rc"] == 0 else None
        saved = _peft_saved(r) if c else {}
        ok = bool(c) and all(x == x for x in c) and all(saved.values())
        if tag == "lora_ddp":
            ok = ok and _close(c, res["checks"]["lora"].get("curve") or [])
        return {"ok": ok, "curve": c, **saved, **out}

    check("lora", lambda: peft("lora", 1))
    check("qlora", lambda: peft("qlora", 1, qlora=True))

    def loss_rows():
        bench = _load_eval("bench_losses")
        out = work / "loss_rows"
        shape = ["--quick"] if cpu_smoke else ["--ns", "2048", "--vs", "151936", "--peers", "2048,151936"]
        rc = bench.main([*shape, "--bf16", "--output", str(out), "--timeout", str(timeout)])
        report = json.loads((out / "bench_losses.json").read_text())
        return {"ok": rc == 0, "ratios": report["ratios"], "target_result": report["target_result"],
                "peers": report["peers"], "cases": report["cases"]}

    check("loss_rows_bf16", loss_rows)
    check("compiled_taid_kernel", lambda: compiled_kernel("cpu" if cpu_smoke else "cuda", 32 if cpu_smoke else 256))
    if cpu_smoke:  # the script's own plumbing, on a machine without GPUs
        res["ok"] = all(c.get("ok") is not False for c in res["checks"].values())
        return res
    if n > 1:
        check("lora_ddp", lambda: peft("lora_ddp", n))

    def ddp():
        r = _recipe(work / "ddp" / "c.yaml", env, steps, gb // n)
        out = _launch(["--multi_gpu", "--num_processes", str(n), "--mixed_precision", "bf16"], r, timeout)
        c = _curve(r) if out["rc"] == 0 else None
        return {"ok": bool(c) and _close(c, base), "curve": c, **out}

    if n > 1:
        check("ddp", ddp)

    def fsdp(placement: str = "replicated", tag: str = "fsdp2", kill: int = 0):
        r = _recipe(work / tag / "c.yaml", env, steps, gb // n, placement=placement)
        out = _launch(_fsdp_args(n), r, timeout, env={"TAID_VLM_TEST_KILL_AT_STEP": str(kill)} if kill else None)
        if kill:
            out = _launch(_fsdp_args(n), r, timeout, extra=["--resume", "auto"])
        c = _curve(r) if out["rc"] == 0 else None
        result = {"ok": bool(c) and _close(c, base), "curve": c, **out}
        if out["rc"] == 0 and tag == "fsdp2":
            from transformers import AutoModel

            AutoModel.from_pretrained(r.parent / "out" / "final", trust_remote_code=True)
            result["final_loads"] = True
        return result

    check("fsdp2", fsdp)
    check("fsdp2_resume", lambda: fsdp(tag="fsdp2_resume", kill=3))  # checkpoint-2 exists, step 3 is redone
    check("fsdp2_sharded_teacher", lambda: fsdp("sharded", "fsdp2_sharded"))

    def dispatched():
        # A budget per GPU of ~1.5/n of the teacher, so that its layers really spread over every GPU.
        size = (Path(env["teacher"]) / "model.safetensors").stat().st_size
        mm = {**{str(i): int(size * 1.5 / n) + 2**16 for i in range(n)}, "cpu": "1GiB"}
        r = _recipe(work / "dispatched" / "c.yaml", env, steps, gb, placement="dispatched", max_memory=mm)
        out = _launch(["--num_processes", "1", "--mixed_precision", "bf16"], r, timeout)
        c = _curve(r) if out["rc"] == 0 else None
        return {"ok": bool(c) and _close(c, base), "curve": c, **out}

    check("dispatched_teacher", dispatched)

    def zero():
        ds = ["--use_deepspeed", "--num_processes", str(n), "--mixed_precision", "bf16",
              "--gradient_accumulation_steps", "1", "--gradient_clipping", "1.0"]
        r3 = _recipe(work / "zero3" / "c.yaml", env, steps, gb // n)
        z3 = _launch([*ds, "--zero_stage", "3"], r3, timeout)
        r2 = _recipe(work / "zero2" / "c.yaml", env, steps, gb // n)
        z2 = _launch([*ds, "--zero_stage", "2"], r2, timeout)
        refused = z3["rc"] != 0 and "ZeRO-3" in z3["stderr_tail"]
        c = _curve(r2) if z2["rc"] == 0 else None
        return {"ok": refused and bool(c) and _close(c, base), "zero3_refused": refused, "zero2_curve": c,
                "zero3": z3, "zero2": z2}

    if importlib.util.find_spec("deepspeed") is not None:
        check("zero3", zero)
    else:
        res["checks"]["zero3"] = {"ok": None, "skipped": "deepspeed is not installed"}
    res["ok"] = all(c.get("ok") is not False for c in res["checks"].values())
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="eval/results/gpu_check.json")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per launched run")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--cpu-smoke", action="store_true", help="checks 1, 8 and 9 on the CPU (tests the script)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_check: no CUDA device here; this script is for a GPU machine", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="taid_gpu_check_"))
    t0 = time.time()
    res = run_checks(work, args.steps, args.timeout, args.cpu_smoke)
    res["seconds"] = round(time.time() - t0, 1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"gpu_check: {'all ok' if res['ok'] else 'FAILURES'}; wrote {out}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
