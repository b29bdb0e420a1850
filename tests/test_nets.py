"""mgdd_jax.nets: FRePo ConvNet shapes, norms, determinism, and a NumPy reference forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax import nets


@pytest.mark.parametrize("norm", nets.NORMS)
@pytest.mark.parametrize("double_width", [False, True])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (9, 11, 2)])
def test_shapes(norm, double_width, shape):
    cfg = nets.ConvNetConfig(width=4, depth=3, double_width=double_width, norm=norm, num_classes=7)
    variables = nets.init_feature_params(jax.random.key(0), shape, cfg)
    x = jax.random.normal(jax.random.key(1), (5, *shape))
    feats = jax.jit(nets.conv_features, static_argnums=2)(variables, x, cfg)
    assert feats.shape == (5, cfg.feature_dim(shape))
    assert feats.dtype == jnp.float32
    _, logits = nets.ConvNet(cfg).apply(variables, x)
    assert logits.shape == (5, 7)
    assert ("batch_stats" in variables) == (norm == "batch")


def test_widths_and_feature_dim():
    assert nets.ConvNetConfig(width=8, double_width=True).widths() == (8, 16, 32)
    assert nets.ConvNetConfig(width=8).widths() == (8, 8, 8)
    # 32 -> 16 -> 8 -> 4: p = 4*4*128 = 2048 (FRePo at 32x32); 28 -> 14 -> 7 -> 4.
    assert nets.ConvNetConfig(width=128).feature_dim((32, 32, 3)) == 2048
    assert nets.ConvNetConfig(width=128).feature_dim((28, 28, 1)) == 2048


def test_fresh_key_fresh_network():
    cfg = nets.ConvNetConfig(width=4)
    a = nets.init_feature_params(jax.random.key(0), (8, 8, 1), cfg)
    b = nets.init_feature_params(jax.random.key(0), (8, 8, 1), cfg)
    c = nets.init_feature_params(jax.random.key(1), (8, 8, 1), cfg)
    same = jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.all(u == v)), a, b))
    assert all(same)
    diff = jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.all(u == v)), a, c))
    assert not all(diff)


def _np_conv_same(x, k, b):
    """Independent NumPy 3x3 'SAME' cross-correlation, NHWC / HWIO."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,co->nhwo", xp[:, i : i + h, j : j + w], k[i, j])
    return out + b


