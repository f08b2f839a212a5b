"""Full-logits TAID (as the official code computes it) vs the fused chunked path: memory and time.

Each case (path, N, V) runs in its own process so that peak memory is measured cleanly: on CUDA
with ``torch.cuda.max_memory_allocated``, on CPU with the kernel's peak-RSS counter (VmHWM reset
through ``/proc/self/clear_refs``; ``ru_maxrss`` otherwise) minus the RSS after the inputs exist.
Time is forward + backward wall clock. Cases whose estimated need exceeds the available memory
are recorded as skipped, not run. Writes ``bench_losses.json`` and ``bench_losses.png``.

``--peers N,V`` adds side-by-side rows on the same inputs (``eval/loss_peers.py``): our fused JSD
against Liger-Kernel's chunked JSD and full logits, our fused LM cross-entropy against Cut
Cross-Entropy and full logits. Per group the rows take turns one step at a time in one process
(round-robin after a warm-up step each, which also compiles), median of ``--rounds``; memory is one
step per row in its own process. A machine shared with other jobs slows every row alike, hence
ratios within a group; the load average is recorded.

    python eval/bench_losses.py [--quick] [--output eval/results]
    python eval/bench_losses.py --ns 2048 --vs 151936 --peers 2048,151936 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

FULL_BUFFERS = 8  # [N, V] fp32 tensors alive at the full path's peak (estimate used for skipping)
TARGET = {"N": 2048, "V": 151936, "mem_ratio_max": 0.10, "time_ratio_max": 1.0}  # issue #34


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _PeakMeter:
    """Peak extra memory of a block, in MiB (CUDA allocator or process RSS)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def start(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.mode = "VmHWM"
        except OSError:
            self.mode = "ru_maxrss"  # only valid when the process peak so far is the current RSS
        self.base = _rss_kb("VmRSS") * 1024

    def stop(self) -> float:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        peak = _rss_kb("VmHWM") * 1024 if self.mode == "VmHWM" else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self.base, 0) / 2**20


def _full_step(h, w, th, tw, t: float):
    """The official TAID computation: whole [N, V] logits, softmax of the interpolation, forward KL."""
    import torch
    import torch.nn.functional as F

    logits = h @ w.T
    with torch.no_grad():
        teacher_logits = th @ tw.T
    p_t = F.softmax((1 - t) * logits.detach() + t * teacher_logits, dim=-1, dtype=torch.float32)
    logq = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    prod = torch.masked_fill(p_t * logq, torch.isinf(logits), 0)
    mask = torch.ones(h.shape[0], device=h.device)
    return -(prod.sum(-1) * mask).sum() / mask.sum()


def run_case(spec: dict) -> dict:
    """Child process: build inputs, run fwd+bwd ``repeats`` times, return peak MiB and seconds."""
    import torch

    from taid_vlm.losses import fused_distill_loss, get_loss

    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n, v, hdim, t = spec["N"], spec["V"], spec["H"], 0.5
    dt = torch.bfloat16 if spec.get("bf16") else torch.float32
    h = torch.randn(n, hdim, device=dev).to(dt).requires_grad_()
    w = (torch.randn(v, hdim, device=dev) * 0.05).to(dt).requires_grad_()
    th, tw = torch.randn(n, hdim, device=dev).to(dt), (torch.randn(v, hdim, device=dev) * 0.05).to(dt)

    taid = get_loss("taid", t=t)

    def step():
        if spec["path"] == "full":
            return _full_step(h, w, th, tw, t)
        return fused_distill_loss(h, w, th, tw, loss=taid, chunk_size=spec["chunk"])

    if spec["path"] == "fused":  # compile the TAID kernel (losses/_compiled.py) once, untimed, as training would
        rows = spec["chunk"]
        fused_distill_loss(h[:rows], w, th[:rows], tw, loss=get_loss("taid", t=t), chunk_size=rows).backward()
        h.grad = w.grad = None
    meter, mems, times, value = _PeakMeter(dev), [], [], None
    for i in range(spec["warmup"] + spec["repeats"]):
        h.grad = w.grad = None
        meter.start()
        t0 = time.perf_counter()
        loss = step()
        loss.backward()
        if dev == "cuda":
            torch.cuda.synchronize()
        dt, mem = time.perf_counter() - t0, meter.stop()
        # The official code's value is the cross-entropy H(p_t, q) = KL + H(p_t); the fused TAID loss is
        # the KL (same gradient) and reports the cross-entropy in its stats.
        value = float(loss.detach()) if spec["path"] == "full" else float(taid.stats["taid_ce"]) / n
        del loss
        if i >= spec["warmup"]:
            times.append(dt)
            mems.append(mem)
    return {"peak_extra_mib": max(mems), "time_s": min(times), "times_s": times, "loss": value,
            "device": dev, "mem_method": "cuda.max_memory_allocated" if dev == "cuda" else meter.mode}


