"""experiments.paper.decomposition: one factor at a time from cpu to paper (issue 31)."""

import json
import subprocess
import sys

import pytest

from experiments.paper import decomposition
from mgdd_jax.configs import distill as distill_config


def _get(config, path):
    for part in path.split("."):
        config = config[part]
    return config


def test_each_factor_changes_the_base_where_it_says_and_paper_is_the_preset():
    base = distill_config.get_config("cpu")
    for name in ("eval", "feature", "n_t", "generator", "alpha"):
        c = base.copy_and_resolve_references()
        decomposition.apply_factor(c, name)
        changed = {k for k in ("eval.protocol", "feature.width", "adapt.batch_size",
                               "generator.width", "adapt.learning_rate")
                   if _get(c, k) != _get(base, k)}
        assert changed == set(decomposition.FACTORS[name]), name
    c = base.copy_and_resolve_references()
    decomposition.apply_factor(c, "paper")
    paper = distill_config.get_config("paper")
    # the same config but for the variant's name
    assert {**c.to_dict(), "variant": ""} == {**paper.to_dict(), "variant": ""}
    with pytest.raises(ValueError, match="unknown factor"):
        decomposition.apply_factor(c, "width")


def test_summarise_gives_across_set_statistics_and_the_difference_from_cpu():
    got = decomposition.summarise({"cpu": {0: 60.0, 1: 62.0}, "eval": {0: 63.0, 1: 65.0}})
    assert got["cpu"]["mean"] == 61.0 and got["cpu"]["minus_cpu"] == 0.0
    assert got["eval"]["minus_cpu"] == pytest.approx(3.0)
    assert got["eval"]["std"] == pytest.approx(2 ** 0.5)
    assert decomposition.summarise({"eval": {0: 63.0}})["eval"]["minus_cpu"] is None


@pytest.mark.slow
def test_a_tiny_decomposition_and_its_resume(tmp_path):
    out = tmp_path / "dec"
    cmd = [sys.executable, "-m", "experiments.paper.decomposition", "--config=smoke",
           "--dataset=digits", "--ipc=1", "--factors=cpu,alpha", "--sets=2",
           "--decomposition_steps=1", f"--out={out}"]
    subprocess.run(cmd, check=True, capture_output=True)
    result = json.loads((out / "decomposition.json").read_text())
    assert sorted(result["cells"]) == ["alpha", "cpu"]
    assert len(result["cells"]["alpha"]["per_set"]) == 2
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        "alpha_set0.json", "alpha_set1.json", "cpu_set0.json", "cpu_set1.json"]
    assert (out / "decomposition.md").is_file() and (out / "decomposition.png").is_file()
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "done" not in again.stderr
    assert json.loads((out / "decomposition.json").read_text()) == result
    bad = subprocess.run([*cmd[:-1], "--factors=width", f"--out={tmp_path / 'bad'}"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown factor" in bad.stderr
