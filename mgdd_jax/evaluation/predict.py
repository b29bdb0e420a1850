"""Test accuracy of trained evaluation networks: argmax predictions against class ids.

Each test batch is padded to one shape (one compiled function serves every batch); the
predictions of all batches reach the host together, after the last batch is dispatched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mgdd_jax import nets
from mgdd_jax.evaluation import inputs


def _padded(x: np.ndarray, start: int, bs: int) -> jax.Array:
    """``x[start : start + bs]`` on the device as float32, zero-padded to ``bs`` images."""
    chunk = x[start : start + bs]
    m = chunk.shape[0]
    if m < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - m, *chunk.shape[1:]), chunk.dtype)])
    return jnp.asarray(chunk, jnp.float32)


@functools.lru_cache(maxsize=32)
def _build_predict(arch: nets.ConvNetConfig) -> Callable[[dict[str, Any], jax.Array], jax.Array]:
    model = nets.build_model(arch)

    def predict(variables, x):
        _, logits = model.apply(variables, x, train=False)
        return jnp.argmax(logits, axis=-1)

    return jax.jit(predict)


def accuracy(
    variables: dict[str, Any],
    x: chex.Array,
    y: chex.Array,
    arch: nets.ConvNetConfig,
    batch_size: int = 1000,
) -> float:
    """Fraction of ``x`` whose argmax logit equals the label.

    Args:
      variables: flax variables of ``nets.build_model(arch)``.
      x: ``(n, H, W, C)`` images.
      y: ``(n,)`` class ids, or ``(n, C)`` one-hot / soft rows (argmax).
      arch: the network's config.
      batch_size: images per forward pass; the last batch is padded to the same shape so that
        one compiled function serves every batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = inputs.check_images(x, "x")
    labels = inputs.check_test_labels(y, x.shape[0], arch.num_classes)
    predict = _build_predict(arch)
    n = x.shape[0]
    bs = min(batch_size, n)
    starts = range(0, n, bs)
    preds = [predict(variables, _padded(x, start, bs)) for start in starts]
    correct = 0
    for start, pred in zip(starts, jax.device_get(preds)):  # the one device -> host copy
        m = min(bs, n - start)
        correct += int(np.sum(pred[:m] == labels[start : start + m]))
    return correct / n


@functools.lru_cache(maxsize=32)
def _build_predict_many(
    arch: nets.ConvNetConfig, mode: str
) -> Callable[[dict[str, Any], jax.Array], jax.Array]:
    """Jitted ``(variables with a leading M axis, x (b, H, W, C)) -> predictions (M, b)``."""
    model = nets.build_model(arch)

    def predict(variables, x):
        _, logits = model.apply(variables, x, train=False)
        return jnp.argmax(logits, axis=-1)

    if mode == "vmap":
        return jax.jit(jax.vmap(predict, in_axes=(0, None)))

    def predict_unrolled(variables, x):
        count = jax.tree.leaves(variables)[0].shape[0]
        return jnp.stack(
            [predict(jax.tree.map(lambda a, i=i: a[i], variables), x) for i in range(count)]
        )

    return jax.jit(predict_unrolled)


def _accuracies(
    variables: dict[str, Any],
    x: np.ndarray,
    labels: np.ndarray,
    arch: nets.ConvNetConfig,
    batch_size: int,
    mode: str,
) -> np.ndarray:
    """:func:`accuracy` of ``M`` networks at once (``variables`` with a leading M axis):
    each test batch is sent to the device once and goes through all networks in one call."""
    predict = _build_predict_many(arch, mode)
    n = x.shape[0]
    bs = min(batch_size, n)
    starts = range(0, n, bs)
    preds = [predict(variables, _padded(x, start, bs)) for start in starts]
    correct = np.zeros(jax.tree.leaves(variables)[0].shape[0], np.int64)
    for start, pred in zip(starts, jax.device_get(preds)):  # the one device -> host copy
        m = min(bs, n - start)
        correct += np.sum(pred[:, :m] == labels[start : start + m], axis=1)
    return correct / n

