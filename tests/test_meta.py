"""mgdd_jax.meta (Alg. 1): task sampling, the MAML loss and the sharded step, on tiny sizes.

The outer loop (mgdd_jax.meta_train) is tested in test_meta_train.py, its launcher
(experiments.meta_train) in launchers/test_meta_train.py.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax import data, krr, meta, meta_train, nets
from mgdd_jax import generator as gen
from mgdd_jax.configs import meta as meta_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEAT = nets.ConvNetConfig(width=4, norm="instance")
GEN = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
# The smoke config's Alg. 1 settings (2 inner steps, 2-4 classes, 16 real, 2-8 synthetic,
# features of width 4) with a larger inner lr.
CFG = dataclasses.replace(meta_train.meta_config(meta_config.get_config("smoke")), steps=10,
                          inner_lr=0.05)
assert CFG.feature == FEAT


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def _task(ds, key, cfg=CFG):
    b = meta.sample_meta_batch(key, ds.x_train, ds.y_train, ds.num_classes, cfg)
    return {k: v[0] for k, v in b.items()}


def _perturbed_params(ds, key):
    p = gen.init_generator(jax.random.key(0), ds.image_shape, GEN)
    leaves, tree = jax.tree.flatten(p)
    ks = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, ks)])


# ------------------------------------------------------------------------------- task sampling
def test_sample_task_structure(digits):
    t = meta.sample_task(jax.random.key(3), digits.y_train, 10, CFG)
    assert t["t_idx"].shape == (16,) and t["y_t"].shape == (16, 4)
    assert t["s_idx"].shape == (3, 8) and t["s_mask"].shape == (3, 8) and t["ipc"].shape == (3,)
    active = np.flatnonzero(np.abs(t["y_t"]).sum(0) > 0)
    c = len(active)
    assert 2 <= c <= 4 and list(active) == list(range(c))  # padded columns are all zero
    np.testing.assert_allclose(t["y_t"].sum(1), 0.0, atol=1e-6)  # centred over active classes
    labels = digits.y_train[t["t_idx"]]
    assert len(set(labels)) == c
    counts = np.bincount(np.argmax(t["y_t"], 1), minlength=c)
    assert counts.max() - counts.min() <= 1  # balanced real batch
    for i in range(3):
        n = int(t["s_mask"][i].sum())
        assert n == t["ipc"][i] * c  # IPC x classes, the rest padding
        rows = t["s_idx"][i, :n]
        assert len(set(rows)) == n  # no repeats
        per = np.bincount(np.argmax(t["y_t"][rows], 1), minlength=c)
        assert np.all(per == t["ipc"][i])  # class-balanced initial set
    again = meta.sample_task(jax.random.key(3), digits.y_train, 10, CFG)
    assert all(np.array_equal(t[k], again[k]) for k in t)


# ------------------------------------------------------------------------------- gradients
def _reference_meta_loss(params, task, key, cfg, gen_config):
    """Alg. 1 with a Python for-loop (no scan), from the public building blocks."""
    x_t, y_t = task["x_t"], task["y_t"]
    k_theta, k_steps = jax.random.split(key)
    theta = nets.init_feature_params(k_theta, x_t.shape[1:], cfg.feature)
    w_t = krr.target_weights(nets.conv_features(theta, x_t, cfg.feature), y_t, cfg.reg)
    keys = jax.random.split(k_steps, cfg.inner_steps + 1)

    def loss_at(p, i):
        x_s = x_t[task["s_idx"][i]]
        y_s = nets.conv_features(theta, x_s, cfg.feature) @ w_t
        x_gen = gen.apply_generator(p, x_s, task["ipc"][i], gen_config)
        th = nets.init_feature_params(keys[i], x_t.shape[1:], cfg.feature)
        return krr.krr_loss(nets.conv_features(th, x_gen, cfg.feature), y_s,
                            nets.conv_features(th, x_t, cfg.feature), y_t, cfg.reg,
                            support_mask=task["s_mask"][i])

    p = params
    for i in range(cfg.inner_steps):
        g = jax.grad(loss_at)(p, i)
        p = jax.tree.map(lambda a, b: a - cfg.inner_lr * b, p, g)
    return loss_at(p, cfg.inner_steps)


def test_scan_meta_gradient_matches_python_loop(digits):
    """lax.scan vs a Python-loop reference. (The unrolled loop equals the scan one:
    test_unrolled_loops_give_the_scan_update_without_loop_convolutions.)"""
    task = _task(digits, jax.random.key(5))
    params = _perturbed_params(digits, jax.random.key(6))
    key = jax.random.key(7)
    scan_loss = lambda p: meta.task_meta_loss(p, task, key, gen_config=GEN, config=CFG)[0]  # noqa: E731
    ref_loss = lambda p: _reference_meta_loss(p, task, key, CFG, GEN)  # noqa: E731
    l1, g1 = jax.jit(jax.value_and_grad(scan_loss))(params)
    l2, g2 = jax.jit(jax.value_and_grad(ref_loss))(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)


def test_second_order_matches_finite_differences_first_order_does_not(digits):
    """Directional derivative of the meta-test loss vs central differences, in float64."""
    cfg2 = dataclasses.replace(CFG, inner_lr=0.5)
    cfg1 = dataclasses.replace(cfg2, order="first")
    task = _task(digits, jax.random.key(8))
    params = _perturbed_params(digits, jax.random.key(9))
    key = jax.random.key(10)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
                                     if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                                     else a, t)
        p64, t64 = f64(params), f64(task)
        leaves, tree = jax.tree.flatten(p64)
        ks = jax.random.split(jax.random.key(11), len(leaves))
        d = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, jnp.float64)
                                      for x, k in zip(leaves, ks)])
        norm = jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(d)))
        d = jax.tree.map(lambda a: a / norm, d)  # unit direction: small steps, few ReLU kinks

        def along(s, cfg):  # the meta-test loss at p + s·d
            p = jax.tree.map(lambda a, b: a + s * b, p64, d)
            return meta.task_meta_loss(p, t64, key, gen_config=GEN, config=cfg)[0]

        eps = 1e-6
        loss = jax.jit(along, static_argnums=1)
        fd = (loss(eps, cfg2) - loss(-eps, cfg2)) / (2 * eps)
        slope = jax.jit(jax.grad(along), static_argnums=1)  # = ∇loss · d
        second, first = slope(0.0, cfg2), slope(0.0, cfg1)
    np.testing.assert_allclose(second, fd, rtol=1e-5)
    assert abs(float(first - fd)) > 1e-4 * abs(float(fd))  # FOMAML drops real terms


# ------------------------------------------------------------------------------- the step
def test_meta_step_compiles_once_over_varying_sizes(digits, compile_events):
    mesh = meta.task_mesh()
    step = meta.make_meta_step(GEN, CFG, mesh)
    state = meta.init_meta_state(_perturbed_params(digits, jax.random.key(1)), CFG, mesh)
    sizes, counts, losses = [], [], []
    for i in range(4):
        k = jax.random.fold_in(jax.random.key(2), i)
        b = meta.sample_meta_batch(k, digits.x_train, digits.y_train, 10, CFG)
        sizes.append(tuple(b["s_mask"].sum(-1).ravel()))
        state, m = step(state, meta.shard_batch(b, mesh), meta.task_keys(k, 1))
        losses.append(float(m["meta_loss"]))
        counts.append(len(compile_events))
    assert len(set(sizes)) > 1, "the test needs tasks of different sizes"
    assert counts[-1] == counts[0], f"recompiled after step 1: {counts}"
    assert all(np.isfinite(losses)) and int(state["step"]) == 4


def test_unrolled_loops_give_the_scan_update_without_loop_convolutions(digits):
    """loop="unrolled" (the CPU default: inner steps and a device's tasks as Python loops) is
    the same update as loop="scan" (lax.scan + vmap), and leaves no convolution inside an XLA
    while loop (where XLA:CPU keeps kernel gradients in a slow form) or grouped by vmap."""
    cfg = dataclasses.replace(CFG, tasks_per_step=2)
    mesh = meta.task_mesh()
    assert meta.resolve_loop("auto", mesh) == "unrolled"  # the tests run on CPU
    with pytest.raises(ValueError, match="loop must be"):
        meta.make_meta_step(GEN, cfg, mesh, loop="vmap")
    k = jax.random.key(12)
    b = meta.shard_batch(meta.sample_meta_batch(k, digits.x_train, digits.y_train, 10, cfg),
                         mesh)
    keys = meta.task_keys(k, 2)
    params = _perturbed_params(digits, jax.random.key(13))
    out = {}
    for loop in ("scan", "unrolled"):
        step = meta.make_meta_step(GEN, cfg, mesh, loop=loop)
        state = meta.init_meta_state(params, cfg, mesh)
        convs = [line for line in step.lower(state, b, keys).compile().as_text().splitlines()
                 if " convolution(" in line]
        in_loop = [c for c in convs if "/while/" in c or "_group_count=" in c]
        if loop == "unrolled":
            assert convs and not in_loop, in_loop[:2]
        else:
            assert in_loop  # what the unrolled path avoids
        state, m = step(state, b, keys)
        out[loop] = (jax.device_get(state["opt_state"][0].mu), float(m["meta_loss"]),
                     float(m["inner_loss_last"]))
    (g_scan, *l_scan), (g_unr, *l_unr) = out["scan"], out["unrolled"]
    # float32 round-off of two differently fused programs: measured up to 1.2e-5 relative on
    # this machine kind (a wrong inner loop is off by far more).
    np.testing.assert_allclose(l_unr, l_scan, rtol=5e-5)
    gmax = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(g_scan))
    for a, c in zip(jax.tree.leaves(g_unr), jax.tree.leaves(g_scan)):
        np.testing.assert_allclose(a, c, rtol=1e-3, atol=1e-4 * gmax)  # float32 round-off


def test_four_devices_give_the_one_device_update():
    script = textwrap.dedent("""
        import dataclasses
        import jax, numpy as np
        from mgdd_jax import data, meta, meta_train
        from mgdd_jax.configs import meta as meta_config
        from mgdd_jax import generator as gen
        assert len(jax.devices()) == 4, jax.devices()
        ds = data.load_dataset("digits")
        g = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
        cfg = dataclasses.replace(meta_train.meta_config(meta_config.get_config("smoke")),
                                  steps=10, inner_lr=0.05, tasks_per_step=4,
                                  order="first")  # the cross-device mean is order-blind
        p = gen.init_generator(jax.random.key(0), ds.image_shape, g)
        k = jax.random.key(4)
        b = meta.sample_meta_batch(k, ds.x_train, ds.y_train, 10, cfg)
        out = []
        for mesh in (meta.task_mesh(jax.devices()), meta.task_mesh(jax.devices()[:1])):
            state = meta.init_meta_state(p, cfg, mesh)
            batch = meta.shard_batch(b, mesh)
            assert len(batch["x_t"].sharding.device_set) == mesh.size
            state, m = meta.make_meta_step(g, cfg, mesh)(state, batch, meta.task_keys(k, 4))
            mu = state["opt_state"][0].mu  # Adam's first moment after step 1: (1-b1) * grad
            out.append((jax.device_get(state["params"]), jax.device_get(mu),
                        float(m["meta_loss"])))
        (p4, g4, l4), (p1, g1, l1) = out
        gmax = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(g1))
        gdiff = max(float(np.max(np.abs(a - b))) for a, b in
                    zip(jax.tree.leaves(g4), jax.tree.leaves(g1)))
        # Adam's first update is about lr * sign(g): compare parameters where g is not at
        # round-off level (a sign flip of a ~0 gradient is not a different update).
        pdiff = max(float(np.max(np.where(np.abs(gg) > 1e-4 * gmax, np.abs(a - b), 0.0)))
                    for a, b, gg in zip(jax.tree.leaves(p4), jax.tree.leaves(p1),
                                        jax.tree.leaves(g1)))
        print("GRAD", gdiff, gmax, "PARAM", pdiff, "LOSS", l4, l1)
        try:
            meta.make_meta_step(g, dataclasses.replace(cfg, tasks_per_step=3), meta.task_mesh())
            print("UNEVEN accepted")
        except ValueError as e:
            print("UNEVEN refused" if "multiple of the 4 devices" in str(e) else f"UNEVEN {e}")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("GRAD")][0].split()
    gdiff, gmax, pdiff, l4, l1 = (float(line[i]) for i in (1, 2, 4, 6, 7))
    assert gmax > 1e-6  # the meta-gradient is not trivially zero
    assert gdiff < 1e-4 * gmax, (gdiff, gmax)
    assert pdiff < 1e-6, pdiff
    assert abs(l4 - l1) < 1e-5 * max(1.0, abs(l1))
    assert "UNEVEN refused" in p.stdout  # 3 tasks cannot split over 4 devices


