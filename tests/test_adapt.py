"""mgdd_jax.labels and mgdd_jax.adapt (Alg. 2) on tiny sizes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax.configs import distill as distill_config
from mgdd_jax import adapt, data, krr, labels, nets, objective
from mgdd_jax import generator as gen

FEAT = nets.ConvNetConfig(width=4, norm="instance", num_classes=3)
GEN = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
SMOKE_ADAPT = distill_config.get_config("smoke").adapt.to_dict()


def acfg(ipcs=(2,), **changes):
    """An AdaptConfig from the smoke config's adapt subtree (the one source of defaults)."""
    return adapt.AdaptConfig.from_config({**SMOKE_ADAPT, **changes}, FEAT, ipcs)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """3 classes of 8x8 grey images: a bright blob in a class-specific corner, plus noise."""
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 3
        x = rng.uniform(0, 0.3, size=(n, 8, 8))
        for i, c in enumerate(y):
            r, col = [(0, 0), (0, 4), (4, 2)][c]
            x[i, r : r + 4, col : col + 4] += 0.6
        return np.clip(x, 0, 1), y

    xtr, ytr = make(90)
    xte, yte = make(30)
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.npz")
    np.savez(path, x_train=xtr.astype(np.float32), y_train=ytr, x_test=xte.astype(np.float32),
             y_test=yte)
    return data.load_dataset(f"npz:{path}")


def test_label_model_equals_dual_solve(tiny_dataset):
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT, chunk_size=32)
    xs = ds.x_train[:6]
    got = labels.synthetic_labels(lm, xs, FEAT)
    f = lambda x: nets.conv_features(lm.theta, x, FEAT)  # noqa: E731
    ref = krr.solve_labels(f(xs), f(ds.x_train), krr.centred_onehot(ds.y_train, 3), form="dual")
    np.testing.assert_allclose(got, ref, rtol=5e-3, atol=5e-4)
    assert lm.num_train == 90


def test_label_modes():
    assert labels.resolve_label_mode("auto", 1) == "onehot"
    assert labels.resolve_label_mode("auto", 10) == "analytic"
    assert labels.resolve_label_mode("analytic", 1) == "analytic"
    with pytest.raises(ValueError, match="label mode"):
        labels.resolve_label_mode("soft", 10)


def _batch(ds, n_t=24, ipc=2):
    index = data.ClassIndex.from_labels(ds.y_train, 3)
    t = np.asarray(data.balanced_batch_indices(jax.random.key(5), index, n_t))
    s = np.asarray(data.class_balanced_indices(jax.random.key(6), index, ipc))
    return {"x_t": ds.x_train[t], "l_t": ds.y_train[t], "x_s": ds.x_train[s],
            "l_s": ds.y_train[s], "ipc": np.float32(ipc)}


def test_one_step_lowers_loss_on_fixed_batch(tiny_dataset):
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    cfg = acfg(steps=10, learning_rate=1e-2, batch_size=24)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    batch = _batch(ds)
    theta_key = jax.random.key(7)

    def loss_of(p):
        y_s = labels.synthetic_labels(lm, batch["x_s"], FEAT)
        return float(objective.generator_krr_loss(
            p, batch["x_s"], y_s, batch["x_t"], krr.centred_onehot(batch["l_t"], 3),
            batch["ipc"], theta_key, gen_config=GEN, feature=FEAT, reg=cfg.reg))

    step = adapt.make_adapt_step(GEN, cfg, 3)
    state = adapt.init_adapt_state(params, cfg)
    before = loss_of(params)
    losses = []
    for _ in range(3):  # same batch, same θ*: plain descent on one objective
        state, metrics = step(state, theta_key, lm, batch, onehot=False)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert loss_of(state["params"]) < before
    assert int(state["step"]) == 3


