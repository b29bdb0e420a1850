"""The one Eq. 1-on-the-generator objective, shared by adaptation (Alg. 2) and meta-learning
(Alg. 1).

    X_s* = g_ω(X_s, ipc)                                  Alg. 1 l. 4, Alg. 2 l. 9
    θ*   ~ init(key)                                      Alg. 1 l. 5, Alg. 2 l. 10
    L    = Eq. 1 on (f_θ*(X_s*), Y_s) vs (f_θ*(X_t), Y_t) Alg. 1 l. 6, Alg. 2 l. 11

``Y_s`` are the synthetic labels: Eq. 3's ``f_θ(X_s) W_t`` (:func:`eq3_labels`) or centred
one-hot. A ``support_mask`` lets a padded synthetic set give exactly the unpadded loss (meta-
learning pads every size to one shape, so its step compiles once).
"""

from __future__ import annotations

from typing import Any

import chex
import jax

from mgdd_jax import krr, nets
from mgdd_jax.generator import GeneratorConfig, apply_generator


def eq3_labels(theta: Any, weights: jax.Array, x_s: chex.Array,
               feature: nets.ConvNetConfig) -> jax.Array:
    """Eq. 3: ``Y_s* = f_θ(X_s) W_t`` for initial synthetic images ``x_s`` ``(n_s, H, W, C)``.

    Args:
      theta: variables of the fixed random network θ.
      weights: ``W_t`` ``(p, K)``, solved on the real images with the same θ.
      x_s: initial synthetic images.
      feature: architecture of θ.

    Returns:
      ``(n_s, K)`` labels.
    """
    return nets.conv_features(theta, x_s, feature) @ weights


def generator_krr_loss(
    params: Any,
    x_s: jax.Array,
    y_s: jax.Array,
    x_t: jax.Array,
    y_t: jax.Array,
    ipc: jax.Array,
    theta_key: chex.PRNGKey,
    *,
    gen_config: GeneratorConfig,
    feature: nets.ConvNetConfig,
    reg: float,
    support_mask: jax.Array | None = None,
) -> jax.Array:
    """Eq. 1 of the generated set under a fresh random network θ* (Alg. 1 l. 4-6, Alg. 2 l. 9-11).

    Args:
      params: generator parameters ω'.
      x_s: initial synthetic images ``(n_s, H, W, C)``.
      y_s: their labels ``(n_s, K)`` (Eq. 3 or centred one-hot).
      x_t: real images ``(n_t, H, W, C)``.
      y_t: real labels ``(n_t, K)``, centred one-hot.
      ipc: images per class of the synthetic set (the size embedding's input), a scalar.
      theta_key: key of θ*.
      gen_config, feature, reg: generator architecture, θ* architecture and ridge (static).
      support_mask: optional ``(n_s,)`` 0/1 mask of real (unpadded) synthetic rows.

    Returns:
      Scalar loss.
    """
    x_gen = apply_generator(params, x_s, ipc, gen_config)
    theta = nets.init_feature_params(theta_key, x_s.shape[1:], feature)
    f_s = nets.conv_features(theta, x_gen, feature)
    f_t = nets.conv_features(theta, x_t, feature)
    return krr.krr_loss(f_s, y_s, f_t, y_t, reg, support_mask=support_mask)