# ------------------------------------------------------------------------------- prefetching
def test_prefetched_stream_is_the_direct_stream(digits):
    """Prefetcher(step_inputs) yields, in order, exactly what the inline sampling of
    meta_train gave before (fold_in(key, i) -> split -> batch, task keys), so resumed and
    prefetched runs see the same tasks."""
    key = jax.random.key(14)
    cfg = dataclasses.replace(CFG, tasks_per_step=2)

    def produce(i):
        return meta.step_inputs(key, i, digits.x_train, digits.y_train, 10, cfg)

    with meta.Prefetcher(produce, 3, 8, depth=2) as pf:
        got = list(pf)
    assert not pf.alive
    assert [s for s, _ in got] == list(range(3, 8))
    for s, (batch, keys) in got:
        k_batch, k_tasks = jax.random.split(jax.random.fold_in(key, s))
        want = meta.sample_meta_batch(k_batch, digits.x_train, digits.y_train, 10, cfg)
        assert batch.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(batch[name], want[name])
        np.testing.assert_array_equal(keys, meta.task_keys(k_tasks, 2))


def test_prefetcher_stops_when_consumer_or_producer_raises():
    made = []

    def produce(i):
        made.append(i)
        return i * i

    pf = meta.Prefetcher(produce, 0, 10**9)
    with pytest.raises(RuntimeError, match="consumer"), pf:
        for step, value in pf:
            assert value == step * step
            if step == 2:
                raise RuntimeError("consumer failed")
    assert not pf.alive and len(made) <= 5  # at most `depth` ahead (+ the one in hand)

    def bad(i):
        if i == 1:
            raise ValueError("bad step 1")
        return i

    with meta.Prefetcher(bad, 0, 5) as pf2:
        it = iter(pf2)
        assert next(it) == (0, 0)
        with pytest.raises(ValueError, match="bad step 1"):
            next(it)
    assert not pf2.alive
    with pytest.raises(ValueError, match="depth"):
        meta.Prefetcher(bad, 0, 1, depth=0)


