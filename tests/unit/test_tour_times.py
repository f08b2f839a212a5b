"""eval/tour_times.py: the commands it times are the README tour's, its table, and --start's guard."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_eval_script


def test_the_tour_is_the_readme_s_runnable_lines_in_order():
    tt = load_eval_script("tour_times")
    cmds = tt.tour_commands()
    assert cmds[0].startswith("taid-vlm make-synthetic") and cmds[1] == "taid-vlm train configs/tiny_vlm_teacher.yaml"
    assert all(c.startswith(("taid-vlm ", "accelerate launch ")) for c in cmds)


def test_markdown_table_gives_minutes_past_100_s_and_marks_a_failure():
    tt = load_eval_script("tour_times")
    report = {"tour": [{"command": "taid-vlm a", "seconds": 21.29, "returncode": 0, "load_1min_before": 0.31},
                       {"command": "taid-vlm b", "seconds": 3114.2, "returncode": 0, "load_1min_before": 15.2},
                       {"command": "taid-vlm c", "seconds": 2.0, "returncode": 2, "load_1min_before": 1.0}]}
    lines = tt.markdown(report).splitlines()
    assert lines[2] == "| `taid-vlm a` | 21.3 s | 0.3 |"
    assert lines[3] == "| `taid-vlm b` | 51.9 min | 15.2 |"
    assert lines[4] == "| `taid-vlm c` | 2.0 s (exit 2) | 1.0 |"


def test_start_refuses_a_json_without_the_earlier_rows(tmp_path):
    tt = load_eval_script("tour_times")
    (tmp_path / "tour_times.json").write_text(json.dumps({"tour": [{"command": "taid-vlm other"}]}))
    with pytest.raises(SystemExit):
        tt.main(["--workdir", str(tmp_path / "w"), "--start", "1", "--output", str(tmp_path)])
    assert json.loads((tmp_path / "tour_times.json").read_text())["tour"] == [{"command": "taid-vlm other"}]
