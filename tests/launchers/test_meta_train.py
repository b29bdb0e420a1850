"""experiments.meta_train, the launcher of the Alg. 1 outer loop: its command line (bad input
in one line, --stop_after), SIGTERM then resume through it, and the lab's meta configs against
committed runs. The loop itself (mgdd_jax.meta_train) is tested in tests/test_meta_train.py.

The runs use the smoke config (experiments/configs/meta_glyphs.py:smoke, the library's
mgdd_jax/configs/meta.py:smoke on the glyph source) on scikit-learn's digits.
"""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import meta_sources
from mgdd_jax import checkpoint, meta_train, outputs
from tests._helpers import REPO
from tests._helpers import final_meta_params as _final_params
from tests._helpers import meta_smoke_config as _smoke_config
from tests._helpers import run_meta as _run


def test_checkpoint_made_before_a_field_existed_resumes_with_its_value():
    """The committed fractal-source run predates ``meta.start_weight``: today's config of that
    run resumes it (λ = 0 is what it did); λ = 0.5 is refused, naming the field."""
    run = os.path.join(REPO, "results", "meta_studies", "meta_sources_runs", "fractal",
                       "checkpoints")
    step, stored = checkpoint.read_meta(run)
    assert "start_weight" not in stored["info"]["meta"]
    config = meta_sources.get_config("fractal")

    def ckpt_meta(c):
        return meta_train.run_checkpoint_meta(meta_train.gen_config(c, 3),
                                              meta_train.meta_config(c), c.source, c.seed)

    meta_train.check_resumable(run, step, ckpt_meta(config))
    config.meta.start_weight = 0.5
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"meta.start_weight: checkpoint 0.0 vs config 0.5"):
        meta_train.check_resumable(run, step, ckpt_meta(config))


def test_sigterm_then_resume_equals_straight_run(tmp_path):
    # Few checkpoints (orbax saves dominate a smoke step otherwise) and a short run: CI time.
    total, every, val_every = 80, 20, 30
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "experiments.meta_train",
           "--config=experiments/configs/meta_glyphs.py:smoke", "--config.source=digits",
           f"--config.meta.steps={total}", f"--config.checkpoint_every={every}",
           f"--config.val.every={val_every}", f"--workdir={killed}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpts = killed / "checkpoints"
        if ckpts.is_dir() and any(n.isdigit() for n in os.listdir(ckpts)):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    k, _, _ = _final_params(killed)
    assert 0 < k < total, f"the run was not interrupted (stopped at {k})"

    config = _smoke_config(total, val=True)  # = the command line's config
    config.checkpoint_every = every
    config.val.every = val_every
    resumed = _run(config, killed)
    assert resumed["step"] == total
    straight_dir = tmp_path / "straight"
    _run(config, straight_dir)
    _, p_resumed, _ = _final_params(killed)
    _, p_straight, m = _final_params(straight_dir)
    for a, b in zip(jax.tree.leaves(p_resumed), jax.tree.leaves(p_straight)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert m["info"]["kind"] == "meta"
    rows = outputs.read_jsonl(str(killed / "metrics.jsonl"))
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == total  # no duplicated or lost lines
    # The validation bank: step 0 scores the identity itself (gap 0); then every val.every
    # steps and the last step of each run, the one cut short by SIGTERM too; the resumed run
    # rescores the identity to the same value.
    val = {r["step"]: r for r in rows if "val_gap" in r}
    scheduled = list(range(0, total, val_every))  # 0, 30, 60
    assert sorted(val) == sorted({*scheduled, k, total}), (k, sorted(val))
    assert val[0]["val_gap"] == 0.0 and val[0]["val_loss"] == val[0]["val_identity"]
    assert all(np.isfinite(r["val_loss"]) and r["val_identity"] == val[0]["val_identity"]
               for r in val.values())
    assert val[k]["val_gap"] != 0.0  # meta-training moved it
    assert resumed["validation_seconds"] > 0
    straight = outputs.read_jsonl(str(straight_dir / "metrics.jsonl"))
    assert [r["step"] for r in straight if "val_gap" in r] == [*scheduled, total]
    assert (killed / "loss_curve.png").exists()
    assert (killed / f"run_until_step{total}.json").exists()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "experiments.meta_train",
           "--config=experiments/configs/meta_glyphs.py:smoke", "--config.source=digits",
           "--config.meta.min_classes=20", "--config.meta.max_classes=30",
           f"--workdir={tmp_path / 'w'}"]
    p = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "max_classes" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "w").exists()


def test_cli_stop_after_is_a_step_budget(tmp_path):
    """--stop_after=1 of meta.steps=2: a checkpoint at step 1 (resuming from it is what
    test_sigterm_then_resume_equals_straight_run checks)."""
    cmd = [sys.executable, "-m", "experiments.meta_train",
           "--config=experiments/configs/meta_glyphs.py:smoke", "--config.source=digits",
           "--config.val.tasks=0", "--config.meta.steps=2", "--stop_after=1",
           f"--workdir={tmp_path / 'w'}"]
    p = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stopped at step 1" in p.stderr
    assert checkpoint.latest_step(str(tmp_path / "w" / "checkpoints")) == 1
