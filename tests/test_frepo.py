"""mgdd_jax.baselines.frepo (FRePo, Zhou et al. 2022) on a tiny dataset with the smoke config.

The loop tests share one compiled chunk (same settings as the ``frepo`` run of the fixture:
``make_chunk`` is cached), so the file costs about two compilations of the FRePo step.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax.configs import benchmark
from mgdd_jax import api, data, krr, nets
from mgdd_jax.adapt import NonFiniteLossError
from mgdd_jax.baselines import METHODS
from mgdd_jax.baselines import frepo as F

STEPS = (0, 1, 3)  # smoke snapshot steps: one compiled chunk of length 1, cosine over 3 steps
IPC = 2
C = 3


def smoke_config(**frepo_changes):
    """The smoke benchmark config with a depth-1 feature network: the algorithm is the same and
    XLA:CPU compiles the step in a third of the time."""
    cfg = benchmark.get_config("smoke")
    cfg.feature.depth = 1
    cfg.frepo.update(frepo_changes)
    return cfg


@pytest.fixture(scope="module")
def tiny():
    """3 classes of 8x8 grey images (30 each): a bright class-specific square plus noise."""
    rng = np.random.default_rng(0)
    y = np.arange(90) % C
    x = rng.uniform(0, 0.3, size=(90, 8, 8))
    for i, c in enumerate(y):
        r, col = [(0, 0), (0, 4), (4, 2)][c]
        x[i, r : r + 4, col : col + 4] += 0.6
    return api.arrays_dataset(np.clip(x, 0, 1).astype(np.float32), y)


@pytest.fixture(scope="module")
def run(tiny):
    key = jax.random.key(3)
    return key, list(F.frepo(key, tiny, IPC, STEPS, smoke_config()))


def _parts(ds, cfg=None):
    cfg = cfg or smoke_config()
    fc = F.FrepoConfig.from_config(cfg.frepo)
    feature = nets.ConvNetConfig(**cfg.feature, num_classes=C)
    return cfg, fc, feature


def _chunk(ds, cfg, fc, feature):
    """The chunk ``frepo`` compiles for ``STEPS`` (the same cached function)."""
    return F.make_chunk(feature=feature, config=fc, num_classes=C, image_shape=ds.image_shape,
                        batch_size=int(cfg.adapt.batch_size), flip=False,
                        total_steps=STEPS[-1])


def test_registered():
    assert METHODS["frepo"] is F.frepo


def test_returns_valid_sets_at_requested_steps(tiny, run):
    key, snaps = run
    assert [s.steps for s in snaps] == list(STEPS)
    seconds = [s.seconds for s in snaps]
    assert all(b > a for a, b in itertools.pairwise(seconds)) and seconds[0] > 0
    for s in snaps:
        assert s.x.shape == (C * IPC, 8, 8, 1) and s.x.dtype == np.float32
        assert s.y.shape == (C * IPC, C) and s.y.dtype == np.float32
        assert np.isfinite(s.x).all() and np.isfinite(s.y).all()
        assert s.timing == {"distill_s": s.seconds}
        np.testing.assert_array_equal(s.y.argmax(1), np.repeat(np.arange(C), IPC))
    # Step 0: class-balanced real images from the key's first split, FRePo's scaled labels.
    x0, l0 = data.sample_initial_set(jax.random.split(key, 3)[0], tiny, IPC)
    np.testing.assert_array_equal(snaps[0].x, x0)
    np.testing.assert_allclose(snaps[0].y, (krr.centred_onehot(l0, C) / np.sqrt(C / 10)),
                               rtol=1e-6)
    # Images and (learned) labels move.
    assert np.abs(snaps[-1].x - snaps[0].x).max() > 1e-5
    assert np.abs(snaps[-1].y - snaps[0].y).max() > 1e-6


def _fixed_batch(ds):
    index = data.ClassIndex.from_labels(ds.y_train, C)
    s = np.asarray(data.class_balanced_indices(jax.random.key(1), index, IPC))
    proto = {"x": jnp.asarray(ds.x_train[s]), "y": F.initial_labels(ds.y_train[s], C)}
    t = np.arange(30, 90)  # 60 fixed real images
    return proto, jnp.asarray(ds.x_train[t]), krr.centred_onehot(ds.y_train[t], C)


@pytest.mark.parametrize("learn_labels", [True, False])
def test_loss_decreases_on_fixed_batch_and_labels_learned_only_if_asked(tiny, learn_labels):
    _, fc, feature = _parts(tiny, smoke_config(learning_rate=1e-2, learn_labels=learn_labels))
    proto, x_t, y_t = _fixed_batch(tiny)
    variables, _ = F.fresh_model(jax.random.key(2), tiny.image_shape, feature, fc)
    opt = F.make_optimizer(fc, 10)
    update = jax.jit(lambda p, o: F.synthetic_update(p, o, variables, x_t, y_t, optimizer=opt,
                                                     feature=feature, config=fc, flip=False))
    state, losses = (proto, opt.init(proto)), []
    for _ in range(6):
        p, o, loss, parts = update(*state)
        state = (p, o)
        losses.append(float(loss))
        assert float(parts["krr"]) + float(parts["margin"]) == pytest.approx(float(loss), abs=1e-6)
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 1e-3, losses
    assert np.abs(np.asarray(state[0]["x"] - proto["x"])).max() > 1e-4
    changed = np.abs(np.asarray(state[0]["y"] - proto["y"])).max()
    if learn_labels:
        assert changed > 1e-4
    else:
        assert changed == 0.0


def test_label_init_and_margin():
    y = F.initial_labels(jnp.array([0, 2]), 40)  # sqrt(40 / 10) = 2
    np.testing.assert_allclose(y[0, 0], (1 - 1 / 40) / 2, rtol=1e-6)
    np.testing.assert_allclose(y[0, 1], -1 / 80, rtol=1e-6)
    # Margins 0.5 (capped at 1/C = 1/3) and 0.1: loss = -(1/3 + 0.1) / 2.
    rows = jnp.array([[1.0, 0.5, 0.0], [0.2, 0.3, 0.0]])
    np.testing.assert_allclose(F.label_margin_loss(rows), -(1 / 3 + 0.1) / 2, rtol=1e-6)


def test_online_batch_is_the_set_or_a_subset_without_replacement():
    x = jnp.arange(20.0).reshape(20, 1, 1, 1)
    y = jnp.arange(20.0)[:, None] * 2
    xs, ys = F._online_batch(jax.random.key(0), x, y, 16)
    rows = np.asarray(xs).ravel()
    assert rows.shape == (16,) and len(set(rows.tolist())) == 16
    np.testing.assert_array_equal(np.asarray(ys).ravel(), rows * 2)
    xs, ys = F._online_batch(jax.random.key(0), x[:6], y[:6], 16)
    np.testing.assert_array_equal(xs, x[:6])


def test_flipped_support_is_the_mirrored_copies(tiny):
    _, fc, feature = _parts(tiny)
    proto, x_t, y_t = _fixed_batch(tiny)
    variables, _ = F.fresh_model(jax.random.key(2), tiny.image_shape, feature, fc)
    total, parts = jax.jit(lambda p: F.frepo_loss(p, variables, x_t, y_t, feature=feature,
                                                 reg=fc.reg, learn_labels=True, flip=True))(proto)
    x_s = np.concatenate([proto["x"], np.asarray(proto["x"])[:, :, ::-1]])
    y_s = np.concatenate([proto["y"], proto["y"]])
    feats = jax.jit(lambda x: nets.conv_features(variables, x, feature))
    ref = krr.krr_loss(feats(x_s), y_s, feats(x_t), y_t, fc.reg)
    np.testing.assert_allclose(parts["krr"], ref, rtol=1e-4)
    np.testing.assert_allclose(parts["margin"], F.label_margin_loss(proto["y"]), rtol=1e-6)
    np.testing.assert_allclose(total, parts["krr"] + parts["margin"], rtol=1e-5, atol=1e-6)


def test_flip_rule():
    fc = F.FrepoConfig.from_config(smoke_config().frepo)
    assert not fc.use_flip("fashion_mnist", 1) and not fc.use_flip("arrays", 1)
    assert fc.use_flip("tfds:cifar10", 3) and not fc.use_flip("tfds:svhn_cropped", 3)
    on = F.FrepoConfig.from_config(smoke_config(flip="on").frepo)
    assert on.use_flip("fashion_mnist", 1)


def test_initial_counters_are_staggered():
    fc = F.FrepoConfig.from_config(benchmark.get_config("paper").frepo)
    np.testing.assert_array_equal(F.initial_counts(fc), np.arange(0, 100, 10))
    np.testing.assert_array_equal(F.initial_counts(F.FrepoConfig.from_config(
        smoke_config().frepo)), [0, 1])


def _biases(variables):
    return [v for path, v in jax.tree_util.tree_leaves_with_path(variables)
            if "bias" in jax.tree_util.keystr(path)]


def test_online_update_resets_after_max_updates(tiny):
    """Pool of 2, K = 3, counters [0, 1]: drawing model 1 four times trains it at counts 1, 2, 3
    (-> 4) and re-initialises it on the fourth draw (4 > K); model 0 is left alone."""
    _, fc, feature = _parts(tiny)
    assert (fc.pool_size, fc.max_online_updates) == (2, 3)
    proto, _, _ = _fixed_batch(tiny)
    pool = F.init_pool(jax.random.key(0), tiny.image_shape, feature, fc)
    model0 = jax.tree.map(lambda a: np.array(a[0]), pool.variables)
    update = jax.jit(lambda pool, i, ki, kb: F.online_update(
        pool, i, proto["x"], proto["y"], ki, kb, image_shape=tiny.image_shape, feature=feature,
        config=fc))
    counts, before = [], None
    for t in range(4):
        before = jax.tree.map(lambda a: np.array(a[1]), pool.variables)
        pool = update(pool, 1, jax.random.key(100 + t), jax.random.key(200 + t))
        counts.append(np.asarray(pool.count).tolist())
    assert counts == [[0, 2], [0, 3], [0, 4], [0, 0]]
    after = jax.tree.map(lambda a: np.asarray(a[1]), pool.variables)
    expected, _ = F.fresh_model(jax.random.key(103), tiny.image_shape, feature, fc)
    jax.tree.map(np.testing.assert_array_equal, after, jax.tree.map(np.asarray, expected))
    assert any(np.abs(b).max() > 0 for b in _biases(before))  # trained before the reset
    assert int(pool.opt_state[0].count[1]) == 0 and int(pool.opt_state[0].count[0]) == 0
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(lambda a: np.asarray(a[0]), pool.variables), model0)


def test_loop_pool_resets_on_schedule(tiny, run):
    """Ten outer steps through the compiled loop: each step's model counter follows the rule
    (count > K -> 0, else +1) on the models the step keys draw, a reset model is exactly the
    fresh model of that step's key, and a NaN loss is recorded at its step."""
    cfg, fc, feature = _parts(tiny)
    chunk = _chunk(tiny, cfg, fc, feature)
    x0, l0 = data.sample_initial_set(jax.random.key(4), tiny, IPC)
    state = F.init_state(jax.random.key(5), x0, l0, C, feature, fc, STEPS[-1])
    loop_key = jax.random.key(6)
    train_x, train_y = jax.device_put((tiny.x_train, tiny.y_train))
    counts = F.initial_counts(fc).tolist()
    resets = 0
    for t in range(10):
        state = chunk(state, loop_key, train_x, train_y, length=1)
        _, k_pick, k_init, _ = F.step_keys(loop_key, t)
        i = int(F.draw_model(k_pick, fc.pool_size))
        if counts[i] > fc.max_online_updates:
            counts[i] = 0
            resets += 1
            fresh, _ = F.fresh_model(k_init, tiny.image_shape, feature, fc)
            got = jax.tree.map(lambda a, i=i: np.asarray(a[i]), state["pool"].variables)
            jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, fresh))
        else:
            counts[i] += 1
        assert np.asarray(state["pool"].count).tolist() == counts, t
        assert int(state["step"]) == t + 1 and int(state["bad_step"]) == -1
    assert resets >= 1  # 10 draws over 2 models with counters 0, 1 and K = 3 must reset one
    # A NaN image makes the loss non-finite; the step that saw it is recorded (1-based).
    state["proto"]["x"] = state["proto"]["x"].at[0, 0, 0, 0].set(jnp.nan)
    state = chunk(state, loop_key, train_x, train_y, length=1)
    assert int(state["bad_step"]) == 11


