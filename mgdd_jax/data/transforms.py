"""Pure array transforms shared by fitting and applying preprocessing.

Everything here is host-side NumPy: preprocessing happens once when a dataset
is loaded, so there is no benefit in tracing it, and NumPy gives us float64
where numerical care matters (moments, the ZCA eigendecomposition).
"""

from __future__ import annotations

import numpy as np

# Rows per block for the chunked passes below; bounds temporary memory to a
# few hundred MB even for 3072-dimensional (CIFAR-sized) images.
CHUNK_ROWS = 4096


def channel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of NHWC images.

    Two chunked passes with float64 accumulators, so a float32 input of any
    size never gets a full float64 copy.

    Args:
      x: ``(N, H, W, C)`` float array.

    Returns:
      ``(mean, std)``, each ``(C,)`` float64.
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty NHWC array, got shape {x.shape}")
    n_pixels = x.shape[0] * x.shape[1] * x.shape[2]
    total = np.zeros(x.shape[-1], np.float64)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        total += x[start : start + CHUNK_ROWS].sum(axis=(0, 1, 2), dtype=np.float64)
    mean = total / n_pixels
    sq = np.zeros(x.shape[-1], np.float64)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        dev = x[start : start + CHUNK_ROWS].astype(np.float64) - mean
        sq += np.einsum("nhwc,nhwc->c", dev, dev)
    return mean, np.sqrt(sq / n_pixels)


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per channel (last axis), as float32."""
    mean32 = np.asarray(mean, np.float32)
    std32 = np.asarray(std, np.float32)
    return ((np.asarray(x, np.float32) - mean32) / std32).astype(np.float32, copy=False)


def unstandardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Inverse of :func:`standardise`, as float32."""
    mean32 = np.asarray(mean, np.float32)
    std32 = np.asarray(std, np.float32)
    return (np.asarray(x, np.float32) * std32 + mean32).astype(np.float32, copy=False)


def flat_matmul(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Multiplies every flattened image by ``matrix``: ``x.reshape(n, d) @ matrix``.

    Done in float32, in row blocks, and reshaped back to ``x.shape``.

    Args:
      x: ``(N, ...)`` images with ``prod(x.shape[1:]) == d``.
      matrix: ``(d, d)``.

    Returns:
      float32 array with the shape of ``x``.
    """
    d = int(np.prod(x.shape[1:]))
    if matrix.shape != (d, d):
        raise ValueError(
            f"the whitening matrix is {matrix.shape} but the images have "
            f"d = H*W*C = {d} features (image shape {x.shape[1:]}); the matrix was "
            "fitted on images of a different size"
        )
    flat = np.asarray(x, np.float32).reshape(x.shape[0], d)
    m32 = np.asarray(matrix, np.float32)
    out = np.empty_like(flat)
    for start in range(0, flat.shape[0], CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = flat[start : start + CHUNK_ROWS] @ m32
    return out.reshape(x.shape)


def zca_matrix(x_std: np.ndarray, zca_reg: float) -> np.ndarray:
    """Fits a ZCA whitening matrix on standardised images.

    With ``X`` the flattened images, centred per feature, ``cov = X^T X / n``,
    ``cov = U diag(s) U^T`` (``eigh``), and ``reg = zca_reg * trace(cov) / d``,
    returns ``W = U diag(1 / sqrt(s + reg)) U^T`` (symmetric), so that the
    whitened data ``x_flat @ W`` has covariance ``U diag(s / (s + reg)) U^T``.
    All computations in float64.

    Args:
      x_std: ``(N, H, W, C)`` standardised train images.
      zca_reg: relative regulariser strength, > 0.

    Returns:
      ``(d, d)`` float64 whitening matrix, ``d = H * W * C``.
    """
    n = x_std.shape[0]
    d = int(np.prod(x_std.shape[1:]))
    flat = x_std.reshape(n, d)
    mean = np.zeros(d, np.float64)
    for start in range(0, n, CHUNK_ROWS):
        mean += flat[start : start + CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mean /= n
    cov = np.zeros((d, d), np.float64)
    for start in range(0, n, CHUNK_ROWS):
        block = flat[start : start + CHUNK_ROWS].astype(np.float64) - mean
        cov += block.T @ block
    cov /= n
    eigvals, eigvecs = np.linalg.eigh(cov)
    eigvals = np.clip(eigvals, 0.0, None)  # round-off can make tiny ones negative
    reg = zca_reg * np.trace(cov) / d
    return (eigvecs * (1.0 / np.sqrt(eigvals + reg))) @ eigvecs.T
