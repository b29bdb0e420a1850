"""Issue 10's meta-learning switches and instruments, on tiny sizes.

* the inner-loop variants (``inner_opt``: SGD, Adam, Meta-SGD) against a Python-loop
  reference written from the public building blocks with Adam by hand, and their gradients
  against finite differences;
* first-order MAML and Reptile meta-gradients against hand-computed ones;
* disjoint supports never overlap the real batch; fixed initial sets;
* the meta-gradient agreement metric against NumPy;
* the validation bank (mgdd_jax.meta_val): deterministic, identity gap 0, K steps move it;
* the class-subset dataset names used by the mechanism check.

The lab's meta configs (experiments/configs/meta_*.py) are checked in
tests/launchers/test_meta_variants.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax import data, krr, meta, meta_train, meta_val, nets
from mgdd_jax import generator as gen
from mgdd_jax.configs import meta as meta_config
from mgdd_jax.data import settings, sources
from mgdd_jax.meta import maml

GEN = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
# The smoke config's sizes (2 inner steps, 2-4 classes, 16 real, 2-8 synthetic, width 4).
BASE = dataclasses.replace(meta_train.meta_config(meta_config.get_config("smoke")), steps=10)
ADAM = dataclasses.replace(BASE, inner_opt="adam", inner_lr=0.02, support="disjoint",
                           fixed_init=True)
META_SGD = dataclasses.replace(ADAM, inner_opt="meta_sgd", inner_lr=0.5)


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def _task(ds, key, cfg):
    b = meta.sample_meta_batch(key, ds.x_train, ds.y_train, ds.num_classes, cfg)
    return {k: v[0] for k, v in b.items()}


def _params(ds, key, scale=0.05):
    p = gen.init_generator(jax.random.key(0), ds.image_shape, GEN)
    leaves, tree = jax.tree.flatten(p)
    ks = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, ks)])


def _reference(params, task, key, cfg, *, stop_inner=False, lr=None):
    """Alg. 1 l. 10-17 with a Python loop and Adam/SGD/Meta-SGD (rates ``lr``) written out
    by hand: ``(loss, ω', first inner gradient)``."""
    x_t, y_t = task["x_t"], task["y_t"]
    pool = task["x_u"] if "x_u" in task else x_t
    k_theta, k_steps = jax.random.split(key)
    theta = nets.init_feature_params(k_theta, x_t.shape[1:], cfg.feature)
    w_t = krr.target_weights(nets.conv_features(theta, x_t, cfg.feature), y_t, cfg.reg)
    keys = jax.random.split(k_steps, cfg.inner_steps + 1)

    def loss_at(p, i):
        x_s = pool[task["s_idx"][i]]
        y_s = nets.conv_features(theta, x_s, cfg.feature) @ w_t
        x_gen = gen.apply_generator(p, x_s, task["ipc"][i], GEN)
        th = nets.init_feature_params(keys[i], x_t.shape[1:], cfg.feature)
        return krr.krr_loss(nets.conv_features(th, x_gen, cfg.feature), y_s,
                            nets.conv_features(th, x_t, cfg.feature), y_t, cfg.reg,
                            support_mask=task["s_mask"][i])

    p = params
    m = jax.tree.map(jnp.zeros_like, p)
    v = jax.tree.map(jnp.zeros_like, p)
    grads = []
    for i in range(cfg.inner_steps):
        g = jax.grad(loss_at)(p, i)
        grads.append(g)
        if stop_inner:
            g = jax.lax.stop_gradient(g)
        if cfg.inner_opt == "sgd":
            p = jax.tree.map(lambda a, b: a - cfg.inner_lr * b, p, g)
            continue
        if cfg.inner_opt == "meta_sgd":
            p = jax.tree.map(lambda a, r, b: a - r * b, p, lr, g)
            continue
        t = i + 1
        m = jax.tree.map(lambda a, b: cfg.inner_b1 * a + (1 - cfg.inner_b1) * b, m, g)
        v = jax.tree.map(lambda a, b: cfg.inner_b2 * a + (1 - cfg.inner_b2) * b * b, v, g)
        p = jax.tree.map(
            lambda a, mm, vv: a - cfg.inner_lr * (mm / (1 - cfg.inner_b1 ** t)) / (
                jnp.sqrt(vv / (1 - cfg.inner_b2 ** t) + meta.INNER_ADAM_EPS_ROOT) + 1e-8),
            p, m, v)
    # the meta objective: L(ω') + λ L(ω) on the meta-test set
    return (loss_at(p, cfg.inner_steps) + cfg.start_weight * loss_at(params, cfg.inner_steps),
            p, grads[0])


def _close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **kw)


