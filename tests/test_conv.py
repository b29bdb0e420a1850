"""mgdd_jax.conv: the custom-VJP convolution equals lax.conv_general_dilated (value and
gradients, in and out of lax.scan, under vmap and to second order) and is a drop-in for nn.Conv."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mgdd_jax import backend, conv, generator, nets

DN = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, k, padding="SAME"):
    return jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)


def fast_conv(x, k, padding="SAME"):
    return conv.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)


def _inputs(n, h, w, c_in, c_out, kh=3, kw=3, seed=0):
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, h, w, c_in))
    k = jax.random.normal(kk, (kh, kw, c_in, c_out)) / np.sqrt(kh * kw * c_in)
    g = jax.random.normal(kg, (n, h, w, c_out))
    return x, k, g


def _value_and_vjp(f, x, k, g, padding="SAME"):
    y, vjp = jax.vjp(lambda x, k: f(x, k, padding), x, k)
    return (y, *vjp(g))


def _assert_close(a, b, rtol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of about one image, so that every kernel gradient is a sum of several."""
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)


@pytest.mark.parametrize("shape", [
    (5, 7, 9, 3, 4),     # odd sizes
    (6, 8, 8, 4, 2),     # fewer output channels: the swapped kernel gradient
    (3, 7, 9, 1, 6),     # one input channel (the feature net's first layer)
    (4, 5, 6, 6, 1),     # one output channel
])
@pytest.mark.parametrize("kernel", [(3, 3), (1, 1), (5, 3)])
def test_value_and_gradients_match_lax(shape, kernel, small_chunks):
    x, k, g = _inputs(*shape, *kernel)
    want = jax.jit(lambda x, k, g: _value_and_vjp(lax_conv, x, k, g))(x, k, g)
    got = jax.jit(lambda x, k, g: _value_and_vjp(fast_conv, x, k, g))(x, k, g)
    for name, a, b in zip(("y", "dx", "dk"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        _assert_close(a, b)


@pytest.mark.parametrize("padding", ["VALID", ((2, 0), (0, 1)), "SAME"])
def test_explicit_and_valid_padding(padding, small_chunks):
    x, k, _ = _inputs(3, 7, 9, 4, 3)
    y = lax_conv(x, k, padding)
    g = jax.random.normal(jax.random.key(9), y.shape)
    want = _value_and_vjp(lax_conv, x, k, g, padding)
    got = _value_and_vjp(fast_conv, x, k, g, padding)
    for a, b in zip(got, want):
        _assert_close(a, b)


def test_default_chunking_on_a_real_sized_batch():
    """The generator's widest layer at adaptation size: several default chunks."""
    x, k, g = _inputs(40, 28, 28, 32, 32)
    assert len(conv.batch_chunks(40, 28 * 28 * 64 * 4)) > 1
    want = jax.jit(lambda x, k, g: _value_and_vjp(lax_conv, x, k, g))(x, k, g)
    got = jax.jit(lambda x, k, g: _value_and_vjp(fast_conv, x, k, g))(x, k, g)
    for a, b in zip(got, want):
        _assert_close(a, b)


def test_gradients_against_finite_differences(small_chunks):
    x, k, _ = _inputs(2, 5, 4, 2, 3)
    check_grads(lambda x, k: jnp.sum(jnp.sin(fast_conv(x, k))), (x, k), order=1,
                modes=("rev",), atol=2e-2, rtol=2e-2)
    # Second order (grad of grad, as second-order MAML takes it) against finite differences.
    check_grads(lambda x, k: jnp.sum(jnp.sin(fast_conv(x, k))), (x, k), order=2,
                modes=("rev",), atol=5e-2, rtol=5e-2)


def test_second_order_matches_lax(small_chunks):
    x, k, _ = _inputs(3, 6, 5, 3, 2)

    def outer(f):
        def inner_loss(k, x):
            return jnp.sum(jnp.tanh(f(x, k)) ** 2)

        def meta(k):
            k2 = k - 0.1 * jax.grad(inner_loss)(k, x)
            return inner_loss(k2, x * 0.5)
        return jax.grad(meta)(k)

    _assert_close(outer(fast_conv), outer(lax_conv))


def test_inside_scan_and_vmap(small_chunks):
    x, k, g = _inputs(4, 7, 9, 3, 5)

    def loss(f, k, x):
        return jnp.sum(f(x, k) * g)

    def scanned(f):
        def body(kc, _):
            return kc - 0.01 * jax.grad(lambda kk: loss(f, kk, x))(kc), None
        return jax.lax.scan(body, k, None, length=3)[0]

    _assert_close(jax.jit(lambda: scanned(fast_conv))(), jax.jit(lambda: scanned(lax_conv))())
    ks = jnp.stack([k, 2 * k])
    vm = [jax.vmap(jax.grad(lambda kk, f=f: loss(f, kk, x)))(ks) for f in (fast_conv, lax_conv)]
    _assert_close(*vm)


def test_unsupported_cases_fall_back_to_lax():
    x, k, _ = _inputs(2, 8, 8, 4, 4)
    y = conv.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=DN)
    _assert_close(y, jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=DN))
    xn = jnp.transpose(x, (0, 3, 1, 2))
    kn = jnp.transpose(k, (3, 2, 0, 1))
    y = conv.conv_general_dilated(xn, kn, (1, 1), "SAME")  # NCHW default
    _assert_close(y, jax.lax.conv_general_dilated(xn, kn, (1, 1), "SAME"))


