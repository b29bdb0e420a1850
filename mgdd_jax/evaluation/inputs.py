"""Input checks of the evaluation: a ValueError with a hint, before any training.

The synthetic set (:func:`check_syn`: soft ``(n, C)`` labels are kept, ``(n,)`` class ids
become centred one-hot rows) and the test split (:func:`check_images`,
:func:`check_test_labels`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mgdd_jax import krr


def check_images(x: Any, what: str) -> np.ndarray:
    """``x`` as a NumPy array: 4-D NHWC, non-empty, floating point, finite (``what`` names it)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"{what} must be a 4-D NHWC array (n, H, W, C), got shape {shape}; add a channel "
            "axis with x[..., None] for grey-scale images."
        )
    if shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(shape)}).")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{what} must be floating point, got {x.dtype}; apply the same preprocessing "
            "(scaling / standardisation / ZCA) to synthetic and test images."
        )
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{what} contains {bad} non-finite (NaN/inf) values.")
    return x


def check_syn_labels(y: Any, n: int, num_classes: int | None) -> tuple[jax.Array, int]:
    """Soft ``(n, C)`` float labels (kept) or ``(n,)`` class ids (-> centred one-hot)."""
    shape = getattr(y, "shape", None)
    if shape is None or len(shape) not in (1, 2):
        raise ValueError(f"y_syn must be (n, C) soft labels or (n,) class ids, got shape {shape}.")
    if shape[0] != n:
        raise ValueError(f"x_syn has {n} images but y_syn has {shape[0]} labels.")
    y = np.asarray(y)
    if y.ndim == 2:
        if num_classes is not None and num_classes != y.shape[1]:
            raise ValueError(f"num_classes={num_classes} but y_syn has {y.shape[1]} columns.")
        if not np.all(np.isfinite(y)):
            raise ValueError("y_syn contains non-finite (NaN/inf) values.")
        return jnp.asarray(y, jnp.float32), int(y.shape[1])
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"1-D y_syn must be integer class ids, got {y.dtype}; soft labels must be (n, C)."
        )
    c = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"y_syn class ids must be in [0, {c}), got [{y.min()}, {y.max()}].")
    return krr.centred_onehot(jnp.asarray(y, jnp.int32), c), c


def check_test_labels(y: Any, n: int, num_classes: int) -> np.ndarray:
    """Test class ids ``(n,)``; one-hot / soft ``(n, C)`` rows are reduced by argmax."""
    shape = getattr(y, "shape", None)
    if shape is None or len(shape) not in (1, 2):
        raise ValueError(f"y_test must be (n,) class ids or (n, C) rows, got shape {shape}.")
    if shape[0] != n:
        raise ValueError(f"x_test has {n} images but y_test has {shape[0]} labels.")
    y = np.asarray(y)
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(
                f"y_test has {y.shape[1]} columns but there are {num_classes} classes."
            )
        return np.argmax(y, axis=1)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"1-D y_test must be integer class ids, got {y.dtype}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"y_test class ids must be in [0, {num_classes}), got [{y.min()}, {y.max()}]; "
            "the network has as many outputs as y_syn has classes."
        )
    return y


def check_syn(
    x_syn: Any, y_syn: Any, num_classes: int | None
) -> tuple[np.ndarray, jax.Array, int]:
    """The checked synthetic set: images, ``(n, C)`` float targets, number of classes."""
    x = check_images(x_syn, "x_syn")
    y, c = check_syn_labels(y_syn, x.shape[0], num_classes)
    return x, y, c