# ------------------------------------------------------------------------------- validation
def test_bad_meta_inputs(digits):
    with pytest.raises(ValueError, match="min_classes"):
        dataclasses.replace(CFG, min_classes=5, max_classes=3)
    with pytest.raises(ValueError, match="inner_steps"):
        dataclasses.replace(CFG, inner_steps=0)
    with pytest.raises(ValueError, match="final_lr_fraction"):
        dataclasses.replace(CFG, final_lr_fraction=1.5)
    with pytest.raises(ValueError, match="min_classes"):
        meta.check_source(digits.y_train, 10, dataclasses.replace(
            CFG, min_classes=20, max_classes=30, num_real=100))
    with pytest.raises(ValueError, match="images per class"):
        meta.check_source(digits.y_train, 10, dataclasses.replace(CFG, num_real=2000))
    with pytest.raises(TypeError):
        meta.MetaConfig(inner_steps=2)  # no defaults: every value comes from a config


def test_meta_config_is_the_config_subtree():
    """MetaConfig has exactly the config's meta fields (each a --config.meta.X flag), no
    defaults of its own, and round-trips through to_dict/from_dict."""
    for variant in meta_config.VARIANTS:
        c = meta_config.get_config(variant)
        m = meta_train.meta_config(c)
        assert {k: v for k, v in m.to_dict().items() if k != "feature"} == c.meta.to_dict()
        assert m.to_dict()["feature"] == c.feature.to_dict()
        assert meta.MetaConfig.from_dict(m.to_dict()) == m
    fields = dataclasses.fields(meta.MetaConfig)
    assert all(f.default is dataclasses.MISSING for f in fields)
    c = meta_config.get_config("smoke")
    with pytest.raises(ValueError, match="unknown"):
        meta.MetaConfig.from_config({**c.meta.to_dict(), "inner_step": 3}, c.feature)
    with pytest.raises(ValueError, match="missing"):
        meta.MetaConfig.from_config({k: v for k, v in c.meta.items() if k != "reg"},
                                    c.feature)
