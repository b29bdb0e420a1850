"""mgdd_jax.baselines: the generator methods, random real images, the registry (issue 9)."""

import jax
import numpy as np
import pytest

from mgdd_jax.configs import benchmark as benchmark_config
from mgdd_jax import baselines, checkpoint, data, krr
from mgdd_jax import generator as gen_lib
from mgdd_jax.baselines import generators


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def smoke_config(meta_checkpoint=""):
    c = benchmark_config.get_config("smoke")
    c.adapt.batch_size = 20
    c.feature.depth = 1  # a third of the compile time on XLA:CPU
    c.meta_checkpoint = meta_checkpoint
    return c


def _gen_config(c, ds):
    return gen_lib.GeneratorConfig(**c.generator.to_dict(), image_channels=ds.channels)


def check_snapshot(s, ds, ipc):
    n = ipc * ds.num_classes
    assert s.x.shape == (n, *ds.image_shape) and s.x.dtype == np.float32
    assert s.y.shape == (n, ds.num_classes) and s.y.dtype == np.float32
    assert np.all(np.isfinite(s.x)) and np.all(np.isfinite(s.y))
    assert s.seconds >= 0


@pytest.mark.parametrize("method", ["random", "identity", "scratch"])
def test_each_method_returns_valid_sets_at_the_requested_steps(digits, method):
    snaps = baselines.run_method(method, jax.random.key(0), digits, 2, (0, 1, 3), smoke_config())
    want = [0] if method == "random" else [0, 1, 3]
    assert [s.steps for s in snaps] == want
    for s in snaps:
        check_snapshot(s, digits, 2)
    assert all(b.seconds > a.seconds for a, b in zip(snaps, snaps[1:]))
    if method != "random":
        assert snaps[-1].timing["warm_generation_s"] > 0
        assert snaps[-1].timing["label_solve_s"] > 0


def test_identity_starts_at_the_random_real_set_and_scratch_does_not(digits):
    key, c = jax.random.key(3), smoke_config()
    (rand,) = baselines.run_method("random", key, digits, 2, (0,), c)
    ident = baselines.run_method("identity", key, digits, 2, (0, 2), c)
    scratch = baselines.run_method("scratch", key, digits, 2, (0,), c)
    np.testing.assert_array_equal(ident[0].x, rand.x)  # exactly the identity at step 0
    assert not np.allclose(ident[1].x, rand.x)  # and adaptation moves it
    assert np.mean(np.abs(scratch[0].x - rand.x)) > 0.1
    # Random real images carry centred one-hot labels of their classes, class-balanced.
    cls = np.argmax(rand.y, axis=1)
    np.testing.assert_allclose(rand.y, np.asarray(krr.centred_onehot(cls, 10)))
    assert np.bincount(cls, minlength=10).tolist() == [2] * 10


def test_random_generator_redraws_every_kernel_only(digits):
    c = smoke_config()
    gcfg = _gen_config(c, digits)
    fresh = gen_lib.init_generator(jax.random.key(0), digits.image_shape, gcfg)
    rand = gen_lib.random_generator(jax.random.key(0), digits.image_shape, gcfg)
    flat_f = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
    flat_r = dict(jax.tree_util.tree_flatten_with_path(rand)[0])
    assert flat_f.keys() == flat_r.keys()
    kernels = 0
    for path, f in flat_f.items():
        r = flat_r[path]
        assert r.shape == f.shape and r.dtype == f.dtype
        if path[-1].key == "kernel":
            kernels += 1
            assert not np.allclose(r, f) and np.std(r) > 0, path
            fan_in = int(np.prod(r.shape[:-1]))
            assert np.std(r) == pytest.approx(1 / np.sqrt(fan_in), rel=0.6), path
        else:
            np.testing.assert_array_equal(r, f)
    assert kernels >= 3


def test_mgdd_adapts_from_the_given_checkpoint(digits, tmp_path):
    c = smoke_config()
    gcfg = _gen_config(c, digits)
    params = gen_lib.random_generator(jax.random.key(9), digits.image_shape, gcfg)
    ckpt = str(tmp_path / "meta")
    checkpoint.save_generator(ckpt, 1, params, gcfg, {"kind": "meta"})
    c.meta_checkpoint = ckpt
    key = jax.random.key(1)
    (m0,) = baselines.run_method("mgdd", key, digits, 2, (0,), c)
    x_init = baselines.run_method("random", key, digits, 2, (0,), c)[0].x
    want = np.asarray(gen_lib.generate(params, x_init, 2, gcfg))
    np.testing.assert_allclose(m0.x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, ipc, steps, match", [
    ("identity", 2, (0, 3, 1), "strictly increasing"),
    ("identity", 2, (), "at least one"),
    ("random", 2, (-1, 2), ">= 0"),
    ("identity", 10_000, (0,), "IPC=10000 is larger than"),
    ("mgdd", 2, (0,), "needs config.meta_checkpoint"),
    ("nope", 2, (0,), "unknown method"),
])
def test_bad_inputs_fail_before_work(digits, method, ipc, steps, match):
    with pytest.raises(ValueError, match=match):
        baselines.run_method(method, jax.random.key(0), digits, ipc, steps, smoke_config())


@pytest.mark.parametrize("steps, want", [
    ((0, 1, 3), (0, 1, 3)),
    ([5], (5,)),
    (np.array([0, 10, 20]), (0, 10, 20)),  # NumPy integers are integers
    (iter([0, 2]), (0, 2)),
])
def test_snapshot_steps_rule_accepts(steps, want):
    got = baselines.check_snapshot_steps(steps)
    assert got == want and all(type(s) is int for s in got)


@pytest.mark.parametrize("steps, match", [
    ((), "snapshot_steps is empty"),
    (("3",), "integers >= 0"),     # no string coercion
    ((0, "3"), "integers >= 0"),
    ((1.5,), "integers >= 0"),     # no float truncation
    ((0, 2.0), "integers >= 0"),   # not even integral floats
    ((True, 2), "integers >= 0"),  # bools are not steps
    ((-1, 2), "integers >= 0"),
    ((0, 3, 1), "strictly increasing"),
    ((0, 1, 1), "strictly increasing"),
])
def test_snapshot_steps_rule_refuses(steps, match):
    with pytest.raises(ValueError, match=match):
        baselines.check_snapshot_steps(steps)


def test_every_method_shares_the_snapshot_steps_rule():
    """One rule: FRePo's module uses the harness's function, not a copy."""
    from mgdd_jax.baselines import frepo, pixel

    for module in (frepo, pixel, generators):
        assert module.check_snapshot_steps is baselines.check_snapshot_steps


def test_registry_refuses_a_second_method_of_the_same_name():
    with pytest.raises(ValueError, match="registered twice"):
        baselines.register("random")(lambda *a: iter(()))
    assert set(baselines.METHODS) >= {"random", "identity", "scratch", "mgdd"}


def test_snapshot_checks_its_arrays():
    x = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="4 images and 3 labels"):
        baselines.Snapshot(0, 0.0, x, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="float32"):
        baselines.Snapshot(0, 0.0, x.astype(np.float64), np.zeros((4, 2), np.float32))
