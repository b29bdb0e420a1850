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

Either side may also come *class-grouped* (:func:`group_by_class`): ``x`` ``(K, m, H, W, C)``,
block ``c`` holding class ``c``'s rows (masked padding where a class has fewer than ``m``). Every
objective gives the same value on both layouts; DC is what it is for: on the flat layout it
back-propagates every class's mean loss through the whole batch (K backward passes of n rows),
on the grouped one each class only through its own block (one pass of n rows in all).
The adaptation and pixel loops group both sides for DC; their samplers are class-balanced.
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
      x: images ``(n, H, W, C)``, or ``(K, m, H, W, C)`` class-grouped (:func:`group_by_class`).
      y: targets ``(n, K)`` (centred one-hot or Eq. 3 soft labels); ``(K, m, K)`` grouped.
      labels: ``(n,)`` int class ids in ``[0, K)``; DC and DM group by them (KRR ignores
        them, so None is allowed there). None when grouped: the block is the class.
      mask: optional ``(n,)`` 0/1 weights of real (unpadded) rows; ``(K, m)`` grouped.
    """

    x: jax.Array
    y: jax.Array
    labels: jax.Array | None = None
    mask: jax.Array | None = None


def is_grouped(batch: LabelledBatch) -> bool:
    """Whether ``batch`` is in the class-grouped layout (``x`` of rank 5)."""
    return batch.x.ndim == 5


def group_by_class(batch: LabelledBatch, num_classes: int,
                   per_class: int | None = None) -> LabelledBatch:
    """The flat ``batch`` in the class-grouped layout: ``x`` ``(K, m, H, W, C)`` with class
    ``c``'s rows in block ``c`` (in their order), padded with masked rows up to ``m``.

    Args:
      batch: a flat batch with class ids (and optional mask; masked rows stay masked).
      num_classes: K.
      per_class: the block size m (static); default ``ceil(n / K)``, which holds every
        class-balanced batch (:func:`mgdd_jax.data.balanced_batch_indices` gives each class
        ``n // K`` or one more).

    Returns:
      The grouped batch, ``labels`` None. A class with more than ``m`` rows cannot be placed
      (not checkable under jit): its block's images are NaN, so the objective is NaN rather than
      silently wrong.
    """
    if is_grouped(batch):
        raise ValueError("group_by_class: the batch is already class-grouped (x of rank 5)")
    if batch.labels is None:
        raise ValueError("group_by_class needs the batch's class ids (LabelledBatch.labels)")
    labels = batch.labels
    n = batch.x.shape[0]
    chex.assert_shape(labels, (n,))
    m = -(-n // num_classes) if per_class is None else int(per_class)
    if m < 1:
        raise ValueError(f"group_by_class: per_class must be >= 1, got {per_class}")
    order = jnp.argsort(labels, stable=True)
    sorted_labels = labels[order]
    counts = jnp.bincount(labels, length=num_classes)
    slot = jnp.arange(n) - (jnp.cumsum(counts) - counts)[sorted_labels]
    rows = jnp.zeros((num_classes, m), jnp.int32).at[sorted_labels, slot].set(
        order.astype(jnp.int32), mode="drop")
    dtype = batch.x.dtype
    keep = (jnp.arange(m)[None, :] < counts[:, None]).astype(dtype)  # the filled slots
    if batch.mask is not None:
        keep = keep * batch.mask.astype(dtype)[rows]
    overflow = (counts > m)[:, None, None, None, None]
    x = jnp.where(overflow, jnp.nan, batch.x[rows])
    return LabelledBatch(x, batch.y[rows], None, keep)


def flatten_groups(batch: LabelledBatch) -> LabelledBatch:
    """A grouped batch back in the flat layout, class ids from the blocks (the inverse of
    :func:`group_by_class` up to the row order and the padding, which stays masked)."""
    if not is_grouped(batch):
        return batch
    k, m = batch.x.shape[:2]
    mask = jnp.ones((k, m), batch.x.dtype) if batch.mask is None else batch.mask
    return LabelledBatch(batch.x.reshape(k * m, *batch.x.shape[2:]),
                         batch.y.reshape(k * m, -1), jnp.repeat(jnp.arange(k), m),
                         mask.reshape(k * m))


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
    syn, real = flatten_groups(syn), flatten_groups(real)
    theta = nets.init_feature_params(key, syn.x.shape[1:], feature)
    f_s = nets.conv_features(theta, syn.x, feature)
    f_t = nets.conv_features(theta, real.x, feature)
    return krr.krr_loss(f_s, syn.y, f_t, real.y, reg, support_mask=syn.mask,
                        target_mask=real.mask)


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
    syn, real = flatten_groups(syn), flatten_groups(real)
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
    unused (one signature for every objective). Either side may be class-grouped
    (:func:`group_by_class`): the same value, far cheaper (module docstring)."""
    del reg
    k = syn.y.shape[-1]
    image_shape = syn.x.shape[2:] if is_grouped(syn) else syn.x.shape[1:]
    net = dataclasses.replace(feature, num_classes=k)
    theta = nets.init_feature_params(key, image_shape, net)
    # The gradients compared are of θ*: hold it in the images' precision (float64 under x64).
    theta = jax.tree.map(lambda a: a.astype(syn.x.dtype), theta)

    def ce(params, x, labels):
        logits = nets.conv_logits({**theta, "params": params}, x, net)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def class_grads(batch, side):
        """``(present (K,), per-class mean-loss gradients with a leading K axis)``."""
        if is_grouped(batch):  # one class's block per backward pass
            chex.assert_shape(batch.x, (k, None, *image_shape))
            w = (jnp.ones(batch.x.shape[:2], batch.x.dtype) if batch.mask is None
                 else batch.mask.astype(batch.x.dtype))

            def one(args):
                x, wc, c = args
                return jax.grad(lambda p: jnp.sum(wc * ce(p, x, jnp.full(wc.shape, c)))
                                / jnp.maximum(wc.sum(), 1.0))(theta["params"])

            return w.sum(axis=1) > 0, jax.lax.map(one, (batch.x, w, jnp.arange(k)))
        # Flat: one forward for the whole batch; one backward per class (vmapped cotangents).
        w = _class_weights(batch, k, "dc", side)
        _, vjp = jax.vjp(lambda p: ce(p, batch.x, batch.labels), theta["params"])
        ct = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)  # per-class means
        return w.sum(axis=1) > 0, jax.vmap(lambda c: vjp(c)[0])(ct)

    has_s, g_s = class_grads(syn, "synthetic")
    has_t, g_t = class_grads(real, "real")
    per_class = jax.vmap(gradient_distance)(jax.lax.stop_gradient(g_t), g_s)
    return jnp.sum(jnp.where(has_s & has_t, per_class, 0.0))


