"""experiments.meta_studies.start_controls: whole distillations repeated over R sets, and the
statistics across them."""

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments.meta_studies import start_controls


def _cell(start_points):
    return {"ipc": 1, "curves": {s: {"points": [{"step": k, "mean": v} for k, v in pts]}
                                 for s, pts in start_points.items()}}


def test_across_sets_is_the_mean_and_sample_std_of_the_sets():
    v = [61.0, 64.5, 62.25]
    got = start_controls.across_sets(v)
    assert got["mean"] == pytest.approx(np.mean(v))
    assert got["std"] == pytest.approx(np.std(v, ddof=1))
    assert got["per_set"] == v
    assert start_controls.across_sets([70.0]) == {"mean": 70.0, "std": 0.0, "per_set": [70.0]}
    with pytest.raises(ValueError, match="non-empty"):
        start_controls.across_sets([])


def test_summarise_groups_by_start_rate_and_step_and_counts_a_set_once():
    cells = {
        "lr0.001_set0": _cell({"fresh": [(50, 0.60), (100, 0.62)]}),
        "lr0.001_set1": _cell({"fresh": [(50, 0.64), (100, 0.66)]}),
        # the same (fresh, lr, set 1) beside another start: counted once
        "fresh+core1__lr0.001_set1": _cell({"fresh": [(50, 0.64)], "core_s1": [(50, 0.70)]}),
        "lr0.0001_set0": _cell({"fresh": [(50, 0.50)]}),
    }
    t = start_controls.summarise(cells)
    assert sorted(t) == ["core_s1", "fresh"]
    assert list(t["fresh"]) == ["0.0001", "0.001"]
    assert t["fresh"]["0.001"]["50"]["per_set"] == pytest.approx([60.0, 64.0])
    assert t["fresh"]["0.001"]["50"]["std"] == pytest.approx(np.std([60, 64], ddof=1))
    assert t["fresh"]["0.001"]["100"]["mean"] == pytest.approx(64.0)
    assert t["core_s1"]["0.001"]["50"]["per_set"] == pytest.approx([70.0])


@pytest.mark.slow
def test_a_tiny_control_run_and_its_resume(tmp_path):
    out = tmp_path / "controls"
    cmd = [sys.executable, "-m", "experiments.meta_studies.start_controls", "--config=smoke",
           "--dataset=digits", "--ipc=1", "--at=0,1", "--lrs=1e-3", "--sets=2",
           "--core_scales=1", f"--out={out}"]
    subprocess.run(cmd, check=True, capture_output=True)
    result = json.loads((out / "controls.json").read_text())
    assert sorted(result["table"]) == ["core_s1", "fresh"]
    cell = result["table"]["core_s1"]["0.001"]["1"]
    assert len(cell["per_set"]) == 2
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        "fresh+core1__lr0.001_set0.json", "fresh+core1__lr0.001_set1.json"]
    fresh0 = result["table"]["fresh"]["0.001"]["0"]["per_set"]
    assert len(fresh0) == 2
    assert (out / "controls.md").read_text().count("|") > 10 and (out / "controls.png").is_file()
    # a rerun finds every cell and recomputes nothing (no stage line of a data load)
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "loading digits" not in again.stderr
    assert json.loads((out / "controls.json").read_text()) == result
    bad = subprocess.run([*cmd[:3], "--config=smoke", "--v2_controls", "--meta_checkpoint=",
                          f"--out={tmp_path / 'bad'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--v2_controls needs --meta_checkpoint" in bad.stderr