def _norm(tree):
    return float(np.sqrt(sum(float(jnp.sum(a * a)) for a in jax.tree.leaves(tree))))


def _close_scaled(a, b, frac=1e-2):
    """Within ``frac`` of each value or of the gradient's largest entry: second order through
    Adam's normalisation, and Adam steps on round-off gradients (next), make float32 results
    differ by ~0.5%; leaves whose exact gradient is 0 hold round-off (~1e-9) only."""
    scale = max(float(np.max(np.abs(y))) for y in jax.tree.leaves(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=frac, atol=frac * scale)


def _close_where_moved(adapted, ref_adapted, first_grad):
    """ω' vs the reference's, on the entries with a real gradient. Entries whose gradient is
    0 in exact arithmetic (a conv bias before an instance norm) get float round-off, which
    Adam's normalisation turns into a full ±lr step of either sign in either program."""
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(first_grad))
    for a, b, g in zip(jax.tree.leaves(adapted), jax.tree.leaves(ref_adapted),
                       jax.tree.leaves(first_grad), strict=True):
        real = np.abs(np.asarray(g)) > 1e-5 * scale
        np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], rtol=1e-3,
                                   atol=1e-4)  # a wrong Adam step is off by ~lr = 2e-2


# ------------------------------------------------------------------------------ inner loops
def test_adam_inner_loop_matches_python_reference(digits):
    """The lax.scan inner loop with Adam steps. (SGD inner steps: tests/test_meta.py,
    test_scan_meta_gradient_matches_python_loop; the unrolled loop runs the same step body
    and equals the scan one: test_unrolled_loops_give_the_scan_update_...)"""
    cfg = ADAM
    task = _task(digits, jax.random.key(5), cfg)
    params, key = _params(digits, jax.random.key(6)), jax.random.key(7)
    def ours(p):
        loss, aux = meta.task_meta_loss(p, task, key, gen_config=GEN, config=cfg)
        return loss, aux["adapted"]

    def ref(p):
        loss, adapted, g0 = _reference(p, task, key, cfg)
        return loss, (adapted, g0)

    (l1, moved), g1 = jax.jit(jax.value_and_grad(ours, has_aux=True))(params)
    (l2, (ref_moved, g0)), g2 = jax.jit(jax.value_and_grad(ref, has_aux=True))(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    _close_scaled(g1, g2)
    _close_where_moved(moved, ref_moved, g0)


def _f64(tree):
    """The floating leaves of ``tree`` as float64 (call under ``jax.enable_x64``)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


def _assert_directional_derivative(loss_of, x64, key):
    """d/ds loss_of(x + s·d) at s = 0, autodiff vs central differences, along a random unit
    direction d of the float64 tree ``x64`` (call under ``jax.enable_x64``)."""
    leaves, tree = jax.tree.flatten(x64)
    ks = jax.random.split(key, len(leaves))
    d = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, jnp.float64)
                                  for x, k in zip(leaves, ks)])
    norm = jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(d)))
    d = jax.tree.map(lambda a: a / norm, d)

    @jax.jit
    def along(s):  # the loss at x + s·d
        return loss_of(jax.tree.map(lambda a, b: a + s * b, x64, d))

    eps = 1e-6
    fd = (along(eps) - along(-eps)) / (2 * eps)
    analytic = jax.jit(jax.grad(along))(0.0)
    np.testing.assert_allclose(analytic, fd, rtol=1e-4)
    assert abs(float(fd)) > 1e-6  # a real derivative, not two zeros


def test_adam_inner_loop_second_order_matches_finite_differences(digits):
    """Directional derivative through two Adam inner steps vs central differences (float64)."""
    cfg = dataclasses.replace(ADAM, inner_lr=0.05)
    task = _task(digits, jax.random.key(8), cfg)
    params, key = _params(digits, jax.random.key(9)), jax.random.key(10)
    with jax.enable_x64(True):
        t64 = _f64(task)
        _assert_directional_derivative(
            lambda p: meta.task_meta_loss(p, t64, key, gen_config=GEN, config=cfg)[0],
            _f64(params), jax.random.key(11))


def _rates(params, key, base=0.5):
    """Meta-SGD rates unlike the initial constant: each parameter its own α in [0.5, 1.5]·base."""
    leaves, tree = jax.tree.flatten(params)
    ks = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [base * jax.random.uniform(k, x.shape, minval=0.5,
                                                               maxval=1.5)
                                     for x, k in zip(leaves, ks)])


def test_meta_sgd_inner_loop_matches_python_reference(digits):
    """Meta-SGD (ω' ← ω' - α ⊙ g, per-parameter α): the loss, ω' and the second-order
    gradients in ω *and* α against the hand-written Python loop."""
    cfg = META_SGD
    task = _task(digits, jax.random.key(20), cfg)
    params, key = _params(digits, jax.random.key(21)), jax.random.key(22)
    rates = _rates(params, jax.random.key(23))

    def ours(p, r):
        loss, aux = meta.task_meta_loss(p, task, key, gen_config=GEN, config=cfg, inner_lr=r)
        return loss, aux["adapted"]

    def ref(p, r):
        loss, adapted, _ = _reference(p, task, key, cfg, lr=r)
        return loss, adapted

    (l1, moved), g1 = jax.jit(jax.value_and_grad(ours, (0, 1), has_aux=True))(params, rates)
    (l2, ref_moved), g2 = jax.jit(jax.value_and_grad(ref, (0, 1), has_aux=True))(params, rates)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    _close(moved, ref_moved, rtol=1e-4, atol=1e-6)
    _close_scaled(g1[0], g2[0])
    _close_scaled(g1[1], g2[1])
    assert _norm(g1[1]) > 0  # the rates get a real gradient
    # the step's gradient is this one (order "second")
    loss, _, (g_w, g_r), _ = jax.jit(lambda p, r: meta.task_meta_gradient(
        p, task, key, gen_config=GEN, config=cfg, inner_lr=r))(params, rates)
    np.testing.assert_allclose(loss, l1, rtol=1e-6)
    _close_scaled(g_w, g1[0])
    _close_scaled(g_r, g1[1])


def test_meta_sgd_rate_gradient_matches_finite_differences(digits):
    """Directional derivative in the rates α through two Meta-SGD steps vs central
    differences (float64)."""
    cfg = META_SGD
    task = _task(digits, jax.random.key(24), cfg)
    params, key = _params(digits, jax.random.key(25)), jax.random.key(26)
    with jax.enable_x64(True):
        p64, t64 = _f64(params), _f64(task)
        _assert_directional_derivative(
            lambda r: meta.task_meta_loss(p64, t64, key, gen_config=GEN, config=cfg,
                                          inner_lr=r)[0],
            _f64(_rates(params, jax.random.key(27))), jax.random.key(28))


def test_first_order_meta_sgd_gradients_are_the_hand_computed_ones(digits):
    """First order: ∇_ω = ∇L(ω') (+ λ ∇L(ω)), ∇_α = -∇L(ω') ⊙ Σ_t g_t, i.e. the hand-written
    loop's gradient in (ω, α) with the inner gradients stopped; and written out from the
    loop's own inner gradients."""
    cfg = dataclasses.replace(META_SGD, order="first", start_weight=0.5)
    task = _task(digits, jax.random.key(29), cfg)
    params, key = _params(digits, jax.random.key(30)), jax.random.key(31)
    rates = _rates(params, jax.random.key(32))
    loss, _, (g_w, g_r), moved = jax.jit(lambda p, r: meta.task_meta_gradient(
        p, task, key, gen_config=GEN, config=cfg, inner_lr=r))(params, rates)
    hand = jax.jit(jax.grad(lambda p, r: _reference(p, task, key, cfg, stop_inner=True,
                                                    lr=r)[0], (0, 1)))(params, rates)
    _close_scaled(g_w, hand[0])
    _close_scaled(g_r, hand[1])
    # -∇L(ω') ⊙ Σ g: Σ g = (ω - ω') / α for this update
    _, adapted, _ = jax.jit(lambda p, r: _reference(p, task, key, cfg, lr=r))(params, rates)
    loss_at, keys = maml._task_objective(task, key, gen_config=GEN, config=cfg)
    g_test = jax.jit(jax.grad(lambda p: loss_at(p, cfg.inner_steps, keys[-1])))(adapted)
    written = jax.tree.map(lambda g, w, w1, r: -g * (w - w1) / r, g_test, params, adapted,
                           rates)
    _close_scaled(g_r, written)
    plain = _reference(params, task, key, dataclasses.replace(cfg, start_weight=0.0),
                       lr=rates)[0]
    np.testing.assert_allclose(loss, plain, rtol=1e-5)  # the logged loss is L(ω')
    assert float(moved) > 0


def test_meta_sgd_step_learns_the_rates(digits, compile_events):
    """One meta step moves ω and α together (outer Adam: every rate with a gradient moves by
    about β), keeps them in the state (``opt_state``: ``outer``, ``inner_lr``), and logs
    the mean rate; a second step does not recompile."""
    cfg = dataclasses.replace(META_SGD, order="first", tasks_per_step=2, outer_lr=1e-3)
    mesh = meta.task_mesh()
    step = meta.make_meta_step(GEN, cfg, mesh)
    params = _params(digits, jax.random.key(33))
    state = meta.init_meta_state(params, cfg, mesh)
    assert sorted(state["opt_state"]) == ["inner_lr", "outer"]
    for a in jax.tree.leaves(state["opt_state"]["inner_lr"]):
        np.testing.assert_array_equal(a, cfg.inner_lr)
    counts = []
    for i in range(2):
        batch, keys = meta.step_inputs(jax.random.key(2), i, digits.x_train, digits.y_train,
                                       10, cfg)
        state, m = step(state, meta.shard_batch(batch, mesh), keys)
        counts.append(len(compile_events))
    assert counts[1] == counts[0], f"recompiled after step 1: {counts}"
    moved = [np.abs(np.asarray(a) - cfg.inner_lr)
             for a in jax.tree.leaves(state["opt_state"]["inner_lr"])]
    biggest = max(float(x.max()) for x in moved)
    assert 0.5 * cfg.outer_lr < biggest <= 2.5 * cfg.outer_lr
    np.testing.assert_allclose(float(m["inner_lr_mean"]), np.mean(np.concatenate(
        [np.ravel(a) for a in jax.tree.leaves(state["opt_state"]["inner_lr"])])), rtol=1e-5)
    assert _norm(jax.tree.map(jnp.subtract, state["params"], params)) > 0
    assert -1.0 <= float(m["grad_agreement"]) <= 1.0


def test_meta_sgd_needs_its_rates_and_a_loss_gradient():
    with pytest.raises(ValueError, match="meta_sgd' needs order 'first' or 'second'"):
        dataclasses.replace(META_SGD, order="reptile")
    with pytest.raises(ValueError, match="inner_lr .the learned rates. is needed"):
        meta.inner_optimizer(META_SGD)
    with pytest.raises(ValueError, match="only by it"):
        meta.inner_optimizer(ADAM, inner_lr={"w": jnp.ones(2)})


def test_first_order_and_reptile_gradients_are_the_hand_computed_ones(digits):
    """FOMAML: ∇ of the meta-test loss at ω' with ω' held as a function of ω by the identity
    (inner gradients stopped); Reptile: ω - ω'. Both against the hand-written Adam loop."""
    task = _task(digits, jax.random.key(12), ADAM)
    params, key = _params(digits, jax.random.key(13)), jax.random.key(14)
    grad_of = lambda cfg: jax.jit(lambda p: meta.task_meta_gradient(  # noqa: E731
        p, task, key, gen_config=GEN, config=cfg))(params)

    first = dataclasses.replace(ADAM, order="first")
    loss, _, g_first, moved = grad_of(first)
    ref_loss, adapted, g0 = jax.jit(lambda p: _reference(p, task, key, first))(params)
    hand = jax.jit(jax.grad(lambda p: _reference(p, task, key, first, stop_inner=True)[0]))(
        params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    _close_scaled(g_first, hand)
    # (that FOMAML drops real second-order terms: tests/test_meta.py's finite differences)

    rep = dataclasses.replace(ADAM, order="reptile")
    _, _, g_rep, moved_rep = grad_of(rep)
    _close_where_moved(g_rep, jax.tree.map(jnp.subtract, params, adapted), g0)
    np.testing.assert_allclose(moved_rep, moved, rtol=1e-6)
    diff = jax.tree.map(jnp.subtract, adapted, params)
    expected = np.sqrt(sum(float(jnp.sum(a * a)) for a in jax.tree.leaves(diff)))
    np.testing.assert_allclose(moved, expected, rtol=1e-2)
    # Adam moves a parameter by about lr per step whatever its gradient's scale (2 steps;
    # |m̂|/√v̂ <= (1-b1)/√(1-b2) bounds it), unlike SGD at this lr (tiny gradients)
    biggest = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(diff))
    assert ADAM.inner_lr < biggest <= 2 * ADAM.inner_lr * 3.2


def test_start_weight_scores_the_start_too(digits):
    """``start_weight`` = λ: the objective is L(ω') + λ L(ω), against the hand-written loop
    (second order differentiates it as written; its gradients through the loop are checked
    at λ = 0 above); first order is ∇L(ω') + λ ∇L(ω), the hand-written loop's gradient with
    the inner gradients stopped; the logged loss stays L(ω')."""
    lam = 0.7
    task = _task(digits, jax.random.key(15), ADAM)
    params, key = _params(digits, jax.random.key(16)), jax.random.key(17)
    second = dataclasses.replace(ADAM, start_weight=lam)
    first = dataclasses.replace(second, order="first")

    obj, aux = jax.jit(lambda p: meta.task_meta_loss(p, task, key, gen_config=GEN,
                                                     config=second))(params)
    ref_obj, plain = jax.jit(lambda p: (_reference(p, task, key, second)[0],
                                        _reference(p, task, key, ADAM)[0]))(params)
    np.testing.assert_allclose(obj, ref_obj, rtol=1e-5)
    np.testing.assert_allclose(aux["meta_test"], plain, rtol=1e-5)  # L(ω'), λ = 0
    assert float(obj - plain) > 0.1 * float(plain)  # the start term is really there

    loss, _, g_first, _ = jax.jit(lambda p: meta.task_meta_gradient(
        p, task, key, gen_config=GEN, config=first))(params)
    hand = jax.jit(jax.grad(lambda p: _reference(p, task, key, first, stop_inner=True)[0]))(
        params)
    np.testing.assert_allclose(loss, plain, rtol=1e-5)  # the logged loss is L(ω')
    _close_scaled(g_first, hand)
    # λ ∇L(ω) is a large part of it, so a missing start term fails the comparison above
    loss_at, keys = maml._task_objective(task, key, gen_config=GEN, config=first)
    g_start = jax.jit(jax.grad(lambda p: loss_at(p, first.inner_steps, keys[-1])))(params)
    assert lam * _norm(g_start) > 0.2 * _norm(hand)


def test_gradient_agreement_matches_numpy():
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(5, 3, 4)).astype(np.float32),
             "b": rng.normal(size=(5, 7)).astype(np.float32)}
    grads["b"][1] = 3 * grads["b"][0]  # some agreement
    grads["a"][1] = 3 * grads["a"][0]
    flat = np.concatenate([grads["a"].reshape(5, -1), grads["b"]], axis=1).astype(np.float64)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    cos = unit @ unit.T
    expected = (cos.sum() - 5) / 20
    got = meta.gradient_agreement(jax.tree.map(jnp.asarray, grads), 5, axis_name=None)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    same = {"a": np.ones((3, 2), np.float32)}
    np.testing.assert_allclose(meta.gradient_agreement(same, 3, axis_name=None), 1.0,
                               rtol=1e-6)


