"""The generator's objective, shared by adaptation (Alg. 2) and meta-learning (Alg. 1), and
the registry of set-matching objectives it can use (Tab. 3).

    X_s* = g_ω(X_s, ipc)                                  Alg. 1 l. 4, Alg. 2 l. 9
    θ*   ~ init(key)                                      Alg. 1 l. 5, Alg. 2 l. 10
    L    = objective((X_s*, Y_s), (X_t, Y_t), θ*)         Alg. 1 l. 6, Alg. 2 l. 11

``OBJECTIVES`` maps a name to a function of one signature, ``fn(syn, real, key, *, feature,
reg) -> scalar`` (``syn``, ``real``: :class:`LabelledBatch`; ``key`` draws the random network):

* ``krr`` — Eq. 1, kernel ridge regression in the random network's feature space (MGDD, FRePo).
* ``dm`` — distribution matching (Zhao & Bilen, WACV 2023): per class, the squared distance
  between the mean embeddings ``f_θ*`` of real and synthetic images, summed over classes.
* ``dc`` — gradient matching (Zhao et al., ICLR 2021): per class, the gradients of the
  cross-entropy of the random network θ* (ConvNet + linear head) on real and on synthetic
  images, compared layer by layer with DC's ``distance_wb``: for every weight tensor, one row per
  output unit, ``Σ_rows 1 − cos``; one-dimensional tensors (biases, norm scales) count 0, as in
  DC's code; summed over layers and classes.

DC and DM match per class and use the synthetic class ids (``syn.labels``), not the targets
``Y_s`` (Eq. 3 labels only matter to KRR). Both use one random network per step, as their
papers' random-network setting; deviations from the original codes: no differentiable siamese
augmentation (DSA) and, for DC, no inner training of the network between matches (our loop
draws a fresh θ* every step, as MGDD's does for KRR).

``Y_s`` are the synthetic labels: Eq. 3's ``f_θ(X_s) W_t`` (:func:`eq3_labels`) or centred
one-hot. A mask (``LabelledBatch.mask``) lets a padded synthetic set give exactly the unpadded
loss (meta-learning pads every size to one shape, so its step compiles once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from mgdd_jax import krr, nets, parameterisation
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


class LabelledBatch(NamedTuple):
    """A set of images with targets and class ids (the two sides of every objective).

    Attributes:
      x: images ``(n, H, W, C)``.
      y: targets ``(n, K)`` (centred one-hot or Eq. 3 soft labels).
      labels: ``(n,)`` int class ids in ``[0, K)``; DC and DM group by them (KRR ignores
        them, so None is allowed there).
      mask: optional ``(n,)`` 0/1 weights of real (unpadded) rows.
    """

    x: jax.Array
    y: jax.Array
    labels: jax.Array | None = None
    mask: jax.Array | None = None


def _need_labels(batch: LabelledBatch, name: str, side: str) -> jax.Array:
    if batch.labels is None:
        raise ValueError(f"objective {name!r} matches per class and needs the {side} class ids "
                         "(LabelledBatch.labels); pass the int labels of the images")
    chex.assert_shape(batch.labels, (batch.x.shape[0],))
    return batch.labels


def _class_weights(batch: LabelledBatch, num_classes: int, name: str, side: str) -> jax.Array:
    """``(K, n)`` 0/1 membership of each row in each class (masked rows 0)."""
    labels = _need_labels(batch, name, side)
    dtype = batch.x.dtype  # float64 under x64 (finite-difference tests), else float32
    w = jax.nn.one_hot(labels, num_classes, dtype=dtype).T
    if batch.mask is not None:
        w = w * batch.mask.astype(dtype)[None, :]
    return w


def krr_objective(syn: LabelledBatch, real: LabelledBatch, key: chex.PRNGKey, *,
                  feature: nets.ConvNetConfig, reg: float) -> jax.Array:
    """Eq. 1: KRR of the real targets on the synthetic features under θ* = init(key)."""
    theta = nets.init_feature_params(key, syn.x.shape[1:], feature)
    f_s = nets.conv_features(theta, syn.x, feature)
    f_t = nets.conv_features(theta, real.x, feature)
    return krr.krr_loss(f_s, syn.y, f_t, real.y, reg, support_mask=syn.mask)


def class_mean_distance(f_s: jax.Array, w_s: jax.Array, f_t: jax.Array,
                        w_t: jax.Array) -> jax.Array:
    """DM's loss on given embeddings: ``Σ_c ‖mean_{i∈c} f_t,i − mean_{j∈c} f_s,j‖²`` over the
    classes present on both sides (``w_s``, ``w_t``: ``(K, n)`` class memberships)."""
    n_s, n_t = w_s.sum(axis=1), w_t.sum(axis=1)
    mu_s = (w_s @ f_s) / jnp.maximum(n_s, 1.0)[:, None]
    mu_t = (w_t @ f_t) / jnp.maximum(n_t, 1.0)[:, None]
    present = (n_s > 0) & (n_t > 0)
    return jnp.sum(jnp.where(present, jnp.sum((mu_t - mu_s) ** 2, axis=1), 0.0))


def dm_objective(syn: LabelledBatch, real: LabelledBatch, key: chex.PRNGKey, *,
                 feature: nets.ConvNetConfig, reg: float) -> jax.Array:
    """Distribution matching (Zhao & Bilen 2023) in the embedding of θ* = init(key);
    ``reg`` is unused (one signature for every objective)."""
    del reg
    k = syn.y.shape[-1]
    w_s = _class_weights(syn, k, "dm", "synthetic")
    w_t = _class_weights(real, k, "dm", "real")
    theta = nets.init_feature_params(key, syn.x.shape[1:], feature)
    f_s = nets.conv_features(theta, syn.x, feature)
    f_t = nets.conv_features(theta, real.x, feature)
    return class_mean_distance(f_s, w_s, f_t, w_t)


def gradient_distance(g_real: Any, g_syn: Any) -> jax.Array:
    """DC's layer-wise distance (``distance_wb`` summed over layers): for every tensor with
    two or more axes, rows = output units (the last axis in Flax's layout), ``Σ_rows (1 − cos)``
    with DC's ``1e-6`` in the denominator; one-dimensional tensors count 0."""
    total = jnp.zeros((), jnp.float32)
    for gr, gs in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn), strict=True):
        if gr.ndim < 2:
            continue
        gr = jnp.moveaxis(gr, -1, 0).reshape(gr.shape[-1], -1)
        gs = jnp.moveaxis(gs, -1, 0).reshape(gs.shape[-1], -1)
        cos = jnp.sum(gr * gs, axis=-1) / (
            jnp.linalg.norm(gr, axis=-1) * jnp.linalg.norm(gs, axis=-1) + 1e-6)
        total = total + jnp.sum(1.0 - cos)
    return total


