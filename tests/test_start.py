"""The start family of mgdd_jax.start: s = 0 is the identity, s scales the residual, kernel
multipliers leave step 0 unchanged and rescale the first Adam step of their block."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgdd_jax import generator as gen
from mgdd_jax import start

CFG = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
SHAPE = (12, 12, 1)


def _x(n=6, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, *SHAPE))


def _core(cfg=CFG):
    return start.random_core(jax.random.key(3), SHAPE, cfg)


def test_scale_zero_is_exactly_the_identity_map_and_one_the_core():
    core, x = _core(), _x()
    np.testing.assert_array_equal(gen.apply_generator(start.make_start(core, CFG, scale=0.0),
                                                      x, 2.0, CFG), x)
    np.testing.assert_array_equal(gen.apply_generator(start.make_start(core, CFG, scale=1.0),
                                                      x, 2.0, CFG),
                                  gen.apply_generator(core, x, 2.0, CFG))
    # and the core is a real perturbation, not the identity
    assert float(jnp.abs(gen.apply_generator(core, x, 2.0, CFG) - x).mean()) > 1e-2


def test_scale_multiplies_the_residual():
    core, x = _core(), _x()
    r1 = gen.apply_generator(core, x, 2.0, CFG) - x
    r = gen.apply_generator(start.make_start(core, CFG, scale=0.3), x, 2.0, CFG) - x
    np.testing.assert_allclose(r, 0.3 * r1, rtol=1e-5, atol=1e-6)


def test_the_core_keeps_the_fixed_adaptors():
    core, fresh = _core(), gen.init_generator(jax.random.key(0), SHAPE, CFG)
    for name in ("adaptor_in", "adaptor_out"):
        np.testing.assert_array_equal(core[name]["kernel"], fresh[name]["kernel"])
    rand = gen.random_generator(jax.random.key(3), SHAPE, CFG)
    np.testing.assert_array_equal(core["enc0"]["Conv_0"]["kernel"],
                                  rand["enc0"]["Conv_0"]["kernel"])


@pytest.mark.parametrize("norm", ["instance", "layer"])
def test_kernel_multipliers_leave_the_start_unchanged(norm):
    cfg = dataclasses.replace(CFG, norm=norm)
    core, x = _core(cfg), _x()
    base = gen.apply_generator(start.make_start(core, cfg, scale=0.7), x, 2.0, cfg)
    mult = {"enc0": 4.0, "enc2": 0.25, "dec1": 3.0}
    p = start.make_start(core, cfg, scale=0.7, multipliers=mult)
    # unchanged up to the norm's ε (1e-6 against variances scaled by m²)
    np.testing.assert_allclose(gen.apply_generator(p, x, 2.0, cfg), base, rtol=1e-3, atol=5e-4)
    np.testing.assert_allclose(p["enc0"]["Conv_0"]["kernel"],
                               4.0 * core["enc0"]["Conv_0"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(p["enc0"]["Conv_0"]["bias"], core["enc0"]["Conv_0"]["bias"])


def test_a_multiplier_scales_its_blocks_first_adam_step():
    """One Adam step of α from kernel·m acts on the block's kernel like a step of α/m from
    kernel·1 (the block's norm parameters keep α)."""
    core, x = _core(), _x()
    target = _x(seed=1)
    m, lr = 4.0, 1e-2

    def loss(p):
        return jnp.mean((gen.apply_generator(p, x, 2.0, CFG) - target) ** 2)

    def one_step(p, opt):
        updates, _ = opt.update(jax.grad(loss)(p), opt.init(p), p)
        return optax.apply_updates(p, updates)

    def block_lr(scale_enc1):
        labels = jax.tree_util.tree_map_with_path(
            lambda path, _: "kernel" if [k.key for k in path] == ["enc1", "Conv_0", "kernel"]
            else "rest", core)
        return optax.multi_transform({"kernel": optax.adam(lr * scale_enc1),
                                      "rest": optax.adam(lr)}, labels)

    p_m = start.make_start(core, CFG, scale=0.5, multipliers={"enc1": m})
    p_1 = start.make_start(core, CFG, scale=0.5)
    out_m = gen.apply_generator(one_step(p_m, optax.adam(lr)), x, 2.0, CFG)
    out_slow = gen.apply_generator(one_step(p_1, block_lr(1 / m)), x, 2.0, CFG)
    out_full = gen.apply_generator(one_step(p_1, optax.adam(lr)), x, 2.0, CFG)
    np.testing.assert_allclose(out_m, out_slow, rtol=1e-4, atol=2e-5)
    # the same step without the multiplier is measurably different
    assert float(jnp.abs(out_full - out_m).max()) > 50 * float(jnp.abs(out_slow - out_m).max())


def test_bad_starts_are_refused():
    core = _core()
    with pytest.raises(ValueError, match="scale must be a number >= 0"):
        start.make_start(core, CFG, scale=-0.1)
    with pytest.raises(ValueError, match=r"unknown blocks \['enc9'\]"):
        start.make_start(core, CFG, scale=1.0, multipliers={"enc9": 2.0})
    with pytest.raises(ValueError, match="must be positive numbers"):
        start.make_start(core, CFG, scale=1.0, multipliers={"enc0": 0.0})
    plain = dataclasses.replace(CFG, norm="none")
    with pytest.raises(ValueError, match="per-sample norm"):
        start.make_start(start.random_core(jax.random.key(0), SHAPE, plain), plain, scale=1.0,
                         multipliers={"enc0": 2.0})
    with pytest.raises(ValueError, match=r"lacks the generator layers \['out'\]"):
        start.make_start({k: v for k, v in core.items() if k != "out"}, CFG, scale=1.0)


def _toy_tree(values):
    """A two-layer toy parameter tree: {"a": {"kernel": (2,)}, "b": {"bias": (1,)}}."""
    return {"a": {"kernel": jnp.asarray(values[:2], jnp.float32)},
            "b": {"bias": jnp.asarray(values[2:], jnp.float32)}}


def test_reptile_average_against_a_hand_computed_one():
    w0 = _toy_tree([1.0, 2.0, 3.0])
    adapted = [_toy_tree([2.0, 2.0, 5.0]), _toy_tree([1.0, 6.0, 1.0])]
    # mean Δ = ([0.5, 2.0], [0.0]); β = 0.5 moves ω₀ by half of it
    out = start.reptile_average(w0, adapted, 0.5)
    np.testing.assert_allclose(out["a"]["kernel"], [1.25, 3.0])
    np.testing.assert_allclose(out["b"]["bias"], [3.0])
    # β = 1 is the average adapted generator; β = 0 the start
    np.testing.assert_allclose(start.reptile_average(w0, adapted, 1.0)["a"]["kernel"], [1.5, 4.0])
    np.testing.assert_array_equal(start.reptile_average(w0, adapted, 0.0)["a"]["kernel"],
                                  w0["a"]["kernel"])
    # a mask keeps the unmarked layers at ω₀
    masked = start.reptile_average(w0, adapted, 1.0, mask={"b": False})
    np.testing.assert_allclose(masked["a"]["kernel"], [1.5, 4.0])
    np.testing.assert_array_equal(masked["b"]["bias"], w0["b"]["bias"])


def test_delta_agreement_against_numpy_cosines():
    w0 = _toy_tree([0.0, 0.0, 0.0])
    vecs = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, -1.0]])
    got = start.delta_agreement(w0, [_toy_tree(v) for v in vecs])

    def mean_cos(m):
        u = m / np.linalg.norm(m, axis=1, keepdims=True)
        c = u @ u.T
        return (c.sum() - len(m)) / (len(m) * (len(m) - 1))

    np.testing.assert_allclose(got["all"], mean_cos(vecs), rtol=1e-6)
    np.testing.assert_allclose(got["a"], mean_cos(vecs[:, :2]), rtol=1e-6)
    np.testing.assert_allclose(got["b"], mean_cos(vecs[:, 2:]), rtol=1e-6)
    # identical displacements agree fully
    same = start.delta_agreement(w0, [_toy_tree([1.0, 2.0, 3.0])] * 3)
    np.testing.assert_allclose(same["all"], 1.0, rtol=1e-6)


def test_bad_reptile_inputs_are_refused():
    w0 = _toy_tree([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        start.reptile_average(w0, [], 1.0)
    with pytest.raises(ValueError, match="beta"):
        start.reptile_average(w0, [w0], -1.0)
    with pytest.raises(ValueError, match="another parameter tree"):
        start.reptile_average(w0, [{"a": w0["a"]}], 1.0)
    with pytest.raises(ValueError, match="does not have"):
        start.reptile_average(w0, [w0], 1.0, mask={"c": True})
    with pytest.raises(ValueError, match="at least 2"):
        start.delta_agreement(w0, [w0])
