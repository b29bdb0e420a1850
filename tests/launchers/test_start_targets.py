"""experiments.meta_studies.start_targets: the target table from start_controls results."""

import json
import subprocess
import sys

import pytest

from experiments.meta_studies import start_targets


def _controls(ipc, table):
    return {"ipc": ipc, "table": {
        s: {lr: {n: {"mean": m, "std": sd, "per_set": [m]} for n, (m, sd) in cells.items()}
            for lr, cells in by_lr.items()} for s, by_lr in table.items()}}


FRESH = {"0.0001": {"100": (57.0, 2.7), "1000": (66.0, 1.0)},
         "0.001": {"50": (62.0, 1.0), "100": (65.0, 1.3)},
         "0.003": {"100": (64.0, 1.5)}}


def test_rows_pick_the_old_default_the_best_alpha_at_100_and_the_start():
    merged = start_targets.merge([
        _controls(1, {"fresh": FRESH}),
        _controls(1, {"searched": {"0.001": {"100": (67.5, 0.5)}}})])
    t = start_targets.targets(merged, "searched", 1e-3, ipcs=(1, 50))
    assert list(t) == ["1", "50"]
    assert t["50"]["start"] == dict.fromkeys(start_targets.STEPS) and t["50"]["best_alpha"] is None
    t = start_targets.targets(merged, "searched", 1e-3, ipcs=())
    assert list(t) == ["1"]
    row = t["1"]
    assert row["fresh"] == {"50": None, "100": [57.0, 2.7], "200": None, "1000": [66.0, 1.0]}
    assert row["best_alpha"] == pytest.approx(1e-3)
    assert row["fresh_best_alpha"]["50"] == [62.0, 1.0]
    assert row["start"]["100"] == [67.5, 0.5] and row["start"]["50"] is None
    v = start_targets.verdicts(t)
    assert "IPC 1: start at 100 (67.50) >= fresh α=1e-4 at 1000 (66.00): met" in v
    # 67.5 − 65.0 = 2.5 > max std 1.3: ahead by more than one std
    assert any(s.startswith("IPC 1, 100 steps") and s.endswith("met") for s in v)
    assert any(s.startswith("IPC 1, 50 steps") and "not measured" in s for s in v)


def test_two_files_that_disagree_on_a_cell_are_refused():
    a = _controls(1, {"fresh": {"0.001": {"100": (65.0, 1.0)}}})
    b = _controls(1, {"fresh": {"0.001": {"100": (60.0, 1.0)}}})
    with pytest.raises(ValueError, match="disagree"):
        start_targets.merge([a, b])
    # the same cell twice is fine
    assert start_targets.merge([a, a])[1]["fresh"]["0.001"]["100"]["mean"] == 65.0


def test_the_command_writes_json_and_markdown_and_refuses_a_bad_start(tmp_path):
    path = tmp_path / "controls.json"
    path.write_text(json.dumps(_controls(10, {"fresh": FRESH})))
    out = tmp_path / "targets.json"
    cmd = [sys.executable, "-m", "experiments.meta_studies.start_targets",
           f"--controls={path}", f"--out={out}"]
    subprocess.run([*cmd, "--start=fresh@0.001"], check=True, capture_output=True)
    got = json.loads(out.read_text())
    assert got["10"]["start"]["100"] == [65.0, 1.3]
    assert (tmp_path / "targets.md").read_text().count("| 10 |") == 3
    assert set(got) == {"1", "10", "50"} and got["50"]["fresh"]["100"] is None
    bad = subprocess.run([*cmd, "--start=fresh"], capture_output=True, text=True)
    assert bad.returncode == 2 and "NAME@ALPHA" in bad.stderr
