"""The down-sampled parameterisation of synthetic sets ("DS", MGDD Tab. 6).

A set stored at ``1/f`` of the resolution costs ``1/f²`` of the storage of a full image, so a
budget of ``k`` images per class holds ``k·f²`` down-sampled images per class. They are stored
as ``f×f`` block means (:func:`downsample`) and trained on after bilinear up-sampling
(:func:`upsample`); adaptation optimises the generator through the same round trip
(:func:`roundtrip`, in :func:`mgdd_jax.objective.generator_loss`), so what it learns is what
is stored. Saved sets carry ``{"ds_factor": f}`` in their metadata and :func:`decode` turns a
stored set back into training images.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np


def check_factor(factor: int, image_shape: tuple[int, ...] | None = None) -> int:
    """``factor`` as an int >= 1 that divides the image height and width (when given)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"ds_factor must be an integer >= 1 (1: full resolution), got "
                         f"{factor!r}")
    if image_shape is not None and factor > 1:
        h, w = image_shape[0], image_shape[1]
        if h % factor or w % factor:
            raise ValueError(f"ds_factor={factor} must divide the image size {h}x{w}; resize "
                             "the data (--config.image_size) or pick another factor")
    return int(factor)


def downsample(x: chex.Array, factor: int) -> jax.Array:
    """``(n, H, W, C)`` -> ``(n, H/f, W/f, C)`` block means (the stored images)."""
    chex.assert_rank(x, 4)
    if factor == 1:
        return jnp.asarray(x)
    n, h, w, c = x.shape
    return jnp.asarray(x).reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample(x: chex.Array, factor: int) -> jax.Array:
    """``(n, h, w, C)`` -> ``(n, h·f, w·f, C)`` bilinear, half-pixel centres, edges clamped
    (the images a network is trained on)."""
    chex.assert_rank(x, 4)
    if factor == 1:
        return jnp.asarray(x)
    n, h, w, c = x.shape
    return jax.image.resize(jnp.asarray(x), (n, h * factor, w * factor, c), "bilinear")


def roundtrip(x: chex.Array, factor: int) -> jax.Array:
    """What training sees of a generated set stored at ``1/factor``: up(down(x))."""
    return upsample(downsample(x, factor), factor)


def decode(images: Any, metadata: dict[str, Any]) -> np.ndarray:
    """Training images of a saved set: up-sampled when its metadata says ``ds_factor > 1``."""
    factor = check_factor(int(metadata.get("ds_factor", 1)))
    return np.asarray(upsample(np.asarray(images, np.float32), factor))