def test_meta_step_logs_agreement_and_displacement(digits):
    cfg = dataclasses.replace(ADAM, tasks_per_step=2, order="reptile")
    mesh = meta.task_mesh()
    step = meta.make_meta_step(GEN, cfg, mesh)
    state = meta.init_meta_state(_params(digits, jax.random.key(1)), cfg, mesh)
    batch, keys = meta.step_inputs(jax.random.key(2), 0, digits.x_train, digits.y_train, 10,
                                   cfg)
    _, m = step(state, meta.shard_batch(batch, mesh), keys)
    assert -1.0 <= float(m["grad_agreement"]) <= 1.0
    assert float(m["inner_displacement"]) > 0 and np.isfinite(float(m["meta_loss"]))


# ------------------------------------------------------------------------------ sampling
def test_disjoint_supports_never_overlap_the_real_batch(digits):
    cfg = dataclasses.replace(BASE, support="disjoint", num_real=40, min_classes=2,
                              max_classes=4, max_synthetic=12)
    for i in range(20):
        t = meta.sample_task(jax.random.key(i), digits.y_train, 10, cfg)
        assert t["u_idx"].shape == (cfg.max_synthetic,)
        classes = set(digits.y_train[t["t_idx"]])
        for j in range(cfg.inner_steps + 1):
            n = int(t["s_mask"][j].sum())
            chosen = t["u_idx"][t["s_idx"][j, :n]]
            assert not set(chosen) & set(t["t_idx"]), "a support is in the real batch"
            assert len(set(chosen)) == n
            lab = digits.y_train[chosen]
            assert set(lab) == classes  # the task's classes, class-balanced
            assert np.all(np.bincount(lab, minlength=10)[sorted(classes)] == t["ipc"][j])
    batch = meta.sample_meta_batch(jax.random.key(0), digits.x_train, digits.y_train, 10, cfg)
    assert batch["x_u"].shape == (1, cfg.max_synthetic, *digits.image_shape)
    in_batch = meta.sample_task(jax.random.key(0), digits.y_train, 10, BASE)
    assert "u_idx" not in in_batch


