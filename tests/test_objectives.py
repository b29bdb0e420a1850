"""mgdd_jax.objective's registry (Tab. 3): DM and DC against NumPy references on toys, masks,
absent classes, gradients against finite differences, bad input, and adaptation with each."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgdd_jax.configs import distill as distill_config
from mgdd_jax import adapt, krr, labels, nets, objective
from mgdd_jax import generator as gen

K = 3
FEAT = nets.ConvNetConfig(width=3, depth=2, norm="instance", num_classes=K)
GEN = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)


def _toy(seed=0, n_s=5, n_t=9, hw=8):
    rng = np.random.default_rng(seed)
    x_s = rng.uniform(0, 1, (n_s, hw, hw, 1)).astype(np.float32)
    x_t = rng.uniform(0, 1, (n_t, hw, hw, 1)).astype(np.float32)
    l_s = np.array([0, 1, 1, 2, 0][:n_s] + [2] * max(0, n_s - 5), np.int32)
    l_t = (np.arange(n_t) % K).astype(np.int32)
    syn = objective.LabelledBatch(jnp.asarray(x_s), krr.centred_onehot(l_s, K), jnp.asarray(l_s))
    real = objective.LabelledBatch(jnp.asarray(x_t), krr.centred_onehot(l_t, K),
                                   jnp.asarray(l_t))
    return syn, real


def _np_dm(f_s, l_s, f_t, l_t):
    total = 0.0
    for c in range(K):
        if (l_s == c).any() and (l_t == c).any():
            d = f_t[l_t == c].mean(0) - f_s[l_s == c].mean(0)
            total += float(np.sum(d.astype(np.float64) ** 2))
    return total


def _np_distance_wb(gr, gs):
    """DC's distance_wb in PyTorch's layout: conv (out, in, h, w), linear (out, in), 1-D: 0."""
    if gr.ndim == 1:
        return 0.0
    if gr.ndim == 4:  # Flax (h, w, in, out) -> PyTorch (out, in, h, w)
        gr, gs = gr.transpose(3, 2, 0, 1), gs.transpose(3, 2, 0, 1)
    elif gr.ndim == 2:  # Flax (in, out) -> PyTorch (out, in)
        gr, gs = gr.T, gs.T
    gr = gr.reshape(gr.shape[0], -1).astype(np.float64)
    gs = gs.reshape(gs.shape[0], -1).astype(np.float64)
    cos = (gr * gs).sum(-1) / (np.linalg.norm(gr, axis=-1) * np.linalg.norm(gs, axis=-1) + 1e-6)
    return float(np.sum(1 - cos))


def test_registry_names_and_unknown_objective():
    assert set(objective.OBJECTIVES) == {"krr", "dc", "dm"}
    with pytest.raises(ValueError, match="unknown objective 'gm'.*dc.*dm.*krr"):
        objective.get_objective("gm")
    smoke = distill_config.get_config("smoke").adapt.to_dict()
    assert smoke["objective"] == "krr"  # the config is the one source of the default
    with pytest.raises(ValueError, match="unknown objective"):
        adapt.AdaptConfig.from_config({**smoke, "objective": "DM "}, FEAT, (1,))


def test_dm_matches_numpy_with_masks_and_absent_classes():
    syn, real = _toy()
    key = jax.random.PRNGKey(3)
    got = float(objective.dm_objective(syn, real, key, feature=FEAT, reg=1.0))
    theta = nets.init_feature_params(key, syn.x.shape[1:], FEAT)
    f_s = np.asarray(nets.conv_features(theta, syn.x, FEAT))
    f_t = np.asarray(nets.conv_features(theta, real.x, FEAT))
    want = _np_dm(f_s, np.asarray(syn.labels), f_t, np.asarray(real.labels))
    assert want > 0
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # A masked row counts as absent: masking row 4 (class 0) equals dropping it.
    mask = jnp.array([1, 1, 1, 1, 0], jnp.float32)
    masked = float(objective.dm_objective(syn._replace(mask=mask), real, key, feature=FEAT,
                                          reg=1.0))
    want_m = _np_dm(f_s[:4], np.asarray(syn.labels)[:4], f_t, np.asarray(real.labels))
    np.testing.assert_allclose(masked, want_m, rtol=1e-5)
    # A class with no synthetic image (2 here, once row 3 is masked too) contributes 0.
    mask2 = jnp.array([1, 1, 1, 0, 1], jnp.float32)
    only01 = float(objective.dm_objective(syn._replace(mask=mask2), real, key, feature=FEAT,
                                          reg=1.0))
    keep = np.array([0, 1, 2, 4])
    np.testing.assert_allclose(
        only01, _np_dm(f_s[keep], np.asarray(syn.labels)[keep], f_t, np.asarray(real.labels)),
        rtol=1e-5)


def test_gradient_distance_matches_dc_distance_wb():
    rng = np.random.default_rng(1)
    g_r = {"conv": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
           "dense": rng.normal(size=(6, 3)).astype(np.float32),
           "bias": rng.normal(size=(4,)).astype(np.float32)}
    g_s = jax.tree.map(lambda a: a + rng.normal(size=a.shape).astype(np.float32), g_r)
    want = sum(_np_distance_wb(g_r[k], g_s[k]) for k in g_r)
    got = float(objective.gradient_distance(g_r, g_s))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(objective.gradient_distance(g_r, g_r)) == pytest.approx(0.0, abs=1e-4)


def test_dc_matches_per_class_loop_reference():
    syn, real = _toy(seed=2)
    key = jax.random.PRNGKey(5)
    got = float(objective.dc_objective(syn, real, key, feature=FEAT, reg=1.0))
    net = dataclasses.replace(FEAT, num_classes=K)
    theta = nets.init_feature_params(key, syn.x.shape[1:], net)

    def class_grad(x, lab):  # independent: one grad per class on the class's own rows
        def loss(p):
            logits = nets.conv_logits({**theta, "params": p}, x, net)
            return optax.softmax_cross_entropy_with_integer_labels(logits, lab).mean()
        return jax.tree.map(np.asarray, jax.grad(loss)(theta["params"]))

    want = 0.0
    l_s, l_t = np.asarray(syn.labels), np.asarray(real.labels)
    for c in range(K):
        gs = class_grad(syn.x[l_s == c], l_s[l_s == c])
        gr = class_grad(real.x[l_t == c], l_t[l_t == c])
        want += sum(_np_distance_wb(a, b) for a, b in
                    zip(jax.tree.leaves(gr), jax.tree.leaves(gs), strict=True))
    assert want > 0
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # Padding rows with mask 0 change nothing.
    pad = objective.LabelledBatch(
        jnp.concatenate([syn.x, syn.x[:2] * 0 + 0.5]), jnp.concatenate([syn.y, syn.y[:2]]),
        jnp.concatenate([syn.labels, syn.labels[:2]]),
        jnp.array([1, 1, 1, 1, 1, 0, 0], jnp.float32))
    padded = float(objective.dc_objective(pad, real, key, feature=FEAT, reg=1.0))
    np.testing.assert_allclose(padded, got, rtol=1e-5)


def _np_group(labels, mask, k, m):
    """NumPy reference of group_by_class's layout: block c = class c's rows in order, padded."""
    rows, keep = np.zeros((k, m), np.int64), np.zeros((k, m))
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        rows[c, :len(idx)] = idx
        keep[c, :len(idx)] = 1.0 if mask is None else mask[idx]
    return rows, keep


def test_group_by_class_layout_against_numpy():
    syn, _ = _toy(seed=1, n_s=7)  # classes 0,1,1,2,0,2,2: counts 2, 2, 3
    mask = jnp.array([1, 1, 0, 1, 1, 1, 1], jnp.float32)
    g = objective.group_by_class(syn._replace(mask=mask), K)
    assert objective.is_grouped(g) and g.labels is None
    assert g.x.shape == (K, 3, 8, 8, 1) and g.y.shape == (K, 3, K) and g.mask.shape == (K, 3)
    rows, keep = _np_group(np.asarray(syn.labels), np.asarray(mask), K, 3)
    np.testing.assert_array_equal(np.asarray(g.mask), keep)
    real_rows = keep > 0
    np.testing.assert_array_equal(np.asarray(g.x)[real_rows], np.asarray(syn.x)[rows][real_rows])
    np.testing.assert_array_equal(np.asarray(g.y)[real_rows], np.asarray(syn.y)[rows][real_rows])
    # Back to flat: the same rows (reordered, padding masked) with class ids from the blocks.
    flat = objective.flatten_groups(g)
    np.testing.assert_array_equal(np.asarray(flat.labels), np.repeat(np.arange(K), 3))
    assert objective.flatten_groups(syn) is syn
    # A wider block is only more padding; a narrower one cannot hold class 2: NaN, not wrong.
    wide = objective.group_by_class(syn, K, per_class=5)
    assert float(wide.mask.sum()) == 7 and wide.x.shape[1] == 5
    narrow = objective.group_by_class(syn, K, per_class=2)
    assert np.isnan(np.asarray(narrow.x[2])).all() and np.isfinite(np.asarray(narrow.x[:2])).all()
    assert np.isnan(float(objective.dc_objective(narrow, objective.group_by_class(_toy()[1], K),
                                                 jax.random.PRNGKey(0), feature=FEAT, reg=1.0)))


def test_group_by_class_refuses_bad_input():
    syn, _ = _toy()
    with pytest.raises(ValueError, match="needs the batch's class ids"):
        objective.group_by_class(syn._replace(labels=None), K)
    with pytest.raises(ValueError, match="already class-grouped"):
        objective.group_by_class(objective.group_by_class(syn, K), K)
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        objective.group_by_class(syn, K, per_class=0)


@pytest.mark.parametrize("name", ["krr", "dm", "dc"])
def test_every_objective_is_the_same_on_grouped_sides(name):
    """Flat or grouped (either side, unbalanced, masked rows): one value and one gradient."""
    syn, real = _toy(seed=3, n_s=7, n_t=11)
    syn = syn._replace(mask=jnp.array([1, 1, 1, 1, 0, 1, 1], jnp.float32))
    key, fn = jax.random.PRNGKey(4), objective.get_objective(name)

    def value_and_grad(arrange):
        def loss(x):
            s, r = arrange(syn._replace(x=x), real)
            return fn(s, r, key, feature=FEAT, reg=1e-2)
        return jax.value_and_grad(loss)(syn.x)

    want, want_g = value_and_grad(lambda s, r: (s, r))
    assert float(jnp.abs(want_g).max()) > 0
    for arrange in (lambda s, r: (objective.group_by_class(s, K), objective.group_by_class(r, K)),
                    lambda s, r: (s, objective.group_by_class(r, K, per_class=6)),
                    lambda s, r: (objective.group_by_class(s, K, per_class=4), r)):
        got, got_g = value_and_grad(arrange)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), rtol=1e-4,
                                   atol=1e-5 * float(jnp.abs(want_g).max()))


def test_arrange_for_groups_only_dc():
    syn, real = _toy()
    assert objective.arrange_for("krr", syn, real, K) == (syn, real)
    assert objective.arrange_for("dm", syn, real, K) == (syn, real)
    s, r = objective.arrange_for("dc", syn, real, K)
    assert s.x.shape == (K, 2, 8, 8, 1) and r.x.shape == (K, 3, 8, 8, 1)


@pytest.mark.parametrize("name,grouped", [("dm", False), ("dc", False), ("dc", True)])
def test_generator_loss_gradient_against_finite_differences(name, grouped):
    syn, real = _toy(seed=4)
    params = gen.init_generator(jax.random.PRNGKey(0), (8, 8, 1), GEN)
    # Move off the identity so that every layer has a gradient.
    params = jax.tree.map(
        lambda p, k: p + 0.05 * jax.random.normal(k, p.shape),
        params, jax.tree.unflatten(jax.tree.structure(params),
                                   list(jax.random.split(jax.random.PRNGKey(1),
                                                         len(jax.tree.leaves(params))))))
    key = jax.random.PRNGKey(7)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
                                     if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                                     else a, t)
        p64, s64, r64 = f64(params), f64(syn), f64(real)
        if grouped:  # the layout the adaptation loop gives DC (through g_ω' flat)
            s64, r64 = objective.arrange_for(name, s64, r64, K)
        leaves, tree = jax.tree.flatten(p64)
        ks = jax.random.split(jax.random.PRNGKey(11), len(leaves))
        d = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, jnp.float64)
                                      for x, k in zip(leaves, ks)])
        norm = jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(d)))
        d = jax.tree.map(lambda a: a / norm, d)  # unit direction: small steps, few ReLU kinks

        def along(t):  # the loss at p + t·d
            p = jax.tree.map(lambda a, b: a + t * b, p64, d)
            return objective.generator_loss(p, s64, r64, jnp.float64(2.0), key, gen_config=GEN,
                                            feature=FEAT, reg=1e-2, objective=name)

        eps = 1e-6
        loss = jax.jit(along)
        fd = float((loss(eps) - loss(-eps)) / (2 * eps))
        an = float(jax.jit(jax.grad(along))(0.0))  # = ∇loss · d
    assert abs(an) > 1e-6
    np.testing.assert_allclose(an, fd, rtol=1e-5)


def test_krr_objective_is_eq1_and_needs_no_labels():
    syn, real = _toy(seed=6)
    key = jax.random.PRNGKey(2)
    params = gen.init_generator(jax.random.PRNGKey(0), (8, 8, 1), GEN)
    via_registry = objective.generator_loss(
        params, syn._replace(labels=None), real._replace(labels=None), jnp.float32(2.0), key,
        gen_config=GEN, feature=FEAT, reg=1e-2, objective="krr")
    theta = nets.init_feature_params(key, (8, 8, 1), FEAT)
    want = krr.krr_loss(nets.conv_features(theta, syn.x, FEAT), syn.y,
                        nets.conv_features(theta, real.x, FEAT), real.y, 1e-2)
    np.testing.assert_allclose(float(via_registry), float(want), rtol=1e-6)
    np.testing.assert_allclose(
        float(objective.generator_krr_loss(params, syn.x, syn.y, real.x, real.y,
                                           jnp.float32(2.0), key, gen_config=GEN,
                                           feature=FEAT, reg=1e-2)), float(want), rtol=1e-6)


@pytest.mark.parametrize("name", ["dm", "dc"])
def test_per_class_objectives_refuse_missing_class_ids(name):
    syn, real = _toy()
    with pytest.raises(ValueError, match=f"objective '{name}' matches per class.*synthetic"):
        objective.get_objective(name)(syn._replace(labels=None), real, jax.random.PRNGKey(0),
                                      feature=FEAT, reg=1.0)
    with pytest.raises(ValueError, match="real class ids"):
        objective.get_objective(name)(syn, real._replace(labels=None), jax.random.PRNGKey(0),
                                      feature=FEAT, reg=1.0)


@pytest.mark.parametrize("name", ["dm", "dc"])
def test_adaptation_with_each_objective_lowers_its_loss(name):
    """Alg. 2 with the objective switched: a fixed batch, 15 steps, the loss goes down."""
    syn, real = _toy(seed=8, n_s=6, n_t=12)
    cfg = adapt.AdaptConfig.from_config(
        {**distill_config.get_config("smoke").adapt.to_dict(), "objective": name,
         "learning_rate": 3e-3}, FEAT, (2,))
    params = gen.init_generator(jax.random.PRNGKey(0), (8, 8, 1), GEN)
    state = adapt.init_adapt_state(params, cfg)
    step = adapt.make_adapt_step(GEN, cfg, K)
    label_model = labels.fit_label_model(jax.random.PRNGKey(1), real.x, real.labels, K,
                                         FEAT, reg=1e-2, chunk_size=16)
    l_s = jnp.array([0, 0, 1, 1, 2, 2], jnp.int32)
    batch = {"x_t": real.x, "l_t": real.labels, "x_s": syn.x, "l_s": l_s,
             "ipc": jnp.float32(2.0)}
    key = jax.random.PRNGKey(9)  # the same θ* every step: the loss must fall
    losses = []
    for _ in range(15):
        state, m = step(state, key, label_model, batch, onehot=True)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