def _np_avgpool_same(x):
    n, h, w, c = x.shape
    ho, wo = -(-h // 2), -(-w // 2)
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("norm", ["none", "instance"])
def test_forward_matches_numpy(norm):
    cfg = nets.ConvNetConfig(width=3, depth=2, norm=norm, num_classes=2)
    shape = (6, 5, 2)
    variables = nets.init_feature_params(jax.random.key(3), shape, cfg)
    x = np.asarray(jax.random.normal(jax.random.key(4), (2, *shape)), np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    h = x
    for i in range(cfg.depth):
        h = _np_conv_same(h, p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"])
        if norm == "instance":
            mu = h.mean(axis=(1, 2), keepdims=True)
            var = h.var(axis=(1, 2), keepdims=True)
            nrm = p[f"InstanceNorm_{i}"]
            h = (h - mu) / np.sqrt(var + 1e-6) * nrm["scale"] + nrm["bias"]
        h = _np_avgpool_same(np.maximum(h, 0))
    ref = h.reshape(2, -1)
    got = nets.conv_features(variables, x.astype(np.float32), cfg)
    # Odd sizes: border windows average only the pixels they cover (no padded zeros).
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_batch_norm_uses_batch_statistics():
    cfg = nets.ConvNetConfig(width=4, norm="batch")
    variables = nets.init_feature_params(jax.random.key(0), (8, 8, 1), cfg)
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
    full = nets.conv_features(variables, x, cfg)
    half = nets.conv_features(variables, x[:3], cfg)
    assert not np.allclose(full[:3], half)  # batch statistics, by design
    inst = nets.ConvNetConfig(width=4, norm="instance")
    v2 = nets.init_feature_params(jax.random.key(0), (8, 8, 1), inst)
    np.testing.assert_allclose(
        nets.conv_features(v2, x, inst)[:3], nets.conv_features(v2, x[:3], inst), rtol=1e-5
    )


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="norm must be one of"):
        nets.ConvNetConfig(norm="group")
    with pytest.raises(ValueError, match="width, depth"):
        nets.ConvNetConfig(width=0)
    with pytest.raises(ValueError, match="input_shape must be"):
        nets.init_feature_params(jax.random.key(0), (8, 8), nets.ConvNetConfig())
    cfg = nets.ConvNetConfig(width=2)
    v = nets.init_feature_params(jax.random.key(0), (8, 8, 1), cfg)
    with pytest.raises(ValueError, match="4-D NHWC"):
        nets.conv_features(v, jnp.zeros((8, 8, 1)), cfg)


def test_fast_conv_path_same_params_features_and_input_gradient():
    """nets uses mgdd_jax.conv (fast kernel gradient): same init and f_θ(x) and ∂/∂x as stock."""
    from mgdd_jax import conv

    cfg = nets.ConvNetConfig(width=6, depth=3, norm="instance", num_classes=3)
    shape = (9, 7, 2)
    x = jax.random.normal(jax.random.key(1), (5, *shape))
    out = {}
    for impl in ("lax", "chunked"):
        with conv.implementation(impl):
            v = nets.init_feature_params(jax.random.key(0), shape, cfg)
            f, vjp = jax.vjp(lambda x, v=v: nets.conv_features(v, x, cfg), x)
            out[impl] = (v, f, vjp(jnp.sin(f))[0])
    (v0, f0, g0), (v1, f1, g1) = out["lax"], out["chunked"]
    assert jax.tree.structure(v0) == jax.tree.structure(v1)
    for a, b in zip(jax.tree.leaves(v0), jax.tree.leaves(v1)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(f1, f0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-5 * float(jnp.abs(g0).max()))


# ------------------------------------------------------------- Tab. 4's unseen architectures
def _conv(k, c_in, c_out, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def _expected_params(arch, shape, classes):
    """Parameter counts from the layer lists (FRePo's variants, module docstring), no norm."""
    c = shape[-1]
    if arch == "alexnet":
        convs = (_conv(5, c, 128) + _conv(5, 128, 192) + _conv(3, 192, 256)
                 + _conv(3, 256, 192) + _conv(3, 192, 192))
        p = 4 * 4 * 192  # (28 + 4 pad) or 32 -> 16 -> 8 -> 4
    elif arch == "vgg11":
        convs = _conv(3, c, 128) + 7 * _conv(3, 128, 128)
        p = 128  # five pools: 32 -> 1
    else:  # resnet18: bias-free convs, projection shortcuts where the shape changes
        convs = _conv(3, c, 64, False) + 4 * _conv(3, 64, 64, False)
        for a, b in ((64, 128), (128, 256), (256, 512)):
            convs += _conv(3, a, b, False) + 3 * _conv(3, b, b, False) + _conv(1, a, b, False)
        p = 4 * 4 * 512  # 32 -> 32 -> 16 -> 8 -> 4 (28 -> 28 -> 14 -> 7 -> 4)
    return convs + p * classes + classes, p


@pytest.mark.parametrize("arch", ["alexnet", "vgg11", "resnet18"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_unseen_architectures_shapes_and_parameter_counts(arch, shape):
    cfg = nets.ConvNetConfig(arch=arch, norm="none", num_classes=10)
    variables = jax.eval_shape(lambda: nets.init_feature_params(jax.random.key(0), shape, cfg))
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))
    want, p = _expected_params(arch, shape, 10)
    assert count == want
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    feats, logits = jax.eval_shape(lambda v, x: nets.build_model(cfg).apply(v, x), variables, x)
    assert feats.shape == (3, p) and logits.shape == (3, 10)
    assert cfg.feature_dim(shape) == p


def test_resnet18_against_the_published_cifar_count():
    """kuangliu's CIFAR ResNet-18 (batch norm, global pooling, 512 -> 10 head) has 11,173,962
    parameters; ours differs only in the head, fed the flattened 4×4×512 map (FRePo's)."""
    cfg = nets.ConvNetConfig(arch="resnet18", norm="batch", num_classes=10)
    v = jax.eval_shape(lambda: nets.init_feature_params(jax.random.key(0), (32, 32, 3), cfg))
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v["params"]))
    assert count == 11_173_962 - (512 * 10 + 10) + (4 * 4 * 512 * 10 + 10)


def test_unseen_architecture_forward_and_norms():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    for arch, norm in (("vgg11", "batch"), ("resnet18", "instance"), ("alexnet", "none")):
        cfg = nets.ConvNetConfig(arch=arch, norm=norm, num_classes=3)
        v = nets.init_feature_params(jax.random.key(0), (8, 8, 1), cfg)
        logits = nets.conv_logits(v, x, cfg)
        assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
        assert ("batch_stats" in v) == (norm == "batch")
    with pytest.raises(ValueError, match="alexnet has no normalisation"):
        nets.ConvNetConfig(arch="alexnet", norm="instance")
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        nets.ConvNetConfig(arch="resnet50")
