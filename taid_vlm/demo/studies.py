"""Grids of runs on the synthetic task for the reproduction suites under ``eval/``.

Every run of a study shares the data, the tokenizer and the shipped teacher(s) (``teachers.py``);
students differ only in the method and the seed, with the same steps and batch size — the paper's comparison
protocol at a scale a CPU can run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from taid_vlm.demo.presets import PRESETS
from taid_vlm.demo.report import machine_line
from taid_vlm.demo.run import stage_data, stage_eval, stage_teacher_cache, stage_train, student_config
from taid_vlm.demo.scoring import ci95, mean_spread
from taid_vlm.demo.teachers import teacher_dir

# Study method name -> (loss name, config overrides).
METHOD_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    **{m: (m, {}) for m in ("sft", "fkl", "rkl", "tvd", "gjsd", "skew_fkl", "skew_rkl", "akl", "ctkd", "dkd", "taid")},
    "taid_linear": ("taid", {"loss": {"taid": {"adaptive": False}}}),
}


QUICK_STUDENT_STEPS = 30  # --quick: enough to exercise a script end to end, as the tests do


def study_parser(doc: str, work: str) -> argparse.ArgumentParser:
    """The options every eval/ script shares: --quick, --work, --output."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset and short student runs (the tests use it)")
    ap.add_argument("--work", default=work, help="folder for data, teachers and runs (reused when present)")
    ap.add_argument("--output", default="eval/results", help="where the JSON / Markdown / PNG go")
    return ap


def open_study(args: argparse.Namespace, student_steps: int | None = None) -> Study:
    """The Study of a script's parsed options: tiny preset and short students with --quick."""
    quick = args.quick
    return Study(args.work, "tiny" if quick else "default",
                 student_steps=student_steps or (QUICK_STUDENT_STEPS if quick else None))


