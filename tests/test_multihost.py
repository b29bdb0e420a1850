"""Multi-host meta-training (issue 13), the library's part: two JAX processes on this machine
agree through mgdd_jax.multihost (each with 2 CPU devices, joined through ``jax.distributed``
on a free loopback port), each process draws only its tasks, and the distributed config is
checked before anything starts.

The whole run through the launcher (two processes that die, resume and match one process
with 4 devices; the refusals of a busy port, disagreeing processes and a missing one) is in
tests/launchers/test_multihost.py. Every subprocess runs in its own session, is waited for
with a timeout, and is killed by its pid if the test ends before it does.
"""

import socket

import jax
import numpy as np
import pytest

from mgdd_jax import data, meta, meta_train, multihost
from mgdd_jax.configs import meta as meta_config
from tests._helpers import Procs, write_tiny_npz_source
from tests._helpers import free_port as _free_port


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compilation_cache")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """10 classes of 24 random 8x8 grey images (the tasks need 8 per class)."""
    return write_tiny_npz_source(tmp_path_factory.mktemp("source") / "tiny.npz")


@pytest.fixture
def procs(tmp_path, cache):
    ps = Procs(tmp_path, cache)
    yield ps
    ps.kill()


# ------------------------------------------------------------------------------ processes
AGREE = """
import sys
from mgdd_jax import multihost
me = int(sys.argv[2])
multihost.initialize(multihost.MultihostConfig(
    coordinator_address=sys.argv[1], num_processes=2, process_id=me,
    initialization_timeout_s=60, heartbeat_timeout_s=5, shutdown_timeout_s=10))
multihost.barrier("test", 60)
print("AGREE", multihost.any_process(me == 1), multihost.any_process(False), flush=True)
"""


def test_processes_agree_when_one_of_them_stops(procs):
    """SIGTERM or max_seconds on one process stops all of them at the same step: the loop
    asks any_process every step; here process 1 alone says stop, and both hear it."""
    port = _free_port()
    pair = [procs.start(f"agree{i}", [f"127.0.0.1:{port}", str(i)], port=port, code=AGREE)
            for i in (0, 1)]
    assert procs.wait(pair) == [0, 0], procs.tails()
    for p in pair:
        assert "AGREE True False" in p.log.read_text(), procs.tails()


# ------------------------------------------------------------------------------ in-process
def test_each_process_draws_only_its_tasks_the_same_ones(source):
    """Task j's images and key do not depend on which other tasks are drawn with it, so the
    processes' parts put together are the one-process batch."""
    ds = data.load_dataset(f"npz:{source}")
    cfg = meta_train.meta_config(meta_config.get_config("smoke"))
    cfg = meta.MetaConfig.from_dict({**cfg.to_dict(), "tasks_per_step": 4})
    key = jax.random.key(3)
    whole, keys = meta.step_inputs(key, 5, ds.x_train, ds.y_train, 10, cfg)
    for part in ([0, 1], [2, 3], [3]):
        b, k = meta.step_inputs(key, 5, ds.x_train, ds.y_train, 10, cfg, part)
        np.testing.assert_array_equal(k, keys[part])
        for name in whole:
            np.testing.assert_array_equal(b[name], whole[name][part])
    with pytest.raises(ValueError, match="subset of 0..3"):
        meta.sample_meta_batch(key, ds.x_train, ds.y_train, 10, cfg, [4])
    mesh = meta.task_mesh()  # one process: it holds every task
    np.testing.assert_array_equal(meta.process_tasks(4, mesh), np.arange(4))
    placed = meta.shard_batch((whole, keys), mesh, 4)
    np.testing.assert_array_equal(np.asarray(placed[1]), keys)
    with pytest.raises(ValueError, match="holds tasks"):
        meta.shard_batch({"x": whole["x_t"][:2]}, mesh, 4)


def test_distributed_config_is_checked_before_anything_starts(tmp_path):
    c = meta_config.get_config("smoke").distributed
    assert multihost.MultihostConfig.from_config(c).process_id == -1  # -1, 0, "": detected
    for change, match in [({"coordinator_address": "10.0.0.1"}, "host:port"),
                          ({"coordinator_address": "h:99999"}, "host:port"),
                          ({"num_processes": 2, "process_id": 2}, "process_id"),
                          ({"heartbeat_timeout_s": 0}, "heartbeat_timeout_s")]:
        with pytest.raises(ValueError, match=match):
            multihost.MultihostConfig.from_config({**c.to_dict(), **change})
    with pytest.raises(ValueError, match="unknown.*timeout"):
        multihost.MultihostConfig.from_config({**c.to_dict(), "timeout": 1})
    # A bad distributed setting stops prepare before any work, whether multihost or not.
    cfg = meta_config.get_config("smoke")
    cfg.source, cfg.distributed.num_processes = "digits", -1
    with pytest.raises(ValueError, match="num_processes"):
        meta_train.prepare(cfg, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} .* in use"):
            multihost.check_port_free(f"127.0.0.1:{port}")
    multihost.check_port_free(f"127.0.0.1:{_free_port()}")