def test_fixed_init_uses_one_set_for_every_step(digits):
    cfg = dataclasses.replace(BASE, fixed_init=True, inner_steps=3)
    t = meta.sample_task(jax.random.key(4), digits.y_train, 10, cfg)
    assert (t["s_idx"] == t["s_idx"][0]).all() and (t["ipc"] == t["ipc"][0]).all()
    varied = [meta.sample_task(jax.random.key(i), digits.y_train, 10,
                               dataclasses.replace(cfg, fixed_init=False)) for i in range(5)]
    assert any(len(set(v["ipc"])) > 1 or not (v["s_idx"] == v["s_idx"][0]).all()
               for v in varied)


def test_bad_variant_values_and_legacy_records():
    for field, value in (("order", "third"), ("inner_opt", "lamb"), ("support", "nearby"),
                         ("inner_b1", 1.0), ("start_weight", -0.5),
                         ("start_weight", float("nan"))):
        with pytest.raises(ValueError, match=field.split("_")[-1]):
            dataclasses.replace(BASE, **{field: value})
    with pytest.raises(ValueError, match="start_weight needs order 'first' or 'second'"):
        dataclasses.replace(BASE, order="reptile", start_weight=0.5)
    # records made before start_weight existed read as λ = 0 (what they did)
    before = {k: v for k, v in BASE.to_dict().items() if k not in meta.ADDED_FIELDS}
    assert meta.MetaConfig.from_dict(before) == BASE
    legacy = {k: v for k, v in BASE.to_dict().items()
              if k not in ("order", *meta.LEGACY_FIELDS)}
    old = meta.MetaConfig.from_dict({**legacy, "first_order": True})
    assert old.order == "first" and old.inner_opt == "sgd" and old.support == "in_batch"
    assert meta.MetaConfig.from_dict({**legacy, "first_order": False}).order == "second"


