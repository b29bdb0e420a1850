"""Synthetic labels for a target dataset: Eq. 3 with one fixed random network θ (Alg. 2 l. 1-4).

:func:`fit_label_model` draws θ once and solves ``W_t`` from the whole training set (primal
form, chunked, so memory does not grow with the training set). Labels of any initialisation
are then one matrix product, ``Y_s* = f_θ(X_s) W_t`` (:func:`synthetic_labels`), which is what
lets multi-initialisation draw a fresh initial set every step and ``generate`` label a new IPC
without re-solving.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import numpy as np

from mgdd_jax import krr, nets, objective

LABEL_MODES: tuple[str, ...] = ("auto", "analytic", "onehot")


@flax.struct.dataclass
class LabelModel:
    """The fixed θ of Eq. 3 and the target KRR weights ``W_t`` solved with it.

    Attributes:
      theta: ConvNet variables of the fixed random network θ.
      weights: ``W_t``, ``(p, C)``.
      num_train: number of training images the weights were solved from.
    """

    theta: Any
    weights: jax.Array
    num_train: int = flax.struct.field(pytree_node=False, default=0)


def fit_label_model(
    key: chex.PRNGKey,
    x_train: np.ndarray,
    y_train: np.ndarray,
    num_classes: int,
    feature: nets.ConvNetConfig,
    *,
    reg: float = krr.DEFAULT_REG,
    chunk_size: int = 1024,
) -> LabelModel:
    """Draw θ and solve ``W_t`` on every training image (Alg. 2 line 1, primal form, chunked).

    Args:
      key: PRNG key for θ.
      x_train: all training images ``(N, H, W, C)`` (host array).
      y_train: their integer labels ``(N,)``.
      num_classes: ``C``.
      feature: architecture of θ.
      reg: relative ridge of the solve.
      chunk_size: rows per feature chunk.
    """
    if x_train.ndim != 4:
        raise ValueError(f"x_train must be NHWC, got shape {x_train.shape}")
    theta = nets.init_feature_params(key, x_train.shape[1:], feature)
    y = np.asarray(krr.centred_onehot(np.asarray(y_train), num_classes))
    stats = krr.accumulate_primal_stats(
        lambda x: nets.conv_features(theta, x, feature), x_train, y, chunk_size=chunk_size
    )
    weights = krr.solve_weights_from_stats(stats, reg)
    if not bool(np.all(np.isfinite(np.asarray(weights)))):
        raise FloatingPointError(
            "the Eq. 3 label solve produced non-finite weights; raise reg "
            f"(now {reg}) or check the images for extreme values."
        )
    return LabelModel(theta=theta, weights=weights, num_train=int(x_train.shape[0]))


def synthetic_labels(
    model: LabelModel, x_s: chex.Array, feature: nets.ConvNetConfig
) -> jax.Array:
    """Eq. 3: ``Y_s* = f_θ(X_s) W_t`` for initial synthetic images ``x_s``."""
    return objective.eq3_labels(model.theta, model.weights, x_s, feature)


def resolve_label_mode(mode: str, ipc: float) -> str:
    """``"auto"`` → one-hot at IPC 1 (paper's default, App. B), analytic otherwise."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    if mode == "auto":
        return "onehot" if ipc <= 1 else "analytic"
    return mode


def initial_labels(
    model: LabelModel,
    x_s: chex.Array,
    y_s: chex.Array,
    num_classes: int,
    feature: nets.ConvNetConfig,
    mode: str,
    ipc: float,
) -> jax.Array:
    """Labels for an initial set: Eq. 3 or centred one-hot, by :func:`resolve_label_mode`."""
    if resolve_label_mode(mode, ipc) == "onehot":
        return krr.centred_onehot(y_s, num_classes)
    return synthetic_labels(model, x_s, feature)
