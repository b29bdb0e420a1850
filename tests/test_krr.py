"""mgdd_jax.krr against an independent float64 NumPy reference (Eq. 1, Eq. 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax import krr

jax.config.update("jax_enable_x64", False)


# ---------------------------------------------------------------- NumPy reference (float64)
def np_centred_onehot(labels, c):
    y = np.zeros((len(labels), c))
    y[np.arange(len(labels)), labels] = 1.0
    return y - 1.0 / c


def np_labels_dual(fs, ft, yt, reg):
    fs, ft, yt = (np.asarray(a, np.float64) for a in (fs, ft, yt))
    k = ft @ ft.T
    lam = reg * np.trace(k) / ft.shape[0]
    return fs @ ft.T @ np.linalg.solve(k + lam * np.eye(len(k)), yt)


def np_labels_primal(fs, ft, yt, reg):
    fs, ft, yt = (np.asarray(a, np.float64) for a in (fs, ft, yt))
    g = ft.T @ ft
    lam = reg * np.trace(g) / ft.shape[0]
    return fs @ np.linalg.solve(g + lam * np.eye(len(g)), ft.T @ yt)


def np_predict(fs, ys, fq, reg):
    fs, ys, fq = (np.asarray(a, np.float64) for a in (fs, ys, fq))
    k = fs @ fs.T
    lam = reg * np.trace(k) / fs.shape[0]
    return fq @ fs.T @ np.linalg.solve(k + lam * np.eye(len(k)), ys)


def np_loss(fs, ys, ft, yt, reg):
    pred = np_predict(fs, ys, ft, reg)
    return 0.5 * np.mean(np.sum((pred - np.asarray(yt, np.float64)) ** 2, axis=1))


def relu_features(rng, n, p, d=16):
    """Correlated, non-negative rows, like ReLU conv features (not i.i.d. Gaussian)."""
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, p)) / np.sqrt(d)
    return np.maximum(x @ w + 0.3, 0.0).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------- labels, Eq. 3
@pytest.mark.parametrize("n_t,p", [(24, 40), (60, 20)])  # dual regime, primal regime
@pytest.mark.parametrize("reg", [1e-3, krr.DEFAULT_REG])
def test_solve_labels_matches_numpy(rng, n_t, p, reg):
    ft = relu_features(rng, n_t, p)
    fs = relu_features(rng, 7, p)
    yt = np_centred_onehot(rng.integers(0, 4, n_t), 4).astype(np.float32)
    ref = np_labels_dual(fs, ft, yt, reg)
    got = jax.jit(krr.solve_labels, static_argnames="form")(fs, ft, yt, reg)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("n_t,p", [(24, 40), (60, 20), (30, 30)])
def test_dual_and_primal_forms_agree(rng, n_t, p):
    ft = relu_features(rng, n_t, p)
    fs = relu_features(rng, 9, p)
    yt = np_centred_onehot(rng.integers(0, 3, n_t), 3).astype(np.float32)
    # Same ridge in both forms: the push-through identity makes them one matrix.
    np.testing.assert_allclose(
        np_labels_dual(fs, ft, yt, 1e-2), np_labels_primal(fs, ft, yt, 1e-2), rtol=1e-9, atol=1e-12
    )
    dual = krr.solve_labels(fs, ft, yt, 1e-2, form="dual")
    primal = krr.solve_labels(fs, ft, yt, 1e-2, form="primal")
    np.testing.assert_allclose(dual, primal, rtol=2e-3, atol=2e-4)


def test_auto_form_picks_smaller_system(rng, monkeypatch):
    calls = []
    real = krr._ridge_solve

    def spy(gram, rhs, lam):
        calls.append(gram.shape[0])
        return real(gram, rhs, lam)

    monkeypatch.setattr(krr, "_ridge_solve", spy)
    yt = np_centred_onehot(rng.integers(0, 3, 10), 3).astype(np.float32)
    krr.solve_labels(relu_features(rng, 2, 50), relu_features(rng, 10, 50), yt)
    yt2 = np_centred_onehot(rng.integers(0, 3, 50), 3).astype(np.float32)
    krr.solve_labels(relu_features(rng, 2, 10), relu_features(rng, 50, 10), yt2)
    assert calls == [10, 10]  # n_t x n_t when n_t < p, p x p when n_t >= p


def test_chunked_stats_equal_full_solve(rng):
    p, n = 12, 37
    w = jnp.asarray(rng.normal(size=(5 * 5 * 2, p)).astype(np.float32))

    def feature_fn(x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ w)

    x = rng.normal(size=(n, 5, 5, 2)).astype(np.float32)
    yt = np_centred_onehot(rng.integers(0, 3, n), 3).astype(np.float32)
    stats = krr.accumulate_primal_stats(feature_fn, x, yt, chunk_size=8)  # 4 full + 1 partial
    assert float(stats.count) == n
    ft = np.asarray(feature_fn(x))
    np.testing.assert_allclose(stats.gram, ft.T @ ft, rtol=1e-4, atol=1e-3)
    xs = rng.normal(size=(4, 5, 5, 2)).astype(np.float32)
    fs = np.asarray(feature_fn(xs))
    got = krr.solve_labels_from_stats(fs, stats, 1e-2)
    np.testing.assert_allclose(got, np_labels_primal(fs, ft, yt, 1e-2), rtol=2e-3, atol=2e-4)


def test_centred_onehot(rng):
    labels = rng.integers(0, 5, 11)
    y = krr.centred_onehot(labels, 5)
    np.testing.assert_allclose(y, np_centred_onehot(labels, 5), atol=1e-7)
    np.testing.assert_allclose(np.sum(y, axis=1), 0.0, atol=1e-6)
    assert y.dtype == jnp.float32


# ---------------------------------------------------------------- loss, Eq. 1
@pytest.mark.parametrize("n_s", [1, 5, 30])
def test_krr_loss_and_predict_match_numpy(rng, n_s):
    fs, ft = relu_features(rng, n_s, 25), relu_features(rng, 40, 25)
    ys = rng.normal(size=(n_s, 4)).astype(np.float32)
    yt = np_centred_onehot(rng.integers(0, 4, 40), 4).astype(np.float32)
    loss = jax.jit(krr.krr_loss)(fs, ys, ft, yt, 1e-2)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, np_loss(fs, ys, ft, yt, 1e-2), rtol=2e-3)
    pred = krr.krr_predict(fs, ys, ft, 1e-2)
    assert pred.shape == (40, 4)
    np.testing.assert_allclose(pred, np_predict(fs, ys, ft, 1e-2), rtol=3e-3, atol=3e-4)


def test_padded_support_with_mask_equals_unpadded(rng):
    fs, ft = relu_features(rng, 6, 20), relu_features(rng, 30, 20)
    ys = rng.normal(size=(6, 3)).astype(np.float32)
    yt = np_centred_onehot(rng.integers(0, 3, 30), 3).astype(np.float32)
    pad_f = np.concatenate([fs, relu_features(rng, 4, 20) * 7.0])  # junk rows, masked out
    pad_y = np.concatenate([ys, rng.normal(size=(4, 3)).astype(np.float32)])
    mask = np.array([1] * 6 + [0] * 4, np.float32)
    got = jax.jit(krr.krr_loss)(pad_f, pad_y, ft, yt, 1e-2, support_mask=mask)
    np.testing.assert_allclose(got, np_loss(fs, ys, ft, yt, 1e-2), rtol=2e-3)
    g = jax.grad(krr.krr_loss)(pad_f, pad_y, ft, yt, 1e-2, support_mask=mask)
    np.testing.assert_array_equal(np.asarray(g)[6:], 0.0)  # padding gets no gradient
    unmasked = krr.krr_loss(pad_f, pad_y, ft, yt, 1e-2)
    assert abs(float(unmasked) - float(got)) > 1e-3  # the mask is what makes them equal


def test_padded_target_with_mask_equals_unpadded(rng):
    fs, ft = relu_features(rng, 6, 20), relu_features(rng, 30, 20)
    ys = rng.normal(size=(6, 3)).astype(np.float32)
    yt = np_centred_onehot(rng.integers(0, 3, 30), 3).astype(np.float32)
    pad_ft = np.concatenate([ft[:12], relu_features(rng, 5, 20) * 7.0, ft[12:]])  # junk rows
    pad_yt = np.concatenate([yt[:12], np.ones((5, 3), np.float32), yt[12:]])
    mask = np.array([1] * 12 + [0] * 5 + [1] * 18, np.float32)
    got = jax.jit(krr.krr_loss)(fs, ys, pad_ft, pad_yt, 1e-2, target_mask=mask)
    np.testing.assert_allclose(got, np_loss(fs, ys, ft, yt, 1e-2), rtol=2e-3)
    unmasked = krr.krr_loss(fs, ys, pad_ft, pad_yt, 1e-2)
    assert abs(float(unmasked) - float(got)) > 1e-3  # the mask is what makes them equal
    with pytest.raises(AssertionError, match="shape"):  # chex's check of the mask
        krr.krr_loss(fs, ys, pad_ft, pad_yt, 1e-2, target_mask=mask[:-1])


def test_krr_loss_zero_when_support_is_target(rng):
    """Sanity of the reference itself: a tiny ridge on support == target fits exactly."""
    f = relu_features(rng, 6, 30)
    y = np_centred_onehot(np.arange(6) % 3, 3)
    assert np_loss(f, y, f, y, 1e-8) < 1e-10
    assert float(krr.krr_loss(f, y.astype(np.float32), f, y.astype(np.float32), 1e-6)) < 1e-3


def test_krr_loss_grad_matches_finite_differences(rng):
    """jax.grad of Eq. 1 w.r.t. the support features vs central differences, in float64."""
    fs, ft = relu_features(rng, 4, 9), relu_features(rng, 12, 9)
    ys = rng.normal(size=(4, 3))
    yt = np_centred_onehot(rng.integers(0, 3, 12), 3)
    with jax.enable_x64(True):
        f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        grad = np.asarray(jax.grad(krr.krr_loss)(f64(fs), f64(ys), f64(ft), f64(yt), 1e-2))
        eps = 1e-6
        num = np.zeros_like(grad)
        for i in range(fs.shape[0]):
            for j in range(fs.shape[1]):
                d = np.zeros(fs.shape)
                d[i, j] = eps
                num[i, j] = (
                    np_loss(fs + d, ys, ft, yt, 1e-2) - np_loss(fs - d, ys, ft, yt, 1e-2)
                ) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    assert np.abs(grad).max() > 1e-4  # not a trivially zero gradient


def test_vmap_over_tasks(rng):
    fs = np.stack([relu_features(rng, 5, 20) for _ in range(3)])
    ft = np.stack([relu_features(rng, 16, 20) for _ in range(3)])
    yt = np.stack([np_centred_onehot(rng.integers(0, 2, 16), 2) for _ in range(3)]).astype(
        np.float32
    )
    labels = jax.vmap(krr.solve_labels)(fs, ft, yt)
    losses = jax.jit(jax.vmap(krr.krr_loss))(fs, labels, ft, yt)
    assert labels.shape == (3, 5, 2) and losses.shape == (3,)
    for i in range(3):
        np.testing.assert_allclose(
            losses[i], np_loss(fs[i], np_labels_dual(fs[i], ft[i], yt[i], krr.DEFAULT_REG),
                               ft[i], yt[i], krr.DEFAULT_REG), rtol=5e-3)


# ---------------------------------------------------------------- float32 robustness
@pytest.fixture(scope="module")
def convnet_features():
    """Features of a random FRePo ConvNet (no norm) on smooth random images: the strongly
    correlated rows that make a duplicated support's kernel badly conditioned in float32."""
    from mgdd_jax import nets

    cfg = nets.ConvNetConfig(width=32, norm="none")
    x = jax.image.resize(jax.random.normal(jax.random.key(0), (700, 7, 7, 1)),
                         (700, 28, 28, 1), "linear")
    theta = nets.init_feature_params(jax.random.key(1), (28, 28, 1), cfg)
    return np.asarray(nets.conv_features(theta, x, cfg))