# ------------------------------------------------------------------------------ the bank
def test_validation_bank_is_deterministic_and_scores_against_identity(digits):
    cfg = dataclasses.replace(BASE, max_synthetic=8)
    val = meta_val.ValConfig(tasks=2, steps=3, every=1, learning_rate=1e-2, b1=0.9, b2=0.999,
                             eval_draws=2, seed=3, source="")
    make = lambda: meta_val.make_bank(digits.x_train, digits.y_train, 10, cfg, val)  # noqa
    bank, again = make(), make()
    assert all(np.array_equal(bank[k], again[k]) for k in bank)
    assert bank["x_t"].shape == (2, cfg.num_real, *digits.image_shape)
    assert bank["x_s"].shape == (2, cfg.max_synthetic, *digits.image_shape)
    other = meta_val.make_bank(digits.x_train, digits.y_train, 10, cfg,
                               dataclasses.replace(val, seed=4))
    assert not np.array_equal(bank["x_t"], other["x_t"])  # the seed is the bank's

    score = meta_val.make_scorer(GEN, cfg, val)
    identity = gen.init_generator(jax.random.key(0), digits.image_shape, GEN)
    s1 = meta_val.bank_score(score, identity, bank)
    assert s1 == meta_val.bank_score(score, identity, bank)  # deterministic
    assert meta_val.scores(s1, s1)["val_gap"] == 0.0
    # K = 0 reads the identity's own loss; K steps of Adam at a large rate lower it
    no_steps = meta_val.make_scorer(GEN, cfg, dataclasses.replace(val, steps=0))
    assert s1 < meta_val.bank_score(no_steps, identity, bank)
    perturbed = _params(digits, jax.random.key(3), scale=0.5)
    assert meta_val.bank_score(score, perturbed, bank) != s1