def test_adapt_loop_no_recompile_after_first_step(tiny_dataset, compile_events):
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    steps_seen = []
    events = compile_events
    counts = {}

    def cb(step, p):
        counts[step] = len(events)
        steps_seen.append(step)

    cfg = acfg(steps=6, batch_size=12, log_every=1)
    res = adapt.adapt(jax.random.key(2), params, ds, lm, GEN, cfg, progress=False,
                      callback=cb, callback_steps=(1, 6))
    assert steps_seen == [1, 6]
    assert counts[6] == counts[1], "the adapt step (or its sampling) recompiled after step 1"
    assert len(res.history) == 6 and all(np.isfinite(h["loss"]) for h in res.history)
    assert res.single_init[0].shape == (6, 8, 8, 1)
    # The parameters moved away from the identity init.
    assert float(jnp.abs(res.params["out"]["kernel"]).max()) > 0


def test_multi_init_compiles_once_per_size(tiny_dataset, compile_events):
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    events = compile_events
    counts = {}
    cfg = acfg((1, 3), steps=12, batch_size=12)
    assert cfg.init_mode == "multi"  # "auto" with two IPCs
    res = adapt.adapt(jax.random.key(2), params, ds, lm, GEN, cfg, progress=False,
                      callback=lambda s, p: counts.__setitem__(s, len(events)),
                      callback_steps=range(1, 13))
    assert res.single_init is None
    # After both sizes have been seen, nothing compiles any more.
    assert counts[12] - counts[8] == 0
    assert counts[12] - counts[1] <= 3  # second size: its step + its sampler


def test_adapt_is_reproducible(tiny_dataset):
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    cfg = acfg(steps=3, batch_size=12, learning_rate=1e-2)
    a = adapt.adapt(jax.random.key(3), params, ds, lm, GEN, cfg, progress=False)
    b = adapt.adapt(jax.random.key(3), params, ds, lm, GEN, cfg, progress=False)
    c = adapt.adapt(jax.random.key(4), params, ds, lm, GEN, cfg, progress=False)
    same = jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.all(u == v)), a.params, b.params))
    assert all(same)
    diff = jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.all(u == v)), a.params, c.params))
    assert not all(diff)


def test_bad_adapt_inputs(tiny_dataset):
    ds = tiny_dataset
    good = acfg()
    with pytest.raises(ValueError, match="init_mode"):
        dataclasses.replace(good, init_mode="pool")
    with pytest.raises(ValueError, match="ipcs"):
        dataclasses.replace(good, ipcs=())
    with pytest.raises(ValueError, match="learning_rate"):
        dataclasses.replace(good, learning_rate=0.0)
    with pytest.raises(ValueError, match="log_every"):
        dataclasses.replace(good, log_every=0)
    with pytest.raises(ValueError, match="empty item"):
        adapt.AdaptConfig.from_config({**SMOKE_ADAPT, "ipcs": "1,,3"}, FEAT, (2,))
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    with pytest.raises(ValueError, match="IPC=31 is larger than"):
        adapt.adapt(jax.random.key(0), params, ds, lm, GEN,
                    acfg((31,), steps=1, batch_size=12),
                    progress=False)
    with pytest.raises(ValueError, match="real batch per class"):
        adapt.adapt(jax.random.key(0), params, ds, lm, GEN,
                    acfg(steps=1, batch_size=1000),
                    progress=False)


def test_adapt_config_has_no_defaults_of_its_own():
    """The config file is the single source: every AdaptConfig field comes from it."""
    fields = {f.name: f for f in dataclasses.fields(adapt.AdaptConfig)}
    assert all(f.default is dataclasses.MISSING for f in fields.values())
    cpu = distill_config.get_config("cpu")
    cfg = adapt.AdaptConfig.from_config(cpu.adapt.to_dict(), FEAT, (10,))
    for name, value in cpu.adapt.items():
        if name not in ("ipcs", "init_mode"):
            assert getattr(cfg, name) == value, name
    assert set(fields) == set(cpu.adapt) | {"feature"}
    assert (cfg.init_mode, cfg.ipcs) == ("single", (10,))
    pinned = adapt.AdaptConfig.from_config({**cpu.adapt.to_dict(), "ipcs": "10,1"}, FEAT, (50,))
    assert (pinned.init_mode, pinned.ipcs) == ("multi", (1, 10))