def test_implementation_switch():
    default = "chunked" if backend.is_cpu() else "lax"
    assert conv.current_implementation() == default
    with conv.implementation("lax"):
        assert conv.current_implementation() == "lax"
        jaxpr = jax.make_jaxpr(jax.grad(lambda k: jnp.sum(fast_conv(jnp.ones((1, 4, 4, 1)), k))))(
            jnp.ones((3, 3, 1, 1)))
        assert "custom_vjp" not in str(jaxpr)
    assert conv.current_implementation() == default
    with pytest.raises(ValueError, match="implementation"), conv.implementation("eigen"):
        pass


@pytest.mark.parametrize("n,per_image", [(1, 10), (100, 200_000), (7, 1), (512, 3)])
def test_batch_chunks_cover_the_batch(n, per_image):
    chunks = conv.batch_chunks(n, per_image)
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(a < b for a, b in chunks)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(chunks))
    assert len(chunks) <= conv.MAX_CHUNKS
    sizes = [b - a for a, b in chunks]
    assert max(sizes) - min(sizes) <= 1


def test_drop_in_for_nn_conv():
    """Same parameter tree and init as nn.Conv, same output and parameter gradients."""
    x = jax.random.normal(jax.random.key(0), (3, 7, 9, 2))
    stock = nn.Conv(5, (3, 3), padding="SAME")
    fast = nn.Conv(5, (3, 3), padding="SAME", conv_general_dilated=conv.conv_general_dilated)
    p_stock = stock.init(jax.random.key(1), x)
    p_fast = fast.init(jax.random.key(1), x)
    assert jax.tree.structure(p_stock) == jax.tree.structure(p_fast)
    for a, b in zip(jax.tree.leaves(p_stock), jax.tree.leaves(p_fast)):
        np.testing.assert_array_equal(a, b)
    p = jax.tree.map(lambda a: a + 0.1, p_stock)  # non-zero bias
    _assert_close(fast.apply(p, x), stock.apply(p, x))
    g_fast = jax.grad(lambda p: jnp.sum(fast.apply(p, x) ** 2))(p)
    g_stock = jax.grad(lambda p: jnp.sum(stock.apply(p, x) ** 2))(p)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_stock)):
        _assert_close(a, b)


# ------------------------------------------------------------ which convolution, by backend
@pytest.fixture
def off_cpu(monkeypatch):
    """As on a GPU or TPU: mgdd_jax.backend.is_cpu() says no."""
    monkeypatch.setattr(backend, "is_cpu", lambda backend=None: False)


def test_default_conv_is_decided_by_the_backend(monkeypatch):
    monkeypatch.setattr(backend, "is_cpu", lambda backend=None: True)
    assert conv.current_implementation() == "chunked"
    assert conv.default_conv() is conv.conv_general_dilated
    monkeypatch.setattr(backend, "is_cpu", lambda backend=None: False)
    assert conv.current_implementation() == "lax"
    assert conv.default_conv() is jax.lax.conv_general_dilated
    for name, want in (("chunked", conv.conv_general_dilated),
                       ("lax", jax.lax.conv_general_dilated)):
        with conv.implementation(name):  # forcing wins over the backend
            assert conv.current_implementation() == name and conv.default_conv() is want


def _feature_and_generator(x):
    """Params, outputs and parameter gradients of the feature net and the generator."""
    fcfg = nets.ConvNetConfig(width=6, depth=2, norm="instance", num_classes=3)
    gcfg = generator.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
    v = nets.init_feature_params(jax.random.key(0), x.shape[1:], fcfg)
    p = generator.init_generator(jax.random.key(1), x.shape[1:], gcfg)
    p = jax.tree.map(lambda a: a + 0.05, p)  # the zero-initialised last conv takes part

    def loss(v, p):
        y = generator.apply_generator(p, x, 2, gcfg)
        return jnp.sum(jnp.sin(nets.conv_features(v, y, fcfg)))

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(v, p)
    return (v, p), value, grads, loss


def test_forced_implementations_agree_on_params_outputs_and_gradients():
    """Checkpoints load either way: same param trees, same init; same values to float
    tolerance."""
    x = jax.random.normal(jax.random.key(2), (4, 9, 7, 1))
    out = {}
    for name in conv.IMPLEMENTATIONS:
        with conv.implementation(name):
            out[name] = _feature_and_generator(x)[:3]
    (params0, value0, grads0), (params1, value1, grads1) = out["chunked"], out["lax"]
    assert jax.tree.structure(params0) == jax.tree.structure(params1)
    for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(params1)):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    _assert_close(value0, value1)
    assert jax.tree.structure(grads0) == jax.tree.structure(grads1)
    for a, b in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads1)):
        _assert_close(a, b, rtol=1e-3)


def test_off_cpu_default_is_the_stock_conv_and_allows_forward_mode(off_cpu):
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
    (v, p), _, grads, loss = _feature_and_generator(x)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(v, p))
    assert "custom_vjp" not in jaxpr
    tangents = jax.tree.map(jnp.ones_like, (v, p))
    _, dot = jax.jit(lambda primals: jax.jvp(loss, primals, tangents))((v, p))  # forward mode
    # The directional derivative equals <grad, tangent> from reverse mode.
    want = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(tangents)))
    np.testing.assert_allclose(dot, want, rtol=1e-4)


def test_forward_mode_needs_the_stock_conv():
    """The custom VJP has no forward mode (the reason it stays on the CPU)."""
    x, k, _ = _inputs(2, 5, 5, 2, 3)
    with conv.implementation("chunked"), pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda k: fast_conv(x, k), (k,), (k,))
    with conv.implementation("lax"):
        _, dy = jax.jvp(lambda k: fast_conv(x, k), (k,), (k,))
    _assert_close(dy, lax_conv(x, k))  # linear in k
