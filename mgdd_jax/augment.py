"""Image augmentations for training an evaluation network on a synthetic set.

Pure JAX functions of ``(key, images)``: batched ``(N, H, W, C)`` float images in, the same
shape and dtype out, jit-able, deterministic for a given key, with an independent key per
sample (``jax.random.split(key, N)`` and ``vmap``).

The composite :func:`make_augment` follows the evaluation augmentation of FRePo (Zhou et al.,
2022; ``lib/dataset/augmax/export.py::get_aug_by_name`` and ``script/eval.py`` in
github.com/yongchaoz/FRePo): a *strategy* such as ``"flip_color_crop_rotate_translate_cutout"``
names a set of operations; at every training step ONE of them, drawn uniformly, is applied to
the whole batch, each sample with its own random parameters. The operations and their
strengths (FRePo's values, re-implemented here from their description, not copied):

* ``flip``: horizontal flip with probability 0.5.
* ``color``: brightness ``+U(-0.25, 0.25)``, then contrast (scale about the image mean) and
  saturation (scale about the per-pixel channel mean), each by a factor log-uniform in
  ``[e^-0.25, e^0.25]``. Strengths are in the units of the (standardised / ZCA) input.
* ``crop``: random-sized crop resized back to ``H x W``: zoom log-uniform in ``[0.8, 1.25]``
  and a uniformly drawn centre offset; bilinear sampling, edge pixels repeated outside.
* ``rotate``: rotation by ``U(-15, 15)`` degrees about the centre; bilinear, edge mode.
* ``translate``: shift by ``U(-H/8, H/8)`` rows and ``U(-W/8, W/8)`` columns (sub-pixel);
  bilinear, edge mode.
* ``cutout``: one ``H//4 x W//4`` hole, placed uniformly inside the image, set to 0.

Each geometric operation is a random draw of its parameters (``crop_params``,
``rotate_params``, ``translate_params``) followed by a deterministic ``apply_crop``,
``apply_rotate`` or ``apply_translate``, all on one affine bilinear resampler whose edge rule is
``scipy.ndimage``'s ``mode="nearest"`` (tested against ``scipy.ndimage.affine_transform``).

Flips: FRePo drops ``flip`` for MNIST and Fashion-MNIST (``use_flip=False``); we keep that rule
and extend it to other digit / character sets, where a mirrored sample is a different (or no)
class. Which datasets flip is the ``flip`` column of the one per-dataset table,
:data:`mgdd_jax.data.settings.DATASET_SETTINGS`; :func:`mgdd_jax.evaluation.get_protocol`
applies it with :func:`without_flip`. The choice lives in the evaluation protocol's ``augment``
string, so it is recorded with every result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

AugmentFn = Callable[[chex.PRNGKey, jax.Array], jax.Array]

OPERATIONS: tuple[str, ...] = ("flip", "color", "crop", "rotate", "translate", "cutout")
FREPO_STRATEGY = "flip_color_crop_rotate_translate_cutout"
FREPO_STRATEGY_NO_FLIP = "color_crop_rotate_translate_cutout"
NO_AUGMENT = "none"

# FRePo's strengths (get_aug_by_name).
FLIP_PROB = 0.5
BRIGHTNESS = 0.25
CONTRAST = 0.25  # log-range of the contrast factor
SATURATION = 0.25  # log-range of the saturation factor
ZOOM_RANGE = (0.8, 1.25)
MAX_DEGREES = 15.0
TRANSLATE_RATIO = 0.125
CUTOUT_FRACTION = 4  # hole side = size // 4


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Operation names of an ``"_"``-joined strategy; ``""`` or ``"none"`` gives ``()``."""
    if not isinstance(strategy, str):
        raise TypeError(f"augmentation strategy must be a string, got {strategy!r}")
    if strategy in ("", NO_AUGMENT):
        return ()
    ops = tuple(strategy.split("_"))
    unknown = [op for op in ops if op not in OPERATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {unknown} in {strategy!r}; choose from {OPERATIONS} joined "
            f"by '_' (e.g. {FREPO_STRATEGY!r}), or {NO_AUGMENT!r}."
        )
    if len(set(ops)) != len(ops):
        raise ValueError(f"augmentation strategy {strategy!r} names an operation twice")
    return ops


def without_flip(strategy: str) -> str:
    """``strategy`` without its ``flip`` operation (``"none"`` when nothing is left)."""
    ops = tuple(op for op in parse_strategy(strategy) if op != "flip")
    return "_".join(ops) if ops else NO_AUGMENT


# ---------------------------------------------------------------------------------------------
# Per-image operations: (key, image (H, W, C)) -> image.
# ---------------------------------------------------------------------------------------------


def _log_uniform(key: chex.PRNGKey, log_range: float) -> jax.Array:
    return jnp.exp(jax.random.uniform(key, (), minval=-log_range, maxval=log_range))