def _duplicated_support_loss(f, n_s, reg):
    rng = np.random.default_rng(1)
    fs = np.concatenate([f[: n_s // 2]] * 2)  # every synthetic image twice: K_ss singular
    ft = f[500:700]
    ys = np_centred_onehot(np.arange(n_s) % 10, 10).astype(np.float32)
    yt = np_centred_onehot(rng.integers(0, 10, 200), 10).astype(np.float32)
    loss, grad = jax.jit(jax.value_and_grad(krr.krr_loss))(fs, ys, ft, yt, reg)
    return float(loss), np.asarray(grad), np_loss(fs, ys, ft, yt, reg)


@pytest.mark.parametrize("n_s", [10, 100, 300, 500])
def test_default_reg_is_nan_free_with_duplicated_support(convnet_features, n_s):
    loss, grad, ref = _duplicated_support_loss(convnet_features, n_s, krr.DEFAULT_REG)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, ref, rtol=1e-3)


def test_frepo_reg_fails_where_default_holds(convnet_features):
    """The measurement behind DEFAULT_REG, in miniature: 1e-6 breaks down in float32."""
    loss, _, ref = _duplicated_support_loss(convnet_features, 500, 1e-6)
    assert np.isfinite(ref)  # the float64 solve is fine: a float32 conditioning failure
    assert not np.isfinite(loss) or abs(loss - ref) > 1e-2 * abs(ref)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("reg", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_reg(rng, reg):
    f = relu_features(rng, 4, 6)
    y = np_centred_onehot(np.arange(4) % 2, 2).astype(np.float32)
    with pytest.raises(ValueError, match="reg must be a finite positive"):
        krr.krr_loss(f, y, f, y, reg)
    with pytest.raises(ValueError, match="reg must be a finite positive"):
        krr.solve_labels(f, f, y, reg)


def test_empty_support(rng):
    ft = relu_features(rng, 4, 6)
    y = np_centred_onehot(np.arange(4) % 2, 2).astype(np.float32)
    with pytest.raises(ValueError, match="no rows"):
        krr.krr_loss(np.zeros((0, 6), np.float32), np.zeros((0, 2), np.float32), ft, y)
    with pytest.raises(ValueError, match="no rows"):
        krr.solve_labels(np.zeros((0, 6), np.float32), ft, y)


def test_shape_mismatches(rng):
    f = relu_features(rng, 4, 6)
    y = np_centred_onehot(np.arange(4) % 2, 2).astype(np.float32)
    with pytest.raises(ValueError, match="2-D"):
        krr.krr_loss(f[None], y, f, y)
    with pytest.raises(ValueError, match="rows"):
        krr.krr_loss(f, y[:3], f, y)
    with pytest.raises(ValueError, match="features"):
        krr.solve_labels(relu_features(rng, 4, 7), f, y)
    with pytest.raises(ValueError, match="label matrix"):
        krr.solve_labels(f, f, np.arange(4))
    with pytest.raises(ValueError, match="classes"):
        krr.krr_loss(f, y, f, np_centred_onehot(np.arange(4) % 3, 3).astype(np.float32))
    with pytest.raises(ValueError, match="floating"):
        krr.krr_loss(f.astype(np.int32), y, f, y)
    with pytest.raises(ValueError, match="form must be"):
        krr.solve_labels(f, f, y, form="cholesky")
