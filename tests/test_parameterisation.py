"""mgdd_jax.parameterisation (Tab. 6's DS): against NumPy references, the loss through the
round trip, bad factors, and distill end to end with a budget held at half resolution."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax.cli import distill
from mgdd_jax.configs import distill as distill_config
from mgdd_jax import krr, nets, objective, parameterisation
from mgdd_jax import generator as gen


def _np_linear_up(a, f, axis):
    """1-D linear interpolation with half-pixel centres, edges clamped (independent)."""
    n = a.shape[axis]
    src = (np.arange(n * f) + 0.5) / f - 0.5
    src = np.clip(src, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
    return np.take(a, lo, axis) * (1 - w) + np.take(a, hi, axis) * w


def test_downsample_and_upsample_match_numpy():
    x = np.random.default_rng(0).normal(size=(2, 6, 8, 3)).astype(np.float32)
    down = np.asarray(parameterisation.downsample(x, 2))
    want = x.reshape(2, 3, 2, 4, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(down, want, rtol=1e-6)
    up = np.asarray(parameterisation.upsample(down, 2))
    want_up = _np_linear_up(_np_linear_up(down, 2, 1), 2, 2)
    assert up.shape == x.shape
    np.testing.assert_allclose(up, want_up, rtol=1e-5, atol=1e-6)
    const = np.full((1, 4, 4, 1), 0.3, np.float32)
    np.testing.assert_allclose(parameterisation.roundtrip(const, 2), const, rtol=1e-6)
    np.testing.assert_array_equal(parameterisation.roundtrip(x, 1), x)
    np.testing.assert_allclose(parameterisation.decode(down, {"ds_factor": 2}), up, rtol=1e-6)
    np.testing.assert_array_equal(parameterisation.decode(x, {}), x)  # full-resolution sets


@pytest.mark.parametrize("factor, shape, match", [
    (0, None, "integer >= 1"), (True, None, "integer >= 1"), (1.5, None, "integer >= 1"),
    (3, (28, 28, 1), "must divide the image size 28x28")])
def test_bad_factors(factor, shape, match):
    with pytest.raises(ValueError, match=match):
        parameterisation.check_factor(factor, shape)


def test_loss_sees_the_stored_set():
    """generator_loss with ds_factor = the objective on up(down(g(x)))."""
    feat = nets.ConvNetConfig(width=3, depth=2, num_classes=3)
    gcfg = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
    rng = np.random.default_rng(1)
    x_s = jnp.asarray(rng.uniform(size=(6, 8, 8, 1)), jnp.float32)
    x_t = jnp.asarray(rng.uniform(size=(9, 8, 8, 1)), jnp.float32)
    l_s, l_t = jnp.arange(6) % 3, jnp.arange(9) % 3
    syn = objective.LabelledBatch(x_s, krr.centred_onehot(l_s, 3), l_s)
    real = objective.LabelledBatch(x_t, krr.centred_onehot(l_t, 3), l_t)
    params = jax.tree.map(lambda a: a + 0.05, gen.init_generator(jax.random.key(0), (8, 8, 1),
                                                                 gcfg))
    key = jax.random.key(2)
    got = objective.generator_loss(params, syn, real, 2.0, key, gen_config=gcfg, feature=feat,
                                   reg=1e-2, ds_factor=2)
    x_gen = parameterisation.roundtrip(gen.apply_generator(params, x_s, 2.0, gcfg), 2)
    want = objective.krr_objective(syn._replace(x=x_gen), real, key, feature=feat, reg=1e-2)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    full = objective.generator_loss(params, syn, real, 2.0, key, gen_config=gcfg, feature=feat,
                                    reg=1e-2)
    assert abs(float(full) - float(got)) > 1e-6


def _smoke(out, **changes):
    c = distill_config.get_config("smoke")
    c.dataset, c.ipc, c.out = "digits", "1", str(out)
    c.adapt.batch_size = 20
    for k, v in changes.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def test_distill_stores_a_ds_budget_at_half_resolution(tmp_path):
    metrics = distill.run(_smoke(tmp_path / "ds", **{"adapt.ds_factor": 2}))
    z = np.load(tmp_path / "ds" / "ipc1.npz")
    meta = json.loads(str(z["metadata"]))
    assert z["images"].shape == (40, 4, 4, 1)  # 4 images per class in the storage of 1
    assert z["labels"].shape == (40, 10) and z["initial_images"].shape == (40, 8, 8, 1)
    assert meta["ds_factor"] == 2 and meta["images_per_class"] == 4 and meta["ipc"] == 1
    assert parameterisation.decode(z["images"], meta).shape == (40, 8, 8, 1)
    r = metrics["results"]["1"]
    assert r["ds_factor"] == 2 and len(r["eval"]["per_seed"]) == 2
    assert metrics["adapt"]["ipcs"] == [4]


@pytest.mark.parametrize("factor, match", [(3, "must divide the image size 8x8"),
                                           (0, "integer >= 1")])
def test_distill_refuses_a_bad_factor_before_work(tmp_path, factor, match):
    with pytest.raises(ValueError, match=match):
        distill.run(_smoke(tmp_path / "bad", **{"adapt.ds_factor": factor}))
    assert not (tmp_path / "bad").exists()