def _bilinear(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Sample ``image`` at fractional pixel coordinates; outside points take the edge value."""
    h, w = image.shape[0], image.shape[1]
    r0 = jnp.floor(rows)
    c0 = jnp.floor(cols)
    wr = (rows - r0)[..., None]
    wc = (cols - c0)[..., None]
    r0 = r0.astype(jnp.int32)
    c0 = c0.astype(jnp.int32)

    def at(r, c):
        return image[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]

    top = (1 - wc) * at(r0, c0) + wc * at(r0, c0 + 1)
    bottom = (1 - wc) * at(r0 + 1, c0) + wc * at(r0 + 1, c0 + 1)
    return ((1 - wr) * top + wr * bottom).astype(image.dtype)


def _affine(image: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    """Output pixel ``u`` (centred coordinates) reads input ``matrix @ u + offset`` (centred)."""
    h, w = image.shape[0], image.shape[1]
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2], jnp.float32)
    grid = jnp.stack(
        jnp.meshgrid(
            jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
        ),
        axis=-1,
    )  # (H, W, 2) as (row, col)
    src = (grid - centre) @ matrix.T + offset + centre
    return _bilinear(image, src[..., 0], src[..., 1])


def flip_image(key: chex.PRNGKey, image: jax.Array, p: float = FLIP_PROB) -> jax.Array:
    """Horizontal (width-axis) flip with probability ``p``."""
    return jnp.where(jax.random.bernoulli(key, p), image[:, ::-1, :], image)


def color_image(
    key: chex.PRNGKey,
    image: jax.Array,
    brightness: float = BRIGHTNESS,
    contrast: float = CONTRAST,
    saturation: float = SATURATION,
) -> jax.Array:
    """Brightness shift, then contrast and saturation scaling (FRePo's normalised colour jitter)."""
    kb, kc, ks = jax.random.split(key, 3)
    x = image + jax.random.uniform(kb, (), minval=-brightness, maxval=brightness)
    mean = jnp.mean(x)
    x = (x - mean) * _log_uniform(kc, contrast) + mean
    grey = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - grey) * _log_uniform(ks, saturation) + grey
    return x.astype(image.dtype)


def crop_params(
    key: chex.PRNGKey, shape: tuple[int, ...], zoom_range: tuple[float, float] = ZOOM_RANGE
) -> tuple[jax.Array, jax.Array]:
    """Random parameters of :func:`apply_crop` for an image of ``shape`` ``(H, W, ...)``.

    Returns ``(zoom, centre)``: ``zoom`` log-uniform in ``zoom_range`` and a window centre
    offset drawn uniformly such that a window smaller than the image (``zoom > 1``) stays
    inside it: ``|centre| <= |size - size / zoom| / 2`` per axis.
    """
    h, w = shape[0], shape[1]
    kz, kr, kc = jax.random.split(key, 3)
    lo, hi = math.log(zoom_range[0]), math.log(zoom_range[1])
    zoom = jnp.exp(jax.random.uniform(kz, (), minval=lo, maxval=hi))
    lim_r = jnp.abs(h * zoom - h) / 2
    lim_c = jnp.abs(w * zoom - w) / 2
    shift = jnp.stack(
        [
            jax.random.uniform(kr, (), minval=-1.0, maxval=1.0) * lim_r,
            jax.random.uniform(kc, (), minval=-1.0, maxval=1.0) * lim_c,
        ]
    )
    return zoom, shift / zoom


def apply_crop(image: jax.Array, zoom: jax.Array, centre: jax.Array) -> jax.Array:
    """The ``H/zoom x W/zoom`` window centred ``centre`` (row, col) pixels off the image centre,
    resized bilinearly to ``H x W`` (edge pixels repeated outside the image).

    Output pixel ``u`` reads input ``c + centre + (u - c) / zoom``, ``c = ((H-1)/2, (W-1)/2)``.
    """
    return _affine(image, jnp.eye(2) / zoom, jnp.asarray(centre, jnp.float32))


def crop_image(
    key: chex.PRNGKey, image: jax.Array, zoom_range: tuple[float, float] = ZOOM_RANGE
) -> jax.Array:
    """Random-sized crop resized to the input size: log-uniform zoom, uniform centre offset."""
    return apply_crop(image, *crop_params(key, image.shape, zoom_range))


def rotate_params(key: chex.PRNGKey, max_degrees: float = MAX_DEGREES) -> jax.Array:
    """A rotation angle in degrees, ``U(-max_degrees, max_degrees)``."""
    return jax.random.uniform(key, (), minval=-max_degrees, maxval=max_degrees)


def apply_rotate(image: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotation by ``degrees`` about the image centre, bilinear, edge pixels repeated outside.

    The convention of ``scipy.ndimage.rotate(image, degrees, reshape=False)``: positive angles
    turn the content counter-clockwise as displayed (row 0 at the top).
    """
    theta = jnp.deg2rad(degrees)
    c, s = jnp.cos(theta), jnp.sin(theta)
    return _affine(image, jnp.array([[c, s], [-s, c]]), jnp.zeros(2))


def rotate_image(
    key: chex.PRNGKey, image: jax.Array, max_degrees: float = MAX_DEGREES
) -> jax.Array:
    """Rotation by an angle drawn from ``U(-max_degrees, max_degrees)`` about the centre."""
    return apply_rotate(image, rotate_params(key, max_degrees))


def translate_params(
    key: chex.PRNGKey, shape: tuple[int, ...], ratio: float = TRANSLATE_RATIO
) -> jax.Array:
    """A ``(rows, cols)`` shift, each ``U(-ratio * size, ratio * size)`` (sub-pixel)."""
    h, w = shape[0], shape[1]
    limits = jnp.array([h * ratio, w * ratio], jnp.float32)
    return -(jax.random.uniform(key, (2,), minval=-1.0, maxval=1.0) * limits)


def apply_translate(image: jax.Array, shift: jax.Array) -> jax.Array:
    """Move the content by ``shift`` (rows, cols) pixels, bilinear, edge pixels repeated.

    The convention of ``scipy.ndimage.shift``: output pixel ``u`` reads input ``u - shift``.
    """
    return _affine(image, jnp.eye(2), -jnp.asarray(shift, jnp.float32))


def translate_image(
    key: chex.PRNGKey, image: jax.Array, ratio: float = TRANSLATE_RATIO
) -> jax.Array:
    """Sub-pixel shift by up to ``ratio`` of the height / width in each direction."""
    return apply_translate(image, translate_params(key, image.shape, ratio))


def cutout_image(
    key: chex.PRNGKey, image: jax.Array, fraction: int = CUTOUT_FRACTION, fill: float = 0.0
) -> jax.Array:
    """Set one ``H//fraction x W//fraction`` square, placed uniformly inside, to ``fill``."""
    h, w = image.shape[0], image.shape[1]
    hh, hw = h // fraction, w // fraction
    if hh == 0 or hw == 0:
        return image
    kr, kc = jax.random.split(key)
    r = jax.random.randint(kr, (), 0, h - hh + 1)
    c = jax.random.randint(kc, (), 0, w - hw + 1)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    hole = (rows >= r) & (rows < r + hh) & (cols >= c) & (cols < c + hw)
    return jnp.where(hole[..., None], jnp.asarray(fill, image.dtype), image)


_PER_IMAGE: dict[str, Callable[[chex.PRNGKey, jax.Array], jax.Array]] = {
    "flip": flip_image,
    "color": color_image,
    "crop": crop_image,
    "rotate": rotate_image,
    "translate": translate_image,
    "cutout": cutout_image,
}


# ---------------------------------------------------------------------------------------------
# Batched operations: (key, images (N, H, W, C)) -> images, one key per sample.
# ---------------------------------------------------------------------------------------------


def per_sample(op: Callable[[chex.PRNGKey, jax.Array], jax.Array]) -> AugmentFn:
    """Lift a per-image op to a batch: ``split(key, N)`` and ``vmap``."""

    def batched(key: chex.PRNGKey, images: jax.Array) -> jax.Array:
        chex.assert_rank(images, 4)
        keys = jax.random.split(key, images.shape[0])
        return jax.vmap(op)(keys, images)

    batched.__name__ = f"batched_{getattr(op, '__name__', 'op')}"
    batched.__doc__ = f"Batched {getattr(op, '__name__', 'op')}, one key per sample."
    return batched


random_flip = per_sample(flip_image)
color_jitter = per_sample(color_image)
random_crop = per_sample(crop_image)
random_rotate = per_sample(rotate_image)
random_translate = per_sample(translate_image)
cutout = per_sample(cutout_image)

BATCHED: dict[str, AugmentFn] = {
    "flip": random_flip,
    "color": color_jitter,
    "crop": random_crop,
    "rotate": random_rotate,
    "translate": random_translate,
    "cutout": cutout,
}


def identity(key: chex.PRNGKey, images: jax.Array) -> jax.Array:
    """No augmentation."""
    del key
    chex.assert_rank(images, 4)
    return images


def make_augment(strategy: str) -> AugmentFn:
    """FRePo's evaluation augmentation: one op of ``strategy`` per batch, per-sample parameters.

    Args:
      strategy: ``"_"``-joined names from :data:`OPERATIONS`, or ``"none"`` / ``""``.

    Returns:
      ``fn(key, images) -> images``, pure and jit-able. With one operation it is that
      operation; with several, ``lax.switch`` on a uniformly drawn index (only the chosen
      branch runs). With none it returns the images unchanged.
    """
    ops = parse_strategy(strategy)
    if not ops:
        return identity
    branches = [BATCHED[op] for op in ops]
    if len(branches) == 1:
        return branches[0]

    def augment(key: chex.PRNGKey, images: jax.Array) -> jax.Array:
        chex.assert_rank(images, 4)
        choice_key, op_key = jax.random.split(key)
        index = jax.random.randint(choice_key, (), 0, len(branches))
        return jax.lax.switch(index, branches, op_key, images)

    augment.__name__ = f"augment_{'_'.join(ops)}"
    return augment
