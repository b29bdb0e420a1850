"""Fitting preprocessing on a train split: resizing, standardisation, ZCA + cache.

ZCA matrices are expensive to fit for large images (a ``d x d`` covariance and
its eigendecomposition), so they are cached on disk, keyed by a hash of the
dataset name, the exact standardised train array and ``zca_reg``. The cache
lives in ``cache_dir``, else ``$MGDD_JAX_CACHE``, else ``~/.cache/mgdd_jax``;
files are written atomically, and an unusable cache only logs a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mgdd_jax.data import transforms
from mgdd_jax.data.dataset import Preprocessing
from mgdd_jax.outputs import atomic_path

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "MGDD_JAX_CACHE"
_CACHE_FORMAT = "mgdd_jax-zca-v1"
_RESIZE_CHUNK = 2048


def resize_images(x01: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear resize of [0, 1] NHWC images to ``image_size x image_size``.

    Uses :func:`jax.image.resize` (antialiased when downsampling), in chunks,
    and clips to [0, 1] against round-off.

    Args:
      x01: ``(N, H, W, C)`` float images in [0, 1].
      image_size: output side length, >= 1.

    Returns:
      ``(N, image_size, image_size, C)`` float32 numpy array.
    """
    n, h, w, c = x01.shape
    if (h, w) == (image_size, image_size):
        return np.asarray(x01, np.float32)
    out = np.empty((n, image_size, image_size, c), np.float32)
    for start in range(0, n, _RESIZE_CHUNK):
        chunk = jnp.asarray(x01[start : start + _RESIZE_CHUNK], jnp.float32)
        shape = (chunk.shape[0], image_size, image_size, c)
        out[start : start + _RESIZE_CHUNK] = np.asarray(
            jax.image.resize(chunk, shape, method="bilinear", antialias=True)
        )
    return np.clip(out, 0.0, 1.0, out=out)


def fit_standardisation(x01_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of [0, 1]-scale train images (float64 accumulation).

    Raises:
      ValueError: if a channel is constant over the whole train set (std 0).

    Returns:
      ``(mean, std)``, each ``(C,)`` float32.
    """
    mean, std = transforms.channel_moments(x01_train)
    constant = [int(c) for c in np.flatnonzero(std <= 1e-12)]
    if constant:
        values = ", ".join(f"channel {c} = {mean[c]:.6g}" for c in constant)
        raise ValueError(
            f"channel(s) {constant} of the train images are constant over the whole train "
            f"set ({values}), so they cannot be standardised (std 0); drop those channels "
            "(e.g. x[..., keep]) or check that the images were decoded correctly"
        )
    return mean.astype(np.float32), std.astype(np.float32)


def fit_zca(x_std: np.ndarray, zca_reg: float) -> np.ndarray:
    """ZCA whitening matrix (float32) of standardised train images.

    See :func:`mgdd_jax.data.transforms.zca_matrix` for the definition; fitted
    in float64 and returned as float32.
    """
    return transforms.zca_matrix(x_std, zca_reg).astype(np.float32)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$MGDD_JAX_CACHE``, else ``~/.cache/mgdd_jax``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/mgdd_jax").expanduser()


def zca_cache_key(name: str, x_std: np.ndarray, zca_reg: float) -> str:
    """Hex digest identifying a ZCA fit: dataset name, train array and ``zca_reg``."""
    x = np.ascontiguousarray(x_std)
    h = hashlib.blake2b(digest_size=20)
    for part in (_CACHE_FORMAT, name, str(x.shape), x.dtype.str, repr(float(zca_reg))):
        h.update(part.encode())
        h.update(b"\0")
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def zca_cache_path(
    name: str, x_std: np.ndarray, zca_reg: float, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Where the ZCA matrix for these inputs is (or would be) cached."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:48] or "dataset"
    key = zca_cache_key(name, x_std, zca_reg)
    return resolve_cache_dir(cache_dir) / "zca" / f"{safe}-{key}.npy"


def _read_cached(path: Path, d: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        logger.warning("ignoring unreadable ZCA cache file %s (%s); refitting", path, e)
        return None
    if matrix.shape != (d, d) or matrix.dtype != np.float32 or not np.all(np.isfinite(matrix)):
        logger.warning("ignoring invalid ZCA cache file %s; refitting", path)
        return None
    return matrix


def _write_atomically(path: Path, matrix: np.ndarray) -> None:
    """Writes ``matrix`` to ``path`` as ``.npy`` with :func:`mgdd_jax.outputs.atomic_path`."""
    with atomic_path(os.fspath(path), ".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, matrix)


def cached_fit_zca(
    name: str,
    x_std: np.ndarray,
    zca_reg: float,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """:func:`fit_zca` through the on-disk cache.

    A cache hit returns the stored matrix without refitting. If the cache
    directory cannot be created or written, a warning is logged and the
    freshly fitted matrix is returned anyway.
    """
    d = int(np.prod(x_std.shape[1:]))
    path = zca_cache_path(name, x_std, zca_reg, cache_dir)
    cached = _read_cached(path, d)
    if cached is not None:
        logger.info("ZCA cache hit: %s", path)
        return cached
    matrix = fit_zca(x_std, zca_reg)
    try:
        _write_atomically(path, matrix)
        logger.info("ZCA matrix cached at %s", path)
    except OSError as e:
        logger.warning(
            "could not write the ZCA cache file %s (%s); continuing without caching. Pass a "
            "writable cache_dir or set %s.", path, e, CACHE_ENV_VAR,
        )
    return matrix


def preprocess_splits(
    name: str,
    x01_train: np.ndarray,
    x01_test: np.ndarray,
    *,
    zca: bool = False,
    zca_reg: float = 0.1,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Preprocessing, np.ndarray, np.ndarray]:
    """Fits :class:`Preprocessing` on the train split and applies it to both splits.

    Args:
      name: dataset name (part of the ZCA cache key).
      x01_train: ``(N, H, W, C)`` float32 train images in [0, 1].
      x01_test: ``(M, H, W, C)`` float32 test images in [0, 1].
      zca: whether to fit and apply ZCA whitening after standardising.
      zca_reg: relative ZCA regulariser (recorded even without ZCA).
      cache_dir: ZCA cache directory (see :func:`resolve_cache_dir`).

    Returns:
      ``(preprocessing, x_train, x_test)`` with float32 processed images.
    """
    mean, std = fit_standardisation(x01_train)
    preprocessing = Preprocessing(mean=mean, std=std, zca=None, zca_reg=zca_reg)
    x_train = preprocessing.standardise(x01_train)
    x_test = preprocessing.standardise(x01_test)
    if zca:
        matrix = cached_fit_zca(name, x_train, zca_reg, cache_dir)
        preprocessing = Preprocessing(mean=mean, std=std, zca=matrix, zca_reg=zca_reg)
        x_train = transforms.flat_matmul(x_train, matrix)
        x_test = transforms.flat_matmul(x_test, matrix)
    return preprocessing, x_train, x_test