def _peers_mod():
    import importlib.util

    spec = importlib.util.spec_from_file_location("loss_peers", Path(__file__).resolve().parent / "loss_peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_peer(spec: dict) -> dict:
    """Child process: ``peer_time`` (every row of a group, round-robin, median) or ``peer_mem`` (one row)."""
    import statistics

    import torch

    peers = _peers_mod()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if spec.get("bf16") else torch.float32
    x = peers.inputs(spec["N"], spec["V"], spec["H"], dev, dtype)
    rows = [spec["row"]] if spec["mode"] == "peer_mem" else [r for r in peers.GROUPS[spec["group"]]
                                                              if not peers.missing(r)]
    steps = {r: peers.make_step(spec["group"], r, *x, compiled=spec.get("compiled", True)) for r in rows}
    if not spec.get("compiled", True):  # --quick: torch.compile'd peers run eagerly (compiling takes minutes)
        torch.compiler.set_stance("force_eager")
    loss = {r: fn() for r, fn in steps.items()}  # warm-up (and compile)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if spec["mode"] == "peer_mem":
        meter = _PeakMeter(dev)
        meter.start()
        steps[rows[0]]()
        return {"peak_extra_mib": meter.stop(), "device": dev}
    times: dict[str, list[float]] = {r: [] for r in rows}
    for i in range(spec["rounds"]):
        for r in rows[i % len(rows):] + rows[:i % len(rows)]:  # rotate who goes first
            sync()
            t0 = time.perf_counter()
            loss[r] = steps[r]()
            sync()
            times[r].append(time.perf_counter() - t0)
    return {r: {"times_s": t, "median_s": statistics.median(t), "loss": loss[r]} for r, t in times.items()}


def run_peers(n: int, v: int, hdim: int, args) -> list[dict]:
    """Both measurements of every peer group at ``(n, v)``; ratios to the group's ``full`` row."""
    peers = _peers_mod()
    out = []
    for group, rows in peers.GROUPS.items():
        base = {"N": n, "V": v, "H": hdim, "group": group, "threads": args.threads, "bf16": args.bf16,
                "compiled": not args.quick}
        timed = _spawn({**base, "mode": "peer_time", "rounds": args.rounds}, args.timeout)
        for row in rows:
            note = peers.missing(row)
            if note or timed["status"] != "ok":
                out.append({**base, "row": row, "status": "skipped" if note else "failed",
                            "reason": note or timed["reason"]})
                continue
            mem = _spawn({**base, "mode": "peer_mem", "row": row}, args.timeout)
            out.append({**base, "row": row, **timed[row], "status": mem["status"],
                        "peak_extra_mib": mem.get("peak_extra_mib"), "reason": mem.get("reason")})
        full = next((r for r in out if r["group"] == group and r["row"] == "full" and r["status"] == "ok"), None)
        for r in out:
            if full and r["group"] == group and r["status"] == "ok":
                r["time_ratio_to_full"] = r["median_s"] / full["median_s"]
                r["mem_ratio_to_full"] = r["peak_extra_mib"] / max(full["peak_extra_mib"], 1e-9)
        for r in (r for r in out if r["group"] == group):
            print(f"peer {group:3s} {r['row']:5s} N={n} V={v}: {r['status']} {r.get('median_s', float('nan')):.2f} s "
                  f"{r.get('peak_extra_mib') or float('nan'):.0f} MiB", flush=True)
    return out


def _available_mib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def _estimate_mib(path: str, n: int, v: int, h: int, chunk: int) -> float:
    rows = n if path == "full" else min(chunk, n)
    return (FULL_BUFFERS * rows * v * 4 + 2 * v * h * 4 + 4 * n * h * 4) / 2**20


def _spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get(
        "PYTHONPATH", ""))
    # glibc otherwise raises its mmap threshold after the first large free and keeps later chunk-sized
    # buffers on the heap, so freed memory stays resident and RSS peaks depend on allocation history.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        return {"status": "failed", "reason": proc.stderr.strip().splitlines()[-1:] or ["no output"]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def _plot(cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in sorted({c["V"] for c in cases}):
        for p, style in (("full", "o-"), ("fused", "s--")):
            pts = [c for c in cases if c["V"] == v and c["path"] == p and c["status"] == "ok"]
            if not pts:
                continue
            xs = [c["N"] for c in pts]
            axes[0].plot(xs, [c["peak_extra_mib"] for c in pts], style, label=f"{p} V={v}")
            axes[1].plot(xs, [c["time_s"] for c in pts], style, label=f"{p} V={v}")
    for ax, ylab in zip(axes, ("peak extra memory (MiB)", "forward+backward time (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N response tokens")
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("TAID loss: full [N, V] logits vs fused chunked LM head")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratios(cases: list[dict]) -> list[dict]:
    out = []
    for f in (c for c in cases if c["path"] == "fused" and c["status"] == "ok"):
        full = next((c for c in cases if c["path"] == "full" and c["N"] == f["N"] and c["V"] == f["V"]), None)
        if full and full["status"] == "ok":
            out.append({"N": f["N"], "V": f["V"], "mem_ratio": f["peak_extra_mib"] / max(full["peak_extra_mib"], 1e-9),
                        "time_ratio": f["time_s"] / full["time_s"], "loss_abs_diff": abs(f["loss"] - full["loss"])})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="eval/results", help="folder for bench_losses.json/.png")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, for tests (seconds)")
    ap.add_argument("--chunk", default="auto",
                    help="fused chunk size: rows, or 'auto' (the trainer's default, losses.fused.chunk_rows)")
    ap.add_argument("--hidden", type=int, default=896, help="hidden size H of student and teacher")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per case (0: torch default)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    ap.add_argument("--ns", default=None, help="comma-separated N values (default 512,2048,8192)")
    ap.add_argument("--vs", default=None, help="comma-separated V values (default 32000,151936)")
    ap.add_argument("--peers", default=None, help="N,V: add the peer rows (eval/loss_peers.py) at this shape")
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per peer row (round-robin, median)")
    ap.add_argument("--bf16", action="store_true", help="inputs and weights in bf16 (as on a GPU), every row")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        job = json.loads(args.child)
        print(json.dumps(run_peer(job) if job.get("mode", "").startswith("peer") else run_case(job)))
        return 0
    from taid_vlm.losses.fused import chunk_rows

    if args.quick:
        ns, vs, hdim, chunk = [128], [500], 32, 32  # 2 child processes: a few seconds
    else:
        ns, vs, hdim = [512, 2048, 8192], [32000, 151936], args.hidden
        chunk = args.chunk if args.chunk == "auto" else int(args.chunk)
        ns = [int(x) for x in args.ns.split(",")] if args.ns else ns
        vs = [int(x) for x in args.vs.split(",")] if args.vs else vs
    avail = _available_mib()
    cases = []
    for v in vs:
        for n in ns:
            for path in ("full", "fused"):
                small = n * v <= 2048 * 32000
                spec = {"path": path, "N": n, "V": v, "H": hdim, "chunk": chunk_rows(chunk, v), "threads": args.threads, "bf16": args.bf16,
                        "warmup": 1 if small else 0, "repeats": 2 if small else 1}
                need = _estimate_mib(path, n, v, hdim, spec["chunk"])
                if need > 0.8 * avail:
                    res = {"status": "skipped", "reason": f"estimated {need / 1024:.1f} GiB > 80% of the "
                                                          f"{avail / 1024:.1f} GiB available"}
                else:
                    res = _spawn(spec, args.timeout)
                cases.append({**spec, "estimated_mib": need, **res})
                print(f"{path:5s} N={n:5d} V={v:6d}: {res.get('status')} "
                      f"{res.get('peak_extra_mib', float('nan')):.0f} MiB {res.get('time_s', float('nan')):.2f} s",
                      flush=True)
    peers = run_peers(*map(int, args.peers.split(",")), hdim, args) if args.peers else []
    ratios = _ratios(cases)
    target = next((r for r in ratios if r["N"] == TARGET["N"] and r["V"] == TARGET["V"]), None)
    from taid_vlm.demo.studies import provenance

    report = {
        "benchmark": "taid loss fwd+bwd: full logits (official-code style) vs fused chunked",
        **provenance(argv if argv is not None else sys.argv[1:], "eval/bench_losses.py"),
        "quick": args.quick, "H": hdim, "chunk": chunk, "platform": platform.platform(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()), "cases": cases, "ratios": ratios, "target": TARGET,
        "peers": peers,
        "target_result": None if target is None else {
            **target, "mem_ok": target["mem_ratio"] <= TARGET["mem_ratio_max"],
            "time_ok": target["time_ratio"] <= TARGET["time_ratio_max"]},
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_losses.json").write_text(json.dumps(report, indent=2))
    _plot(cases, out / "bench_losses.png")
    print(json.dumps(ratios, indent=2))
    return 0 if all(c["status"] != "failed" for c in cases + peers) else 1


if __name__ == "__main__":
    sys.exit(main())