def test_bad_val_config():
    good = dict(tasks=2, steps=3, every=1, learning_rate=1e-4, b1=0.9, b2=0.999,
                eval_draws=1, seed=0, source="")
    for k, v in (("every", 0), ("eval_draws", 0), ("learning_rate", 0.0), ("tasks", -1),
                 ("b2", 1.0)):
        with pytest.raises(ValueError, match=k.split("_")[0]):
            meta_val.ValConfig(**{**good, k: v})
    with pytest.raises(ValueError, match="missing"):
        meta_val.ValConfig.from_config({k: v for k, v in good.items() if k != "seed"})
    with pytest.raises(ValueError, match="no validation bank"):
        meta_val.make_bank(np.zeros((4, 8, 8, 1)), np.zeros(4, int), 2, BASE,
                           meta_val.ValConfig(**{**good, "tasks": 0}))


def test_every_library_meta_config_variant_builds_its_dataclasses():
    """Each variant of mgdd_jax/configs/meta.py builds MetaConfig, ValConfig and
    MultihostConfig; unknown variants are refused; the source is a parameter."""
    from mgdd_jax import multihost

    for variant in meta_config.VARIANTS:
        c = meta_config.get_config(variant)
        meta_train.meta_config(c)
        assert meta_val.ValConfig.from_config(c.val).tasks > 0
        multihost.MultihostConfig.from_config(c.distributed)
        assert c.source == meta_config.DEFAULT_SOURCE
    assert meta_config.get_config().to_dict() == meta_config.get_config("gpu").to_dict()
    assert meta_config.get_config("cpu", source="digits").source == "digits"
    with pytest.raises(ValueError, match="variant"):
        meta_config.get_config("nope")
    assert meta_train.meta_config(meta_config.base_config("digits")).steps == 200_000