def dc_objective(syn: LabelledBatch, real: LabelledBatch, key: chex.PRNGKey, *,
                 feature: nets.ConvNetConfig, reg: float) -> jax.Array:
    """Gradient matching (Zhao et al. 2021) on θ* = init(key), a ConvNet with a K-way linear
    head: per class, ∇θ* of the mean cross-entropy of its real and of its synthetic images
    (their class ids as targets), compared by :func:`gradient_distance`; summed over the classes
    present on both sides. The real gradients are constants (DC detaches them). ``reg`` is
    unused (one signature for every objective)."""
    del reg
    k = syn.y.shape[-1]
    w_s = _class_weights(syn, k, "dc", "synthetic")
    w_t = _class_weights(real, k, "dc", "real")
    net = dataclasses.replace(feature, num_classes=k)
    theta = nets.init_feature_params(key, syn.x.shape[1:], net)
    # The gradients compared are of θ*: hold it in the images' precision (float64 under x64).
    theta = jax.tree.map(lambda a: a.astype(syn.x.dtype), theta)

    def class_grads(x, labels, w):
        # One forward for the whole batch; one backward per class (vmapped cotangents).
        def per_example_losses(params):
            logits = nets.conv_logits({**theta, "params": params}, x, net)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

        _, vjp = jax.vjp(per_example_losses, theta["params"])
        ct = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)  # per-class means
        return jax.vmap(lambda c: vjp(c)[0])(ct)

    g_s = class_grads(syn.x, syn.labels, w_s)
    g_t = jax.lax.stop_gradient(class_grads(real.x, real.labels, w_t))
    present = (w_s.sum(axis=1) > 0) & (w_t.sum(axis=1) > 0)
    per_class = jax.vmap(gradient_distance)(g_t, g_s)
    return jnp.sum(jnp.where(present, per_class, 0.0))


Objective = Callable[..., jax.Array]

OBJECTIVES: dict[str, Objective] = {"krr": krr_objective, "dc": dc_objective, "dm": dm_objective}


def get_objective(name: str) -> Objective:
    """The objective called ``name`` (``OBJECTIVES``); a clear error for an unknown one."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)} "
                         "(--config.adapt.objective)") from None


def generator_loss(
    params: Any,
    syn: LabelledBatch,
    real: LabelledBatch,
    ipc: jax.Array,
    key: chex.PRNGKey,
    *,
    gen_config: GeneratorConfig,
    feature: nets.ConvNetConfig,
    reg: float,
    objective: str = "krr",
    ds_factor: int = 1,
) -> jax.Array:
    """Alg. 1 l. 4-6 / Alg. 2 l. 9-11 with any registered objective: the generated set
    ``g_ω'(syn.x, ipc)`` (targets, class ids and mask of ``syn``) against ``real`` under a
    random network drawn from ``key``.

    Args:
      params: generator parameters ω'.
      syn: initial synthetic images with their targets ``(n_s, K)``, class ids and mask.
      real: real images with centred one-hot targets ``(n_t, K)`` and class ids.
      ipc: images per class of the synthetic set (the size embedding's input), a scalar.
      key: key of θ*.
      gen_config, feature, reg: generator architecture, θ* architecture and ridge (static).
      objective: a name in ``OBJECTIVES`` (static).
      ds_factor: the down-sampled parameterisation's factor (Tab. 6, static): the loss sees the
        generated images after the storage round trip (:func:`parameterisation.roundtrip`);
        1 = full resolution.

    Returns:
      Scalar loss.
    """
    fn = get_objective(objective)
    x_gen = apply_generator(params, syn.x, ipc, gen_config)
    x_gen = parameterisation.roundtrip(x_gen, ds_factor)
    return fn(syn._replace(x=x_gen), real, key, feature=feature, reg=reg)


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
    """Eq. 1 of the generated set under a fresh random network θ* (Alg. 1 l. 4-6, Alg. 2 l. 9-11):
    :func:`generator_loss` with ``objective="krr"`` on unlabelled arrays (meta-learning's form).

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
    return generator_loss(params, LabelledBatch(x_s, y_s, None, support_mask),
                          LabelledBatch(x_t, y_t), ipc, theta_key, gen_config=gen_config,
                          feature=feature, reg=reg, objective="krr")