class Study:
    """One study's working folder: the students' data made once, the shipped teachers, student runs."""

    def __init__(self, work: str | Path, preset: str = "default", student_steps: int | None = None) -> None:
        # Resolved: runs' saved configs name their paths the same way whichever spelling reached
        # the folder (reuse itself compares the named files' contents: run_key).
        self.work = Path(work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.preset = json.loads(json.dumps(PRESETS[preset]))  # a private copy to adjust
        if student_steps:
            self.preset["student_train"]["max_steps"] = student_steps
        self.preset_name = preset
        self._caches: dict[str, Path] = {}
        self.paths = stage_data(self.work, self.preset)

    def teacher(self, name: str | None = None) -> Path:
        """A shipped demo teacher (``S``, ``M`` or ``L``; default the preset's), built once by
        eval/build_demo_teachers.py."""
        return teacher_dir(name or self.preset["teacher"])

    def teacher_cache(self, name: str) -> Path:
        """The shipped teacher ``name``'s outputs on this study's training set, made once (see
        ``run.stage_teacher_cache``); checked once per study, not once per student."""
        if name not in self._caches:
            self._caches[name] = stage_teacher_cache(self.work, self.paths, self.preset, name)
        return self._caches[name]

    def evaluate(self, model_dir: Path, result_file: Path | None = None) -> dict[str, float]:
        """VQA accuracy, CIDEr (x100) and held-out response NLL per token of a saved model, e.g. a
        teacher; the scores are kept in
        ``result_file`` (default ``model_dir/../eval.json``) and reused while the model is unchanged."""
        res = stage_eval(model_dir, self.paths, self.preset, result_file or model_dir.parent / "eval.json")
        return {"vqa_accuracy": res["vqa"]["vqa_accuracy"], "cider": res["caption"]["CIDEr"] * 100,
                "nll": res["nll"]["nll"], "params": res["params"]}

    def evaluate_teacher(self, name: str | None = None) -> dict[str, float]:
        """``evaluate`` of a shipped teacher on this study's held-out items (kept in the work folder)."""
        name = name or self.preset["teacher"]
        return {"name": name, **self.evaluate(self.teacher(name), self.work / f"teacher_{name}_eval.json")}

    def student(self, method: str, seed: int, teacher: Path | None, name: str | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train and evaluate one student; returns scores, time and the run folder (``run``, relative
        to the work folder: ``run_dir``)."""
        if method not in METHOD_SPECS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHOD_SPECS)}")
        loss, extra = METHOD_SPECS[method]
        run = self.work / (name or f"student_{method}_s{seed}")
        distil = loss != "sft"
        cache = str(self.teacher_cache(Path(teacher).name)) if distil and self.preset.get("teacher_cache") else None
        cfg = student_config(run, self.paths, self.preset, loss, seed, str(teacher) if distil else None, cache,
                             {**extra, **(overrides or {})})
        seconds = stage_train(run, cfg, run.name)
        # Relative to the work folder: a results file names no folder of the machine that made it.
        return {"method": method, "seed": seed, "run": run.relative_to(self.work).as_posix(),
                "train_seconds": seconds, **self.evaluate(run / "final")}

    def run_dir(self, row: dict[str, Any]) -> Path:
        """The folder of a ``student`` result (its ``run`` is relative to the work folder)."""
        return self.work / row["run"]


def score_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and sd of VQA accuracy, CIDEr and held-out NLL per token over runs of one cell (e.g. the
    seeds of a method): ``vqa_mean``, ``vqa_sd``, ``cider_mean``, ``cider_sd``, ``nll_mean``,
    ``nll_sd`` and ``n``."""
    (vm, vs), (cm, cs), (nm, ns) = (mean_spread([r["vqa_accuracy"] for r in runs]),
                                    mean_spread([r["cider"] for r in runs]), mean_spread([r["nll"] for r in runs]))
    return {"vqa_mean": vm, "vqa_sd": vs, "cider_mean": cm, "cider_sd": cs, "nll_mean": nm, "nll_sd": ns,
            "n": len(runs)}


SCORE_HEADER = "VQA acc (mean ± sd) | held-out NLL/token (mean ± sd) | CIDEr x100 (mean ± sd) | seeds"


def score_cells(s: dict[str, float]) -> str:
    """A ``score_summary`` as the Markdown cells under ``SCORE_HEADER`` (no outer pipes)."""
    return (f"{s['vqa_mean']:.1f} ± {s['vqa_sd']:.1f} | {s['nll_mean']:.3f} ± {s['nll_sd']:.3f} | "
            f"{s['cider_mean']:.1f} ± {s['cider_sd']:.1f} | {s['n']}")


def paired_by_seed(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """Method ``a`` minus method ``b``, seed by seed (a seed fixes the student's init and data order
    for every method, so the pair shares all but the loss): mean and 95% t-interval half-width over
    the seeds both have, for VQA accuracy (``vqa``, ``vqa_ci``) and held-out NLL per token (``nll``,
    ``nll_ci``; < 0: ``a`` is better), with the per-seed ``vqa_diffs`` / ``nll_diffs`` and ``n``;
    None when no seed has both."""
    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted(s for m, s in by if m == a and (b, s) in by)
    if not seeds:
        return None
    out: dict[str, Any] = {"a": a, "b": b, "seeds": seeds, "n": len(seeds)}
    for key, metric in (("vqa", "vqa_accuracy"), ("nll", "nll")):
        diffs = [by[(a, s)][metric] - by[(b, s)][metric] for s in seeds]
        out[key], out[f"{key}_ci"] = ci95(diffs)
        out[f"{key}_diffs"] = diffs
    return out


def difference_table(diffs: list[dict[str, Any]], labels: list[str] | None = None, per_seed: str = "vqa",
                     nll_note: str = "< 0: first is better") -> str:
    """Markdown table of ``paired_by_seed`` results: mean and 95% interval of the VQA-accuracy and
    NLL differences, the per-seed differences of ``per_seed`` ("vqa" or "nll"), the seed count;
    row labels ``labels`` (default "a - b")."""
    rows = [f"| difference, paired by seed | VQA acc (points) [95% CI] | held-out NLL/token (nats; {nll_note}) "
            f"[95% CI] | per seed ({per_seed.upper()}) | seeds |", "|---|---|---|---|---|"]
    fmt = "+.1f" if per_seed == "vqa" else "+.3f"
    for i, d in enumerate(diffs):
        label = labels[i] if labels else f"{d['a']} - {d['b']}"
        rows.append(f"| {label} | {d['vqa']:+.1f} [{d['vqa'] - d['vqa_ci']:+.1f}, {d['vqa'] + d['vqa_ci']:+.1f}] "
                    f"| {d['nll']:+.3f} [{d['nll'] - d['nll_ci']:+.3f}, {d['nll'] + d['nll_ci']:+.3f}] "
                    f"| {', '.join(format(x, fmt) for x in d[f'{per_seed}_diffs'])} | {d['n']} |")
    return "\n".join(rows)


def provenance(argv: list[str], script: str) -> dict[str, str]:
    """The command, date and machine of a results file (thread count included: it changes the
    floating-point order, hence the runs' numbers)."""
    return {"command": " ".join(["python", script, *argv]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_line()}


def write_study(out: str | Path, name: str, title: str, report: dict[str, Any], table: str) -> Path:
    """Write ``NAME.json`` (the report) and ``NAME.md`` (title, provenance, table) under ``out``;
    returns ``out`` (the caller adds ``NAME.png``) and prints the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(f"# {title}\n\n{report['date']}; {report['machine']}\n\n"
                                    f"`{report['command']}`\n\n{table}\n")
    print(table)
    return out
