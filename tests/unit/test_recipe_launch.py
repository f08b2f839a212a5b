"""Every shipped recipe is launched in the README, its header gives the same launch, and the memory
plan passes for that launch (issue 36, item 4): GPU recipes under their accelerate config's
process count on 80 GB GPUs (the figure the README's plan uses), with a sharded teacher only under
an engine that shards (FSDP, DeepSpeed); one-process CPU recipes set ``train.cpu``, so no GPU plan
applies to them (``check_fits`` plans on CUDA only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from taid_vlm.cli import main
from taid_vlm.config_io import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
README = (ROOT / "README.md").read_text()


def launches(text: str, recipe: Path) -> set[str]:
    """The launch prefixes of ``recipe`` in ``text``: ``taid-vlm train configs/X.yaml`` or
    ``accelerate launch ... -m taid_vlm.cli train configs/X.yaml``, whitespace normalised."""
    pat = rf"((?:accelerate launch [^\n#`]*?-m taid_vlm\.cli|taid-vlm) train configs/{re.escape(recipe.name)})(?![\w.])"
    return {" ".join(m.split()) for m in re.findall(pat, text)}


def header(recipe: Path) -> str:
    lines = recipe.read_text().splitlines()
    return "\n".join(ln for ln in lines[:next((i for i, ln in enumerate(lines) if not ln.startswith("#")), 0)])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_readme_and_header_launch_the_recipe_the_same_way(recipe):
    in_readme = launches(README, recipe)
    assert in_readme, f"README.md gives no launch command for configs/{recipe.name}"
    in_header = launches(header(recipe), recipe)
    assert in_header, f"configs/{recipe.name}: its header comment gives no launch command"
    assert in_header <= in_readme, (in_header, in_readme)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_the_plan_passes_for_the_readme_launch(recipe, capsys):
    cfg = load_config(recipe)
    for launch in sorted(launches(README, recipe)):
        m = re.search(r"--config_file (\S+)", launch)
        if m is None:  # one process, as `taid-vlm train`: a CPU recipe
            assert cfg.train.cpu, f"{launch}: one process on a GPU recipe; give its accelerate launch"
            continue
        acc = yaml.safe_load((ROOT / m.group(1)).read_text())
        if cfg.teacher.placement == "sharded":
            assert acc["distributed_type"] in ("FSDP", "DEEPSPEED"), f"{launch}: a sharded teacher needs FSDP/DeepSpeed"
        status = main(["plan", str(recipe), "--gpus", str(acc["num_processes"]), "--gpu-memory", "80GB"])
        out = capsys.readouterr().out
        assert status == 0, f"{launch}: the plan says the recipe does not fit:\n{out}"
        assert f"teacher.placement {cfg.teacher.placement}: fits" in out
