"""Kernel ridge regression in a neural feature space: the MGDD objective and label solve.

Everything here is a pure, jit- and vmap-able function of feature matrices. Features are
rows: ``F_t`` is ``(n_t, p)`` for the real ("target") batch, ``F_s`` is ``(n_s, p)`` for the
synthetic ("support") set. Labels are centred one-hot (``onehot - 1/C``), as in FRePo and KIP.

* :func:`solve_labels` -- Eq. 3, the closed-form synthetic labels ``Y_s* = F_s W_t``.
* :func:`krr_loss` -- Eq. 1, the error on the real batch of the KRR classifier fitted on
  the synthetic set.
* :func:`krr_predict` -- that classifier's predictions, for evaluating a synthetic set.
* :func:`primal_stats` / :func:`accumulate_primal_stats` / :func:`solve_labels_from_stats` --
  Eq. 3 over a training set too large for one matrix, by chunked ``F_tᵀF_t`` and ``F_tᵀY_t``.

Ridges are relative to the kernel's scale so that one ``reg`` works across widths:
``lam = reg * trace(K) / n``. For the label solve ``K = F_t F_tᵀ`` (``trace(F_tᵀF_t)`` is the
same number), so the dual form ``F_tᵀ(F_t F_tᵀ + lam I)⁻¹Y_t`` and the primal form
``(F_tᵀF_t + lam I)⁻¹F_tᵀY_t`` are the same matrix (push-through identity).

Reference: Liu & Wang, "MGDD: A Meta Generator for Fast Dataset Distillation", NeurIPS 2023,
Eq. 1, Eq. 3 and App. A (Alg. 2 line 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve

# Default relative ridge of Eq. 1: RFAD's 5e-3 rather than FRePo's 1e-6. On a support whose
# images all appear twice K_ss is exactly singular, and 1e-6 can make the float32 loss NaN.
DEFAULT_REG = 5e-3

Form = Literal["auto", "dual", "primal"]


def centred_onehot(labels: chex.Array, num_classes: int) -> jax.Array:
    """Centred one-hot targets ``onehot(labels) - 1/C`` (FRePo / KIP convention).

    Args:
      labels: integer class ids, shape ``(n,)``.
      num_classes: ``C``.

    Returns:
      ``(n, C)`` float32 array whose rows sum to zero.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    chex.assert_rank(labels, 1)
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) - 1.0 / num_classes


def _check_reg(reg: float) -> None:
    # `reg` is a Python number in every public call (it is a hyper-parameter). A traced value
    # cannot be checked eagerly, so it is passed through unchecked.
    if isinstance(reg, (int, float, np.floating, np.integer)):
        if not np.isfinite(reg) or reg <= 0:
            raise ValueError(
                f"reg must be a finite positive number, got {reg!r}; the ridge is "
                f"lam = reg * trace(K) / n (default {DEFAULT_REG})."
            )


