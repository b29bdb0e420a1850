"""mgdd_jax.generator: shapes, identity at init, size embedding, batch independence, adaptors."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax import generator as gen

TINY = dict(width=4, embed_dim=8, embed_channels=2)


def perturbed(params, key, scale=0.1):
    """Move every leaf off its init (the zero output conv included)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )


@pytest.mark.parametrize(
    "shape", [(28, 28, 1), (32, 32, 3), (27, 29, 3), (8, 8, 2), (5, 7, 1)]
)
def test_shapes_any_resolution_and_channels(shape):
    cfg = gen.GeneratorConfig(**TINY, image_channels=shape[-1])
    params = perturbed(gen.init_generator(jax.random.key(0), shape, cfg), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (3, *shape))
    y = gen.apply_generator(params, x, 10, cfg)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_fresh_generator_is_identity(channels):
    cfg = gen.GeneratorConfig(**TINY, image_channels=channels)
    params = gen.init_generator(jax.random.key(0), (12, 12, channels), cfg)
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, channels))
    for size in (1, 10, 50):
        np.testing.assert_array_equal(gen.apply_generator(params, x, size, cfg), x)


def test_identity_at_init_still_trains_every_layer():
    """Zero-init output conv: step one moves it, and from step two all layers get gradient."""
    cfg = gen.GeneratorConfig(**TINY, image_channels=1)
    params = gen.init_generator(jax.random.key(0), (8, 8, 1), cfg)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    target = jax.random.normal(jax.random.key(2), x.shape)

    def loss(p):
        return jnp.mean((gen.apply_generator(p, x, 10, cfg) - target) ** 2)

    g1 = jax.grad(loss)(params)
    assert float(jnp.abs(g1["out"]["kernel"]).max()) > 0
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, g1)
    g2 = jax.grad(loss)(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g2):
        assert float(jnp.abs(leaf).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_size_embedding_changes_output():
    cfg = gen.GeneratorConfig(**TINY, image_channels=3)
    params = perturbed(gen.init_generator(jax.random.key(0), (8, 8, 3), cfg), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    y1, y10, y10b = (gen.apply_generator(params, x, s, cfg) for s in (1, 10, 10))
    np.testing.assert_array_equal(y10, y10b)
    assert float(jnp.abs(y1 - y10).max()) > 1e-4


def test_without_size_embedding_every_size_is_the_same_and_checkpoints_load(tmp_path):
    """Fig. 3's ablation: ``size_embedding=False`` is the generator fed size 0 for every set;
    same parameters, so a checkpoint saved with the embedding loads without it (and back)."""
    import dataclasses

    from mgdd_jax import checkpoint

    cfg = gen.GeneratorConfig(**TINY, image_channels=3)
    off = dataclasses.replace(cfg, size_embedding=False)
    params = perturbed(gen.init_generator(jax.random.key(0), (8, 8, 3), cfg), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    y1, y50 = (gen.apply_generator(params, x, s, off) for s in (1, 50))
    np.testing.assert_array_equal(y1, y50)
    np.testing.assert_array_equal(y1, gen.apply_generator(params, x, 0, cfg))
    assert float(jnp.abs(y1 - gen.apply_generator(params, x, 1, cfg)).max()) > 1e-4
    checkpoint.save_generator(str(tmp_path / "ckpt"), 1, params, cfg)
    loaded, _ = checkpoint.load_generator(str(tmp_path / "ckpt"), off, (8, 8, 3))
    np.testing.assert_array_equal(gen.apply_generator(loaded, x, 7, off), y1)
    # Other fields still have to match.
    with pytest.raises(checkpoint.CheckpointMismatchError, match="width"):
        checkpoint.load_generator(str(tmp_path / "ckpt"),
                                  dataclasses.replace(off, width=8), (8, 8, 3))


def test_loading_a_checkpoint_logs_no_third_party_warnings(tmp_path, caplog):
    """Reading a generator checkpoint (meta, latest step, parameters) emits no warning, from
    orbax (absl logging) or anyone else, and writes nothing into the directory."""
    import logging
    import os
    import warnings

    import orbax.checkpoint as ocp

    from mgdd_jax import checkpoint

    cfg = gen.GeneratorConfig(**TINY, image_channels=3)
    params = perturbed(gen.init_generator(jax.random.key(0), (8, 8, 3), cfg), jax.random.key(1))
    directory = str(tmp_path / "ckpt")
    checkpoint.save_generator(directory, 3, params, cfg, {"kind": "test"})
    before = sorted(os.walk(directory))
    caplog.set_level(logging.WARNING)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert checkpoint.latest_step(directory) == 3
        step, meta = checkpoint.read_meta(directory)
        loaded, meta2 = checkpoint.load_generator(directory, cfg, (8, 8, 3))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in caught] == []
    assert step == 3 and meta == meta2 and meta["info"] == {"kind": "test"}
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.walk(directory)) == before
    # The capture works: orbax's read-only manager is what used to warn on every load.
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)):
        pass
    assert any("read only" in r.getMessage() for r in caplog.records)


