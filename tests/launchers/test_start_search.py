"""experiments.meta_studies.start_search (successive halving over the start family on glyph
tasks) and experiments.meta_studies.reptile_average (Reptile by averaging from its winner)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.meta_studies import start_search

TINY_CORPUS = "glyphs:classes=20,per_class=20,size=12"


def test_halving_rounds_keep_a_third_and_add_tasks_until_one_would_be_left():
    assert start_search.halving_rounds(18, 3, 2, 3, 10) == [(18, 2), (6, 5), (2, 8)]
    assert start_search.halving_rounds(3, 2, 1, 1, 2) == [(3, 1), (2, 2)]
    # the tasks run out first
    assert start_search.halving_rounds(18, 3, 2, 3, 4) == [(18, 2), (6, 4)]
    assert start_search.halving_rounds(1, 3, 2, 3, 10) == [(1, 2)]
    with pytest.raises(ValueError, match="eta"):
        start_search.halving_rounds(6, 1, 2, 3, 10)


def test_tasks_are_disjoint_grey_ten_class_cuts_of_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MGDD_JAX_CACHE", str(tmp_path / "cache"))
    names = start_search.make_tasks(str(tmp_path / "tasks"), 2, TINY_CORPUS)
    assert len(names) == 2 and all(n.startswith("npz:") and n.endswith(",flip=0")
                                   for n in names)
    arrays = [np.load(n[len("npz:"):-len(",flip=0")]) for n in names]
    for a in arrays:
        assert a["x_train"].shape == (150, 12, 12)
        assert a["x_train"].dtype == np.uint8 and a["x_test"].shape == (50, 12, 12)
        assert sorted(set(a["y_train"].tolist())) == list(range(10))
    # different characters: no image of task 0 occurs in task 1
    seen = {x.tobytes() for x in arrays[0]["x_train"]}
    assert not any(x.tobytes() in seen for x in arrays[1]["x_train"])
    with pytest.raises(ValueError, match="holds 2 tasks"):
        start_search.make_tasks(str(tmp_path / "tasks"), 3, TINY_CORPUS)


@pytest.mark.slow
def test_a_tiny_search_then_reptile_and_their_resumes(tmp_path):
    env = {**os.environ, "MGDD_JAX_CACHE": str(tmp_path / "cache")}
    common = ["--config=smoke", "--ipc=1", f"--corpus={TINY_CORPUS}",
              f"--task_dir={tmp_path / 'tasks'}"]
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "experiments.meta_studies.start_search", *common,
           "--scales=0,0.5,1", "--multipliers=1", "--lrs=1e-3", "--eta=2", "--tasks=2",
           "--first_tasks=1", "--more_tasks=1", "--search_steps=1", f"--out={out}"]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    result = json.loads((out / "search.json").read_text())
    assert [len(r["candidates"]) for r in result["rounds"]] == [3, 2]
    assert result["best"]["name"] in result["rounds"][1]["candidates"]
    assert len(list((out / "cells").iterdir())) == 3 + 2
    assert (out / "search.md").is_file() and (out / "search.png").is_file()
    again = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    assert "loading" not in again.stderr
    assert json.loads((out / "search.json").read_text()) == result

    rout = tmp_path / "reptile"
    rcmd = [sys.executable, "-m", "experiments.meta_studies.reptile_average", *common,
            f"--search={out / 'search.json'}", "--runs=2", "--reptile_steps=1",
            "--train_tasks=0", "--holdout_tasks=1", "--holdout_seeds=1", "--betas=1",
            f"--out={rout}"]
    subprocess.run(rcmd, check=True, capture_output=True, env=env)
    rep = json.loads((rout / "reptile.json").read_text())
    assert set(rep["scores"]) == {"0", "1"} and -1 <= rep["agreement"]["all"] <= 1
    assert rep["vs_start"]["0"]["mean"] == 0
    assert (rout / "best").is_dir() and (rout / "reptile.png").is_file()
    again = subprocess.run(rcmd, check=True, capture_output=True, text=True, env=env)
    assert "adapted" not in again.stderr and "beta 1 task" not in again.stderr
    assert json.loads((rout / "reptile.json").read_text()) == rep
    bad = subprocess.run([*rcmd[:-1], "--holdout_tasks=0", f"--out={tmp_path / 'bad'}"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "disjoint" in bad.stderr
    bad = subprocess.run([*rcmd[:-1], "--ipc=10", f"--out={tmp_path / 'bad'}"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--ipc=1" in bad.stderr
