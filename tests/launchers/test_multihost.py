"""Multi-host meta-training for real through the launcher: two JAX processes on this machine
(issue 13).

Each process has 2 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``); they
join through ``jax.distributed`` on a free loopback port (127.0.0.1) and run the step's
all-reduce with gloo over TCP, a 4-device mesh over two processes. The reference is one
process with 4 devices running the same config (the smoke config on a small npz source, 4
tasks per step). Every subprocess runs the real launcher (through
``tests/launchers/_multihost_worker.py``, which records the run files it writes), in its own
session, is waited for with a timeout, and is killed by its pid if the test ends before it
does. The library's part (mgdd_jax.multihost, the per-process tasks) is tests/test_multihost.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mgdd_jax import checkpoint, meta, outputs
from mgdd_jax import generator as gen
from tests import _helpers
from tests._helpers import REPO, write_tiny_npz_source
from tests._helpers import MULTIHOST_TIMEOUT as TIMEOUT
from tests._helpers import SMOKE_GEN as GEN
from tests._helpers import free_port as _free_port
from tests._helpers import multihost_env as _env

WORKER = os.path.join(REPO, "tests", "launchers", "_multihost_worker.py")
STEPS = 6
# The smoke config, 4 tasks per step (one per device), cut to what compiles fastest on a CPU
# (one inner step, first order, one-layer feature networks): the cross-process all-reduce
# and every file the run writes are the same as at any size. The source is a small npz file
# (loading scikit-learn's digits costs each process seconds of jax compiles).
RUN = ["--config=experiments/configs/meta_glyphs.py:smoke", "--config.meta.tasks_per_step=4",
       f"--config.meta.steps={STEPS}", "--config.meta.inner_steps=1",
       "--config.meta.order=first", "--config.feature.depth=1"]
# Bounded waits, short enough for a test: joining, a silent (dead) process, exit.
BOUNDS = ["--config.distributed.initialization_timeout_s=60",
          "--config.distributed.heartbeat_timeout_s=5",
          "--config.distributed.shutdown_timeout_s=10"]
RUN_FILES = ("config.json", "metrics.jsonl", "loss_curve.png", f"run_until_step{STEPS}.json")


def _multihost_flags(port, num_processes, process_id, bounds=BOUNDS):
    return ["--config.multihost=True",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            f"--config.distributed.num_processes={num_processes}",
            f"--config.distributed.process_id={process_id}", *bounds]


class Procs(_helpers.Procs):
    """The helpers' subprocesses, running the launcher (WORKER) on the run's config and
    source by default, and started two at a time as one multi-host run (``pair``)."""

    def __init__(self, tmp_path, cache, source):
        super().__init__(tmp_path, cache, worker=WORKER)
        self.run = [*RUN, f"--config.source=npz:{source}"]

    def pair(self, name, workdir, *extra, num_processes=(2, 2), bounds=BOUNDS):
        port = _free_port()
        return [self.start(f"{name}{i}", [*self.run, *extra, f"--workdir={workdir}",
                                          *_multihost_flags(port, num_processes[i], i, bounds)],
                           port=port)
                for i in (0, 1)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compilation_cache")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """10 classes of 24 random 8x8 grey images (the tasks need 8 per class)."""
    return write_tiny_npz_source(tmp_path_factory.mktemp("source") / "tiny.npz")


@pytest.fixture
def procs(tmp_path, cache, source):
    ps = Procs(tmp_path, cache, source)
    yield ps
    ps.kill()


class Reference:
    """The same run in one process with 4 devices (no jax.distributed), started at once and
    run alongside the first two-process run (the CPU compiles overlap)."""

    def __init__(self, tmp, cache, source):
        self.workdir = tmp / "w"
        self.log = tmp / "reference.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, WORKER, *RUN, f"--config.source=npz:{source}",
                 f"--workdir={self.workdir}"], cwd=REPO,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=_env(4, tmp / "writes", cache))
        self._state = None

    def state(self):
        if self._state is None:
            try:
                rc = self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                pytest.fail(f"the reference run took over {TIMEOUT}s")
            assert rc == 0, self.log.read_text()[-3000:]
            self._state = _final_state(self.workdir)
        return self._state


@pytest.fixture(scope="module")
def one_process_four_devices(tmp_path_factory, cache, source):
    ref = Reference(tmp_path_factory.mktemp("reference"), cache, source)
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait(timeout=30)


def _final_state(workdir):
    """The last checkpoint's ``{"params", "opt_state"}``, restored onto this process's one
    device (the runs saved them replicated over 4 devices)."""
    ckpts = os.path.join(workdir, "checkpoints")
    step, stored = checkpoint.read_meta(ckpts)
    assert step == STEPS, step
    mcfg = meta.MetaConfig.from_dict(stored["info"]["meta"])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        jax.eval_shape(lambda: meta.init_meta_state(
            gen.init_generator(jax.random.key(0), (8, 8, 1), GEN), mcfg, meta.task_mesh())))
    with checkpoint.open_train_state_manager(ckpts) as mngr:
        return checkpoint.restore_train_state(mngr, step, target)


def _assert_same_params(got, want):
    """Equal where the meta-gradient is more than round-off; ignored where it is zero.

    Some parameters get an exactly zero gradient (a convolution's bias, and its weights on
    spatially constant input channels, right before an instance norm), i.e. pure round-off,
    which differs with the all-reduce's summation order (gloo across processes, XLA within
    one) and which Adam scales up to steps of order ``outer_lr``. Adam's second moment
    tells them apart: about 1e-11 for those against 1e-3 for the largest gradients.
    """
    nu = jax.tree.leaves(want["opt_state"][0].nu)  # the reference's Adam second moment
    top = max(float(np.sqrt(np.max(v))) for v in nu)
    compared = total = 0
    for a, b, v in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(want["params"]), nu,
                       strict=True):
        real = np.sqrt(np.asarray(v)) > 1e-6 * top
        np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], rtol=1e-5,
                                   atol=1e-6)
        compared, total = compared + real.sum(), total + real.size
    assert compared > 0.9 * total, (compared, total)  # the mask leaves out a few only


def _writes(p):
    return p.writes.read_text().splitlines() if p.writes.exists() else []


# ------------------------------------------------------------------------------ the run
def test_two_processes_die_resume_and_match_one_process(procs, tmp_path,
                                                        one_process_four_devices):
    """The life of a two-process run, against one process with 4 devices (the reference,
    running meanwhile):

    1. process 1 is killed (SIGKILL) after the first checkpoint; process 0 must end with an
       error within a bounded time (heartbeat_timeout_s=5), not wait forever;
    2. with both dead, the same two commands again resume from the latest checkpoint (orbax
       restores the state saved by both processes) and finish;
    3. the parameters after STEPS steps are the reference's, the checkpoint loads as a
       generator on one device, and only process 0 wrote the run files, each once per run.

    One run covers both claims (two processes = one, resumed = straight): a bug in either
    would show as a difference from the reference. Kept to one test for time (CI: < 2 min).
    """
    w = tmp_path / "w"
    pair = procs.pair("died", w)
    ckpts = w / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and all(p.poll() is None for p in pair):
        if ckpts.is_dir() and any(n.isdigit() for n in os.listdir(ckpts)):
            break
        time.sleep(0.01)
    assert all(p.poll() is None for p in pair), procs.tails()
    pair[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    rc = procs.wait(pair[:1], timeout=60)[0]
    took = time.monotonic() - t0
    log = pair[0].log.read_text()
    assert rc != 0 and took < 30, (rc, took, log[-3000:])
    # Ours when the step's collective fails; jax's when process 0 was waiting elsewhere.
    assert ("another process most likely died" in log or
            "This most likely indicates that another task died" in log), log[-3000:]
    procs.wait(pair)
    killed_at = checkpoint.latest_step(str(ckpts))
    assert killed_at is not None and 0 < killed_at < STEPS, (killed_at, procs.tails())

    again = procs.pair("resumed", w)  # the same commands again (on a fresh port)
    assert procs.wait(again) == [0, 0], procs.tails()
    assert f"resumed from step {killed_at}" in again[0].log.read_text()
    state = _final_state(w)
    _assert_same_params(state, one_process_four_devices.state())
    params, _ = checkpoint.load_generator(str(ckpts), GEN, (8, 8, 1))  # on one device
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"]), strict=True):
        np.testing.assert_array_equal(a, b)

    rows = [r["step"] for r in outputs.read_jsonl(str(w / "metrics.jsonl"))]
    # Step 0 (the identity, scored by the validation bank) once, then none lost or repeated.
    assert rows == list(range(0, STEPS + 1)), rows
    summary = json.loads((w / f"run_until_step{STEPS}.json").read_text())
    assert (summary["num_processes"], summary["num_devices"]) == (2, 4)
    assert sorted(n for n in os.listdir(w) if not n.startswith(".")) == sorted(
        [*RUN_FILES, "checkpoints"])
    # Only process 0 writes run files (orbax writes the checkpoints), each once per run.
    assert _writes(pair[1]) == [] and _writes(again[1]) == []
    once = {"write config.json", "write metrics.jsonl"}  # config; metrics cut to the resume
    died, resumed = _writes(pair[0]), _writes(again[0])
    assert set(died) == once | {"append metrics.jsonl"}, died  # killed before the end
    assert set(resumed) == once | {"append metrics.jsonl", "write loss_curve.png",
                                   f"write run_until_step{STEPS}.json"}, resumed
    for writes in (died, resumed):
        assert all(writes.count(x) == 1 for x in set(writes) - {"append metrics.jsonl"})
    assert resumed.count("append metrics.jsonl") == STEPS - killed_at


# ------------------------------------------------------------------------------ failures
def test_busy_coordinator_port_is_refused(procs, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = procs.start("busy0", [*procs.run, f"--workdir={tmp_path / 'w'}",
                                  *_multihost_flags(port, 2, 0)], port=port)
        assert procs.wait([p]) == [2], procs.tails()
    last = p.log.read_text().strip().splitlines()[-1]
    assert last.startswith("error: ") and f"port {port}" in last and "in use" in last, last
    assert not (tmp_path / "w").exists()


def test_processes_that_disagree_on_num_processes_are_refused(procs, tmp_path):
    pair = procs.pair("disagree", tmp_path / "w", num_processes=(2, 3))
    assert procs.wait(pair) == [2, 2], procs.tails()
    for p, (mine, theirs) in zip(pair, [(2, 3), (3, 2)]):
        last = p.log.read_text().strip().splitlines()[-1]
        assert last.startswith("error: ") and "Traceback" not in p.log.read_text(), last
        assert f"num_processes={mine} but process" in last and f"with {theirs};" in last, last


def test_a_missing_process_ends_the_others_after_the_join_timeout(procs, tmp_path):
    """Process 1 never starts: jax ends process 0 after initialization_timeout_s (with its
    own DEADLINE_EXCEEDED message); the line before it says what was being waited for."""
    bounds = ["--config.distributed.initialization_timeout_s=3", *BOUNDS[1:]]
    port = _free_port()
    p = procs.start("alone0", [*procs.run, f"--workdir={tmp_path / 'w'}",
                               *_multihost_flags(port, 2, 0, bounds)], port=port)
    t0 = time.monotonic()
    rc = procs.wait([p], timeout=60)[0]
    log = p.log.read_text()
    assert rc != 0 and time.monotonic() - t0 < 40, (rc, log[-3000:])
    assert "joining the multi-host run as process 0 of 2 via coordinator 127.0.0.1:" in log
    assert "waiting up to 3s for all processes" in log and "DEADLINE_EXCEEDED" in log, log
    assert not (tmp_path / "w").exists()