Objective = Callable[..., jax.Array]

OBJECTIVES: dict[str, Objective] = {"krr": krr_objective, "dc": dc_objective, "dm": dm_objective}


# Objectives that run faster on class-grouped sides (:func:`group_by_class`).
GROUPED_OBJECTIVES: frozenset[str] = frozenset({"dc"})


def arrange_for(name: str, syn: LabelledBatch, real: LabelledBatch,
                num_classes: int) -> tuple[LabelledBatch, LabelledBatch]:
    """``(syn, real)`` in the layout objective ``name`` runs fastest on: both class-grouped for
    the ones in ``GROUPED_OBJECTIVES``, as given otherwise. For class-balanced sides (each class
    ``n // K`` or ``n // K + 1`` rows), as the adaptation and pixel loops sample; the value is
    the same either way."""
    if name not in GROUPED_OBJECTIVES:
        return syn, real
    return group_by_class(syn, num_classes), group_by_class(real, num_classes)


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
      syn: initial synthetic images with their targets ``(n_s, K)``, class ids and mask (or
        class-grouped, :func:`group_by_class`: the generator sees the rows flat).
      real: real images with centred one-hot targets ``(n_t, K)`` and class ids (or grouped).
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
    x = syn.x.reshape(-1, *syn.x.shape[-3:])  # a grouped set goes through g_ω' flat
    x_gen = parameterisation.roundtrip(apply_generator(params, x, ipc, gen_config), ds_factor)
    return fn(syn._replace(x=x_gen.reshape(syn.x.shape)), real, key, feature=feature, reg=reg)


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