def test_non_finite_loss_raises_with_step(tiny, monkeypatch):
    real_init = F.init_state

    def nan_init(*args):
        state = real_init(*args)
        state["proto"]["x"] = state["proto"]["x"] * jnp.nan
        return state

    monkeypatch.setattr(F, "init_state", nan_init)
    it = F.frepo(jax.random.key(0), tiny, IPC, STEPS, smoke_config())
    assert next(it).steps == 0
    with pytest.raises(NonFiniteLossError, match="non-finite at step 1"):
        next(it)


@pytest.mark.parametrize("ipc, steps, change, match", [
    (31, (0, 1), {}, "IPC=31 is larger than"),
    (0, (0, 1), {}, "IPC must be >= 1"),
    (IPC, (3, 1), {}, "strictly increasing"),
    (IPC, (1, 1), {}, "strictly increasing"),
    (IPC, (), {}, "snapshot_steps is empty"),
    (IPC, (-1, 2), {}, "integers >= 0"),
    (IPC, (0, 1), {"flip": "maybe"}, "flip must be one of"),
    (IPC, (0, 1), {"pool_size": 0}, "pool_size must be >= 1"),
])
def test_bad_inputs_raise_at_call(tiny, ipc, steps, change, match):
    with pytest.raises(ValueError, match=match):
        F.frepo(jax.random.key(0), tiny, ipc, steps, smoke_config(**change))  # no next()


def test_bad_batch_size_and_unknown_field(tiny):
    cfg = smoke_config()
    cfg.adapt.batch_size = 91
    with pytest.raises(ValueError, match="batch_size=91"):
        F.frepo(jax.random.key(0), tiny, IPC, (0, 1), cfg)
    with pytest.raises(ValueError, match="unknown fields"):
        F.FrepoConfig.from_config({**smoke_config().frepo.to_dict(), "lr": 1.0})