def _check_features(name: str, feat: chex.Array) -> None:
    if getattr(feat, "ndim", None) != 2:
        raise ValueError(
            f"{name} must be a 2-D (rows, features) matrix, got shape {getattr(feat, 'shape', None)}; "
            "flatten the feature map first."
        )
    if feat.shape[0] == 0:
        raise ValueError(f"{name} has no rows: the set it comes from is empty.")
    if not jnp.issubdtype(feat.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {feat.dtype}.")


def _check_pair(feat_name: str, feat: chex.Array, y_name: str, y: chex.Array) -> None:
    _check_features(feat_name, feat)
    if getattr(y, "ndim", None) != 2:
        raise ValueError(
            f"{y_name} must be a 2-D (rows, classes) label matrix, got shape "
            f"{getattr(y, 'shape', None)}; use centred_onehot(labels, C) for class ids."
        )
    if y.shape[0] != feat.shape[0]:
        raise ValueError(
            f"{feat_name} has {feat.shape[0]} rows but {y_name} has {y.shape[0]}; "
            "they must describe the same samples."
        )


def _ridge(gram: jax.Array, n: int | jax.Array, reg: float) -> jax.Array:
    """``reg * trace(gram) / n`` as a scalar of the gram's dtype."""
    return jnp.asarray(reg, gram.dtype) * jnp.trace(gram) / n


def _ridge_solve(gram: jax.Array, rhs: jax.Array, lam: jax.Array) -> jax.Array:
    """Solve ``(gram + lam I) z = rhs`` by Cholesky (gram is symmetric PSD)."""
    a = gram + lam * jnp.eye(gram.shape[0], dtype=gram.dtype)
    return cho_solve(cho_factor(a, lower=True), rhs)


def target_weights(
    feat_t: chex.Array, y_t: chex.Array, reg: float = DEFAULT_REG, *, form: Form = "auto"
) -> jax.Array:
    """KRR weights of the real batch, ``W_t = F_tᵀ(F_t F_tᵀ + lam I)⁻¹Y_t`` (Alg. 2 line 1).

    The dual form solves an ``n_t × n_t`` system, the primal form ``(F_tᵀF_t + lam I)⁻¹F_tᵀY_t``
    a ``p × p`` one; with ``lam = reg * ||F_t||_F² / n_t`` in both they are equal. ``"auto"``
    takes the dual form when ``n_t < p`` and the primal form otherwise (the smaller system;
    also the stable one in float32 when ``n_t > p``).

    Args:
      feat_t: real features ``(n_t, p)``.
      y_t: real labels ``(n_t, C)``, centred one-hot.
      reg: relative ridge (> 0).
      form: ``"auto"``, ``"dual"`` or ``"primal"``.

    Returns:
      ``(p, C)`` weight matrix.
    """
    _check_pair("feat_t", feat_t, "y_t", y_t)
    _check_reg(reg)
    n_t, p = feat_t.shape
    if form == "auto":
        form = "dual" if n_t < p else "primal"
    if form == "dual":
        gram = feat_t @ feat_t.T
        alpha = _ridge_solve(gram, y_t, _ridge(gram, n_t, reg))
        return feat_t.T @ alpha
    if form == "primal":
        return solve_weights_from_stats(primal_stats(feat_t, y_t), reg)
    raise ValueError(f"form must be 'auto', 'dual' or 'primal', got {form!r}")


def solve_labels(
    feat_s: chex.Array,
    feat_t: chex.Array,
    y_t: chex.Array,
    reg: float = DEFAULT_REG,
    *,
    form: Form = "auto",
) -> jax.Array:
    """Analytic synthetic labels, Eq. 3: ``Y_s* = F_s W_t`` with ``W_t`` from the real set.

    Args:
      feat_s: synthetic features ``(n_s, p)`` under the fixed random network θ.
      feat_t: real features ``(n_t, p)`` under the same θ.
      y_t: real labels ``(n_t, C)`` (centred one-hot).
      reg: relative ridge, ``lam = reg * trace(F_t F_tᵀ) / n_t``.
      form: see :func:`target_weights`.

    Returns:
      ``(n_s, C)`` soft labels.

    References:
      MGDD Eq. 3 and App. A.
    """
    _check_features("feat_s", feat_s)
    _check_pair("feat_t", feat_t, "y_t", y_t)
    if feat_s.shape[1] != feat_t.shape[1]:
        raise ValueError(
            f"feat_s has {feat_s.shape[1]} features but feat_t has {feat_t.shape[1]}; "
            "both must come from the same network."
        )
    return feat_s @ target_weights(feat_t, y_t, reg, form=form)


class PrimalStats(NamedTuple):
    """Sufficient statistics of the real set for the primal solve of Eq. 3.

    Attributes:
      gram: ``F_tᵀF_t``, ``(p, p)``.
      cross: ``F_tᵀY_t``, ``(p, C)``.
      count: number of rows accumulated, ``n_t`` (float scalar).
    """

    gram: jax.Array
    cross: jax.Array
    count: jax.Array


def primal_stats(feat_t: chex.Array, y_t: chex.Array) -> PrimalStats:
    """``PrimalStats`` of one chunk of real features. Chunks add up: sum the fields."""
    _check_pair("feat_t", feat_t, "y_t", y_t)
    return PrimalStats(
        gram=feat_t.T @ feat_t,
        cross=feat_t.T @ y_t,
        count=jnp.asarray(feat_t.shape[0], feat_t.dtype),
    )


def accumulate_primal_stats(
    feature_fn: Callable[[jax.Array], jax.Array],
    images: np.ndarray | jax.Array,
    y_t: np.ndarray | jax.Array,
    *,
    chunk_size: int = 1024,
) -> PrimalStats:
    """``F_tᵀF_t`` and ``F_tᵀY_t`` over a whole training set, ``chunk_size`` rows at a time.

    Memory is ``O(p² + chunk_size · (d + p))`` whatever ``n_t`` is, so Eq. 3 can use every
    training image (App. A, primal form). The last, shorter chunk is zero-padded and masked so
    that ``feature_fn`` is compiled for one shape only.

    Args:
      feature_fn: maps an image batch ``(b, H, W, C)`` to features ``(b, p)``; it is jitted here.
      images: real images ``(n_t, H, W, C)`` (host or device array).
      y_t: their labels ``(n_t, C)`` (centred one-hot).
      chunk_size: rows per chunk.

    Returns:
      The accumulated :class:`PrimalStats`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("images is empty: there is nothing to solve the labels from.")
    if y_t.shape[0] != n:
        raise ValueError(f"images has {n} rows but y_t has {y_t.shape[0]}")

    @jax.jit
    def chunk_stats(x: jax.Array, y: jax.Array, mask: jax.Array) -> PrimalStats:
        f = feature_fn(x) * mask[:, None]
        return PrimalStats(f.T @ f, f.T @ (y * mask[:, None]), jnp.sum(mask))

    total = None
    for start in range(0, n, chunk_size):
        x = np.asarray(images[start : start + chunk_size])
        y = np.asarray(y_t[start : start + chunk_size], np.float32)
        b = x.shape[0]
        mask = np.ones((chunk_size,), np.float32)
        if b < chunk_size:
            mask[b:] = 0.0
            x = np.concatenate([x, np.zeros((chunk_size - b, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((chunk_size - b, y.shape[1]), y.dtype)])
        part = chunk_stats(x, y, mask)
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    return total


def solve_weights_from_stats(stats: PrimalStats, reg: float = DEFAULT_REG) -> jax.Array:
    """Primal ``W_t = (F_tᵀF_t + lam I)⁻¹F_tᵀY_t`` with ``lam = reg * trace(F_tᵀF_t) / n_t``."""
    _check_reg(reg)
    return _ridge_solve(stats.gram, stats.cross, _ridge(stats.gram, stats.count, reg))


def solve_labels_from_stats(
    feat_s: chex.Array, stats: PrimalStats, reg: float = DEFAULT_REG
) -> jax.Array:
    """Eq. 3 from accumulated statistics: ``Y_s* = F_s (F_tᵀF_t + lam I)⁻¹F_tᵀY_t``."""
    _check_features("feat_s", feat_s)
    if feat_s.shape[1] != stats.gram.shape[0]:
        raise ValueError(
            f"feat_s has {feat_s.shape[1]} features but the statistics were accumulated "
            f"for {stats.gram.shape[0]}; use the same network for both."
        )
    return feat_s @ solve_weights_from_stats(stats, reg)


def krr_predict(
    feat_s: chex.Array,
    y_s: chex.Array,
    feat_q: chex.Array,
    reg: float = DEFAULT_REG,
    *,
    support_mask: chex.Array | None = None,
) -> jax.Array:
    """Predictions of the KRR classifier fitted on the synthetic set.

    ``K_qs (K_ss + lam I)⁻¹ Y_s`` with ``K = F Fᵀ`` and ``lam = reg * trace(K_ss) / n_s``
    (the inner part of Eq. 1). Class = argmax of a row.

    Args:
      feat_s: synthetic features ``(n_s, p)``.
      y_s: synthetic labels ``(n_s, C)``.
      feat_q: query features ``(n_q, p)`` (e.g. the real batch, or test images).
      reg: relative ridge.
      support_mask: optional ``(n_s,)`` 0/1 weights marking the real rows of a padded
        support set. Masked rows are zeroed in ``F_s`` and ``Y_s``; the padded block of
        ``K_ss + lam I`` is then ``lam I`` and its coefficients are 0, so the result equals the
        unpadded one exactly, with ``n_s`` = the number of unmasked rows in the ridge. This is
        how varying synthetic-set sizes share one compiled shape.

    Returns:
      ``(n_q, C)`` predictions.
    """
    _check_pair("feat_s", feat_s, "y_s", y_s)
    _check_features("feat_q", feat_q)
    _check_reg(reg)
    if feat_q.shape[1] != feat_s.shape[1]:
        raise ValueError(
            f"feat_q has {feat_q.shape[1]} features but feat_s has {feat_s.shape[1]}; "
            "both must come from the same network."
        )
    n_s = feat_s.shape[0]
    if support_mask is not None:
        chex.assert_shape(support_mask, (n_s,))
        mask = support_mask.astype(feat_s.dtype)
        feat_s, y_s = feat_s * mask[:, None], y_s * mask[:, None]
        n_s = jnp.maximum(jnp.sum(mask), 1.0)
    k_ss = feat_s @ feat_s.T
    alpha = _ridge_solve(k_ss, y_s, _ridge(k_ss, n_s, reg))
    return (feat_q @ feat_s.T) @ alpha


def krr_loss(
    feat_s: chex.Array,
    y_s: chex.Array,
    feat_t: chex.Array,
    y_t: chex.Array,
    reg: float = DEFAULT_REG,
    *,
    support_mask: chex.Array | None = None,
    target_mask: chex.Array | None = None,
) -> jax.Array:
    """The MGDD / FRePo objective, Eq. 1.

    ``0.5 * mean_i sum_c (K_ts (K_ss + lam I)⁻¹ Y_s - Y_t)²_ic`` with ``K_ss = F_s F_sᵀ``,
    ``K_ts = F_t F_sᵀ`` and ``lam = reg * trace(K_ss) / n_s``. Differentiable in ``feat_s``
    (and through it in the synthetic images and the generator).

    Args:
      feat_s: synthetic features ``(n_s, p)`` under a random network θ*.
      y_s: synthetic labels ``(n_s, C)`` (Eq. 3 or centred one-hot).
      feat_t: real features ``(n_t, p)`` under the same θ*.
      y_t: real labels ``(n_t, C)`` (centred one-hot).
      reg: relative ridge.
      support_mask: optional ``(n_s,)`` mask of a padded support set (see
        :func:`krr_predict`); the loss equals the unpadded set's.
      target_mask: optional ``(n_t,)`` mask of padded real rows: the mean runs over the
        unmasked ones, so the loss equals the unpadded batch's.

    Returns:
      Scalar loss.

    References:
      MGDD Eq. 1; FRePo (Zhou et al., 2022).
    """
    _check_pair("feat_t", feat_t, "y_t", y_t)
    if y_t.shape[1] != y_s.shape[-1]:
        raise ValueError(f"y_s has {y_s.shape[-1]} classes but y_t has {y_t.shape[1]}")
    pred = krr_predict(feat_s, y_s, feat_t, reg, support_mask=support_mask)
    per_row = jnp.sum((pred - y_t) ** 2, axis=-1)
    if target_mask is None:
        return 0.5 * jnp.mean(per_row)
    chex.assert_shape(target_mask, (feat_t.shape[0],))
    w = target_mask.astype(per_row.dtype)
    return 0.5 * jnp.sum(w * per_row) / jnp.maximum(jnp.sum(w), 1.0)