def test_size_encoding_matches_formula():
    enc = np.asarray(gen.size_encoding(jnp.array([3.0, 50.0]), 8))
    freqs = np.exp(-math.log(10_000.0) * np.arange(4) / 4)
    for row, s in zip(enc, (3.0, 50.0)):
        np.testing.assert_allclose(row, np.concatenate([np.sin(s * freqs), np.cos(s * freqs)]),
                                   rtol=1e-5, atol=1e-6)


def test_batch_independence_at_generation():
    cfg = gen.GeneratorConfig(**TINY, image_channels=1)
    params = perturbed(gen.init_generator(jax.random.key(0), (10, 10, 1), cfg), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (7, 10, 10, 1))
    full = gen.generate(params, x, 10, cfg)
    alone = gen.generate(params, x[3:4], 10, cfg)
    other = gen.generate(params, jnp.concatenate([x[3:4], -x[:3] * 5]), 10, cfg)
    chunked = gen.generate(params, x, 10, cfg, batch_size=3)
    np.testing.assert_allclose(full[3:4], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full[3:4], other[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full, chunked, rtol=1e-5, atol=1e-5)


def test_adaptors_start_as_replicate_and_average():
    cfg = gen.GeneratorConfig(**TINY, image_channels=1)
    params = gen.init_generator(jax.random.key(0), (8, 8, 1), cfg)
    np.testing.assert_array_equal(params["adaptor_in"]["kernel"].reshape(1, 3), np.ones((1, 3)))
    np.testing.assert_allclose(params["adaptor_out"]["kernel"].reshape(3, 1), np.full((3, 1), 1 / 3))
    rgb = gen.GeneratorConfig(**TINY, image_channels=3)
    assert "adaptor_in" not in gen.init_generator(jax.random.key(0), (8, 8, 3), rgb)


def test_core_params_shared_between_channel_counts():
    """A core trained on RGB plugs into a grey generator: same tree minus the adaptors."""
    rgb = gen.init_generator(jax.random.key(0), (8, 8, 3), gen.GeneratorConfig(**TINY))
    grey = gen.init_generator(jax.random.key(0), (8, 8, 1),
                              gen.GeneratorConfig(**TINY, image_channels=1))
    core = {k: v for k, v in grey.items() if not k.startswith("adaptor")}
    assert jax.tree.structure(core) == jax.tree.structure(rgb)


def test_with_image_channels_keeps_the_core_and_adds_fresh_adaptors():
    """An RGB ω for grey images: its trained core, the replicate/average adaptors; back to
    RGB drops them. A fresh RGB ω becomes exactly the fresh grey ω of the same key."""
    rgb_cfg, grey_cfg = gen.GeneratorConfig(**TINY), gen.GeneratorConfig(**TINY, image_channels=1)
    rgb = perturbed(gen.init_generator(jax.random.key(0), (8, 8, 3), rgb_cfg), jax.random.key(1))
    grey = gen.with_image_channels(rgb, (8, 8, 1), grey_cfg)
    core = {k: v for k, v in grey.items() if not k.startswith("adaptor")}
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), core, rgb))
    np.testing.assert_array_equal(grey["adaptor_in"]["kernel"].reshape(1, 3), np.ones((1, 3)))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    assert gen.apply_generator(grey, x, 1, grey_cfg).shape == (2, 8, 8, 1)
    back = gen.with_image_channels(grey, (8, 8, 3), rgb_cfg)
    assert jax.tree.structure(back) == jax.tree.structure(rgb)
    fresh = gen.with_image_channels(gen.init_generator(jax.random.key(5), (8, 8, 3), rgb_cfg),
                                    (8, 8, 1), grey_cfg)
    direct = gen.init_generator(jax.random.key(5), (8, 8, 1), grey_cfg)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), fresh, direct))