@pytest.mark.parametrize("text,match", [("1,,10", "empty item"), ("", "is empty"),
                                        ("1,x", "comma list"), ("0,2", ">= 1"),
                                        (",", "empty item")])
def test_parse_ipcs_refuses_malformed_lists(text, match):
    with pytest.raises(ValueError, match=match):
        adapt.parse_ipcs(text)


def test_parse_ipcs_accepts_ints_and_lists():
    assert adapt.parse_ipcs("10, 1,10") == (1, 10)
    assert adapt.parse_ipcs(5) == (5,)
    assert adapt.parse_ipcs((50, 1)) == (1, 50)


def test_single_init_set_is_the_one_adapt_uses(tiny_dataset):
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    res = adapt.adapt(jax.random.key(9), params, ds, lm, GEN, acfg(steps=1, batch_size=12),
                      progress=False)
    x, y = adapt.single_init_set(jax.random.key(9), ds, 2)
    np.testing.assert_array_equal(res.single_init[0], x)
    np.testing.assert_array_equal(res.single_init[1], y)


def test_non_finite_loss_is_a_clear_error(tiny_dataset):
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    with pytest.raises(adapt.NonFiniteLossError, match="at step 2; lower the learning rate"):
        adapt.adapt(jax.random.key(2), params, ds, lm, GEN,
                    acfg(steps=3, batch_size=12, learning_rate=1e30, log_every=1),
                    progress=False)


@pytest.mark.parametrize("ipcs", [(2,), (1, 2)])
def test_adapt_loop_has_no_host_transfers(tiny_dataset, ipcs):
    """Sampling, gathering and fold_in happen on the device: the loop runs with implicit
    host<->device transfers disallowed (single-init scan chunks and multi-init steps)."""
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    cfg = acfg(ipcs, steps=4, batch_size=12, log_every=2)
    key = jax.random.key(2)
    with jax.transfer_guard("disallow"):
        res = adapt.adapt(key, params, ds, lm, GEN, cfg, progress=False)
    assert [h["step"] for h in res.history] == [2, 4]


@pytest.mark.parametrize("name,n_t", [("krr", 12), ("dc", 13)])
def test_scan_loop_equals_step_by_step(tiny_dataset, name, n_t):
    """The device-resident loop takes the same steps as the one-batch step fed on the host
    (with DC, the loop groups its class-balanced sides by class; the step keeps them flat)."""
    ds = tiny_dataset
    lm = labels.fit_label_model(jax.random.key(0), ds.x_train, ds.y_train, 3, FEAT)
    params = gen.init_generator(jax.random.key(1), ds.image_shape, GEN)
    cfg = acfg(steps=4, batch_size=n_t, learning_rate=1e-2, log_every=1, objective=name)
    key = jax.random.key(5)
    res = adapt.adapt(key, params, ds, lm, GEN, cfg, progress=False)
    # The same steps by hand: keys, sampling and gathers on the host, one jitted step each.
    step = adapt.make_adapt_step(GEN, cfg, 3)
    state = adapt.init_adapt_state(params, cfg)
    x_s, l_s = adapt.single_init_set(key, ds, 2)
    index = data.ClassIndex.from_labels(ds.y_train, 3)
    loop_key = jax.random.split(key)[1]
    losses = []
    for i in range(4):
        k_batch, _, k_theta = jax.random.split(jax.random.fold_in(loop_key, i), 3)
        t = np.asarray(data.balanced_batch_indices(k_batch, index, n_t))
        batch = {"x_t": ds.x_train[t], "l_t": ds.y_train[t], "x_s": x_s, "l_s": l_s,
                 "ipc": np.float32(2)}
        state, metrics = step(state, k_theta, lm, batch, onehot=False)
        losses.append(float(metrics["loss"]))
    # Same batches, θ* and updates: the losses agree to float tolerance at every step. (The
    # parameters are not compared: Adam's g/sqrt(v) amplifies float noise in near-zero
    # gradients of the identity-initialised generator into O(lr) differences.)
    np.testing.assert_allclose([h["loss"] for h in res.history], losses, rtol=1e-4)
