"""Build the demo's teachers (S, M, L) once and save them into the package.

    python eval/build_demo_teachers.py                  # all three, into taid_vlm/demo/teachers/
    python eval/build_demo_teachers.py --teachers M     # one of them

Each teacher is trained by SFT on the synthetic set's first ``TEACHER_DATA["n_train"]`` training
images (seed ``TEACHER_DATA["seed"]``) with the model and steps of ``presets.TEACHERS``, scored on
the held-out questions, and saved with its tokenizer (trained here on the set's text: every teacher
and student shares it) and a ``build.json``: the settings, command, date, machine, train time and
scores. ``make demo`` and the eval/ studies then load them instead of training a teacher, which on
two CPU cores would take longer than the whole demo may. Rebuilding gives the same weights only on
the same torch build and thread count (floating-point order); the demo checks the settings, not the
bytes.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from taid_vlm.demo.presets import PRESETS, TEACHER_DATA, TEACHERS
from taid_vlm.demo.report import mean_by_type
from taid_vlm.demo.run import make_set, stage_eval, stage_train, train_config
from taid_vlm.demo.studies import provenance, study_parser
from taid_vlm.demo.teachers import BUILD_FILE, SHIPPED, build_spec


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = study_parser(__doc__, "runs/demo_teachers")
    ap.add_argument("--teachers", default=",".join(TEACHERS), help="comma list of S, M, L")
    ap.add_argument("--dest", default=str(SHIPPED), help="where the built teachers go")
    args = ap.parse_args(argv)
    names = [n for n in args.teachers.split(",") if n]
    unknown = [n for n in names if n not in TEACHERS]
    if unknown:
        ap.error(f"--teachers: unknown {unknown}; valid: {', '.join(TEACHERS)}")
    work, dest = Path(args.work), Path(args.dest)
    data = {k: TEACHER_DATA[k] for k in ("n_train", "n_val", "image_size")}
    paths = make_set(work, data, TEACHER_DATA["seed"], TEACHER_DATA["tokenizer_vocab"])
    preset = PRESETS["default"]
    for name in names:
        spec = TEACHERS[name]
        run = work / f"teacher_{name}"
        cfg = train_config(run, paths, spec["model"], spec["train"], "sft", TEACHER_DATA["seed"], None)
        seconds = stage_train(run, cfg, f"teacher {name}")
        res = stage_eval(run / "final", paths, preset, run / "eval.json")
        info = {"spec": build_spec(name), **provenance(argv, "eval/build_demo_teachers.py"),
                "train_seconds": seconds, "params": res["params"],
                "scores": {"vqa_accuracy": res["vqa"]["vqa_accuracy"], "nll": res["nll"]["nll"],
                           "cider": res["caption"]["CIDEr"] * 100,
                           "vqa_by_type": dict(sorted(mean_by_type(
                               res["items"]["vqa"],
                               [r["question_type"] for r in json.loads(Path(paths["val_vqa"]).read_text())]).items())),
                           "held_out_questions": len(res["items"]["vqa"])}}
        target = dest / name
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
        print(json.dumps({"teacher": name, "train_seconds": round(seconds), "params": res["params"],
                          **info["scores"]}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