def test_bad_inputs():
    cfg = gen.GeneratorConfig(**TINY, image_channels=3)
    params = gen.init_generator(jax.random.key(0), (8, 8, 3), cfg)
    with pytest.raises(ValueError, match="channels"):
        gen.apply_generator(params, jnp.zeros((2, 8, 8, 1)), 10, cfg)
    with pytest.raises(ValueError, match="4-D NHWC"):
        gen.apply_generator(params, jnp.zeros((8, 8, 3)), 10, cfg)
    with pytest.raises(ValueError, match="ipc must be positive"):
        gen.generate(params, jnp.zeros((2, 8, 8, 3)), 0, cfg)
    with pytest.raises(ValueError, match="norm"):
        gen.GeneratorConfig(norm="batch")
    with pytest.raises(ValueError, match="even"):
        gen.GeneratorConfig(embed_dim=7)
    with pytest.raises(ValueError, match="image_shape"):
        gen.init_generator(jax.random.key(0), (8, 8), cfg)


def test_fast_conv_path_same_params_outputs_and_gradients():
    """The generator's 3x3 convs use mgdd_jax.conv: identical init (checkpoints load), same
    output and parameter gradients as stock flax convs, and the same Eq. 1 loss and gradient."""
    from mgdd_jax import conv, krr, nets, objective

    cfg = gen.GeneratorConfig(width=8, embed_dim=8, embed_channels=2, image_channels=1)
    feature = nets.ConvNetConfig(width=8, depth=3, norm="instance", num_classes=4)
    x_s = jax.random.normal(jax.random.key(1), (12, 13, 11, 1))
    x_t = jax.random.normal(jax.random.key(2), (20, 13, 11, 1))
    y_s = krr.centred_onehot(jnp.arange(12) % 4, 4)
    y_t = krr.centred_onehot(jnp.arange(20) % 4, 4)
    out = {}
    for impl in ("lax", "chunked"):
        with conv.implementation(impl):
            params = gen.init_generator(jax.random.key(0), (13, 11, 1), cfg)
            p = perturbed(params, jax.random.key(3), 0.05)
            y = gen.apply_generator(p, x_s, 3, cfg)
            loss, grads = jax.jit(jax.value_and_grad(functools.partial(
                objective.generator_krr_loss, gen_config=cfg, feature=feature, reg=1e-3)))(
                p, x_s, y_s, x_t, y_t, jnp.float32(3.0), jax.random.key(4))
            out[impl] = (params, y, loss, grads)
    (p0, y0, l0, g0), (p1, y1, l1, g1) = out["lax"], out["chunked"]
    assert jax.tree.structure(p0) == jax.tree.structure(p1)
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l1, l0, rtol=1e-4)
    for path, a in jax.tree_util.tree_leaves_with_path(g1):
        b = functools.reduce(lambda t, k: t[k.key], path, g0)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()),
                                   err_msg=jax.tree_util.keystr(path))


def test_fields_added_later_match_their_absence_in_stored_configs():
    """A checkpoint or result written before a field existed equals a config holding the
    field's "as before" value (checkpoint.ADDED_FIELDS), and differs from any other value."""
    from mgdd_jax import checkpoint

    stored = {"generator": {"width": 4}, "feature": {"depth": 3}}
    same = {"generator": {"width": 4, "size_embedding": True},
            "feature": {"depth": 3, "arch": "convnet"}}
    assert checkpoint.config_differences(stored, same) == []
    other = {"generator": {"width": 4, "size_embedding": False}, "feature": {"depth": 3}}
    assert checkpoint.config_differences(stored, other) == [
        ("generator.size_embedding", "<missing>", False)]
    assert checkpoint.config_differences({"generator": {"width": 8}},
                                         {"generator": {"width": 4}}) == [
        ("generator.width", 8, 4)]