# ------------------------------------------------------------------------------ class subsets
def test_class_subset_names():
    assert sources.split_class_subset("fashion_mnist") == ("fashion_mnist", None)
    assert sources.split_class_subset("digits#classes=5-9") == ("digits", (5, 6, 7, 8, 9))
    assert sources.split_class_subset("digits#classes=0,2,7-8") == ("digits", (0, 2, 7, 8))
    for bad in ("digits#classes=", "digits#classes=a-b", "digits#classes=3",
                "digits#classes=1,1", "#classes=0-3"):
        with pytest.raises(ValueError, match="class"):
            sources.split_class_subset(bad)
    with pytest.raises(ValueError, match="do not exist"):
        data.load_dataset("digits#classes=8-11")
    ds = data.load_dataset("digits#classes=7,2")
    full = data.load_dataset("digits")
    assert ds.num_classes == 2 and ds.class_names == (full.class_names[7],
                                                      full.class_names[2])
    assert set(ds.y_train) == {0, 1} and set(ds.y_test) == {0, 1}
    assert len(ds.y_train) == int(np.sum(np.isin(full.y_train, [7, 2])))
    assert len(ds.y_test) == int(np.sum(np.isin(full.y_test, [7, 2])))
    assert settings.settings_for("fashion_mnist#classes=5-9") == settings.settings_for(
        "fashion_mnist")
