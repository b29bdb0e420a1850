"""mgdd_jax.baselines.pixel: the pixel-space DM / DC baselines of Tab. 3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax.configs import benchmark as benchmark_config
from mgdd_jax import baselines, data, krr, nets, objective
from mgdd_jax.baselines import pixel


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def smoke_config(name="dm", **pixel_changes):
    c = benchmark_config.get_config("smoke")
    c.adapt.batch_size = 20
    c.adapt.objective = name
    c.feature.depth = 1
    c.pixel.update(pixel_changes)
    return c


@pytest.mark.parametrize("name", ["dm", "dc"])
def test_pixel_starts_at_the_random_real_set_and_moves(digits, name):
    key, c = jax.random.key(0), smoke_config(name)
    snaps = baselines.run_method("pixel", key, digits, 2, (0, 1, 3), c)
    (rand,) = baselines.run_method("random", key, digits, 2, (0,), c)
    assert [s.steps for s in snaps] == [0, 1, 3]
    np.testing.assert_array_equal(snaps[0].x, rand.x)  # the generator methods' initial set
    np.testing.assert_array_equal(snaps[-1].y, rand.y)  # labels fixed, centred one-hot
    assert snaps[-1].x.dtype == np.float32 and snaps[-1].x.shape == rand.x.shape
    assert not np.allclose(snaps[-1].x, rand.x)
    assert all(b.seconds > a.seconds for a, b in zip(snaps, snaps[1:]))


@pytest.mark.parametrize("name,batch", [("dm", 20), ("dc", 23)])
def test_one_pixel_step_is_sgd_on_the_objective(digits, name, batch):
    """Step 1 by hand: the same real batch and θ* keys, SGD (momentum: first step plain), the
    objective on flat sides. DC's loop groups its sides by class (23 real rows: 2 or 3 per
    class); the step must be the same."""
    c = smoke_config(name, learning_rate=0.3)
    c.adapt.batch_size = batch
    key = jax.random.key(5)
    s0, s1 = baselines.run_method("pixel", key, digits, 2, (0, 1), c)
    feature = nets.ConvNetConfig(**c.feature, num_classes=10)
    k_batch, k_theta = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 2), 0))
    index = data.ClassIndex.from_labels(digits.y_train, 10)
    rows = data.balanced_batch_indices(k_batch, index, batch)
    l_t = jnp.asarray(digits.y_train)[rows]
    real = objective.LabelledBatch(jnp.asarray(digits.x_train)[rows],
                                   krr.centred_onehot(l_t, 10), l_t)
    l_s = jnp.asarray(np.argmax(s0.y, axis=1))
    g = jax.grad(lambda x: objective.get_objective(name)(
        objective.LabelledBatch(x, jnp.asarray(s0.y), l_s), real, k_theta, feature=feature,
        reg=c.adapt.reg))(jnp.asarray(s0.x))
    assert float(jnp.abs(g).max()) > 1e-4
    np.testing.assert_allclose(s1.x, s0.x - 0.3 * np.asarray(g), rtol=1e-4, atol=1e-5)


def test_published_learning_rates_and_bad_settings(digits):
    assert pixel.pixel_learning_rate("dm", 0.0) == 1.0
    assert pixel.pixel_learning_rate("dc", 0.0) == 0.1
    assert pixel.pixel_learning_rate("dm", 0.5) == 0.5
    with pytest.raises(ValueError, match="use the 'frepo' method"):
        baselines.run_method("pixel", jax.random.key(0), digits, 2, (0,), smoke_config("krr"))
    with pytest.raises(ValueError, match="learning_rate must be finite"):
        baselines.run_method("pixel", jax.random.key(0), digits, 2, (0,),
                             smoke_config("dm", learning_rate=float("inf")))
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        baselines.run_method("pixel", jax.random.key(0), digits, 2, (0,),
                             smoke_config("dm", learning_rate=-1.0))
    with pytest.raises(ValueError, match="momentum must be in"):
        baselines.run_method("pixel", jax.random.key(0), digits, 2, (0,),
                             smoke_config("dm", momentum=1.0))
    with pytest.raises(ValueError, match="IPC=10000 is larger than"):
        baselines.run_method("pixel", jax.random.key(0), digits, 10_000, (0,), smoke_config())


def test_non_finite_loss_names_the_step(digits, monkeypatch):
    """An objective that turns NaN: the run stops at the next snapshot, naming the step."""
    monkeypatch.setitem(objective.OBJECTIVES, "dm",
                        lambda syn, real, key, **kw: jnp.where(jnp.sum(syn.x) != 0, jnp.nan,
                                                               0.0))
    pixel.make_chunk.cache_clear()  # jitted chunks hold the objective they were built with
    try:
        with pytest.raises(FloatingPointError, match="non-finite at step 1 .*learning_rate"):
            baselines.run_method("pixel", jax.random.key(0), digits, 2, (0, 3),
                                 smoke_config("dm"))
    finally:
        pixel.make_chunk.cache_clear()
