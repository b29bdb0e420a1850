"""Input checks for raw dataset arrays and loader options.

Every check raises :class:`ValueError` with a message that says what is wrong
and what to do about it, before any expensive work (resizing, ZCA) starts.
"""

from __future__ import annotations

import numbers

import numpy as np


def check_zca_reg(zca_reg: float) -> float:
    """Returns ``zca_reg`` as a float after checking it is finite and > 0."""
    if isinstance(zca_reg, bool) or not isinstance(zca_reg, numbers.Real):
        raise ValueError(f"zca_reg must be a number > 0 (default 0.1), got {zca_reg!r}")
    value = float(zca_reg)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(
            f"zca_reg must be > 0 (it is added, relative to the mean eigenvalue, to every "
            f"eigenvalue before inversion; 0.1 is the usual choice), got {zca_reg!r}"
        )
    return value


def check_image_size(image_size: int | None) -> int | None:
    """Returns ``image_size`` (or None) after checking it is an integer >= 1."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ValueError(f"image_size must be an integer >= 1 or None, got {image_size!r}")
    if image_size < 1:
        raise ValueError(
            f"image_size must be >= 1 (side of the square output images in pixels), "
            f"or None to keep the native size; got {image_size}"
        )
    return int(image_size)


def check_num_classes(num_classes: int, class_names: tuple[str, ...], where: str) -> None:
    """Checks the class count is a positive integer matching the class names."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"{where}: num_classes must be an integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"{where}: num_classes must be >= 1, got {num_classes}")
    if len(class_names) != num_classes:
        raise ValueError(
            f"{where}: {len(class_names)} class names given for {num_classes} classes; "
            "give exactly one name per class"
        )


def check_labels(y: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    """Checks integer labels in ``[0, num_classes)``; returns them as int32.

    Args:
      y: labels, shape ``(N,)``.
      num_classes: number of classes.
      what: name used in messages, e.g. ``"y_train of 'npz:/a.npz'"``.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class ids, got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        hint = ""
        if np.issubdtype(y.dtype, np.floating):
            hint = "; if they are whole numbers, convert them with y.astype(np.int64)"
        elif y.ndim == 1 and y.dtype.kind in "US":
            hint = "; map class names to ids 0..num_classes-1 first"
        raise ValueError(f"{what} must have an integer dtype, got {y.dtype}{hint}")
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise ValueError(
                f"{what} contains negative class id {lo}; labels must be in "
                f"[0, {num_classes}) (remap them to 0..{num_classes - 1})"
            )
        if hi >= num_classes:
            raise ValueError(
                f"{what} contains class id {hi} but there are only {num_classes} classes; "
                f"labels must be in [0, {num_classes}) (remap them, or declare more classes)"
            )
    return y.astype(np.int32)


# Fewer rows than this is not an image: it is a channel axis, or flattened pixels.
MIN_IMAGE_HEIGHT = 4
_CHANNELS_FIRST_HINT = "np.transpose(x, (0, 2, 3, 1))"


def check_image_layout(shape: tuple[int, ...], what: str) -> None:
    """Refuses image arrays whose shape is not plausibly ``(N, H, W)`` or ``(N, H, W, C)``.

    Catches channels-first data before it is misread as channels-last: an
    ``(N, C, H, W)`` array such as ``(N, 1, 28, 28)`` would otherwise become 28
    channels of height 1. Refused: rank 4 with more than 4 channels (last axis)
    while axis 1 has 1, 3 or 4 entries; and images less than
    :data:`MIN_IMAGE_HEIGHT` pixels high. Other ranks are left to
    :func:`images_to_unit`, which reports them.

    Args:
      shape: the array's shape.
      what: name used in messages, e.g. ``"x_train of /data/a.npz"``.

    Raises:
      ValueError: naming the shape seen and the transpose (or reshape) that fixes it.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        return
    if len(shape) == 4 and shape[3] > 4 and shape[1] in (1, 3, 4):
        n, c, h, w = shape
        raise ValueError(
            f"{what} has shape {shape}, which looks channels-first (N, C, H, W) = "
            f"({n}, {c}, {h}, {w}): read as channels-last it would be {w}-channel images of "
            f"height {c}; images must be (N, H, W, C) with C <= 4, so transpose them with "
            f"{_CHANNELS_FIRST_HINT} (giving shape {(n, h, w, c)})"
        )
    if shape[1] < MIN_IMAGE_HEIGHT:
        layout = "(N, H, W, C)" if len(shape) == 4 else "(N, H, W)"
        raise ValueError(
            f"{what} has shape {shape}, read as {layout} images of height {shape[1]} pixels; "
            f"images must be at least {MIN_IMAGE_HEIGHT} pixels high: if the array is "
            f"channels-first (N, C, H, W), transpose it with {_CHANNELS_FIRST_HINT}; if the "
            "pixels are flattened, reshape it to (N, H, W) or (N, H, W, C)"
        )


def images_to_unit(x: np.ndarray, what: str) -> np.ndarray:
    """Checks raw images and converts them to float32 NHWC in [0, 1].

    Accepts uint8 (0..255, divided by 255) or floating images already in [0, 1];
    ``(N, H, W)`` grayscale gets a channel axis.

    Args:
      x: ``(N, H, W)`` or ``(N, H, W, C)`` array.
      what: name used in messages.

    Returns:
      ``(N, H, W, C)`` float32 array in [0, 1].
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{what} must have rank 3 (N, H, W grayscale) or 4 (N, H, W, C), "
            f"got rank {x.ndim} with shape {x.shape}"
        )
    if x.ndim == 3:
        x = x[..., None]
    if any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"{what} has an empty image dimension: shape {x.shape}")
    if x.dtype == np.uint8:
        unit = x.astype(np.float32)
        unit /= np.float32(255.0)  # in place: no second full-size temporary
        return unit
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{what} must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}; "
            "convert 0..255 integers with x.astype(np.uint8)"
        )
    if x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            n_nan = int(np.isnan(x).sum())
            n_inf = int(np.isinf(x).sum())
            raise ValueError(
                f"{what} contains {n_nan} NaN and {n_inf} infinite pixel values; "
                "fix or drop those images first"
            )
        if lo < 0.0 or hi > 1.0:
            hint = (
                "it looks like 0..255 data: divide by 255 (or pass it as uint8)"
                if hi > 1.0 and lo >= 0.0
                else "rescale it, e.g. (x - x.min()) / (x.max() - x.min())"
            )
            raise ValueError(
                f"{what} has float pixels in [{lo:g}, {hi:g}] but floats must lie in [0, 1]; {hint}"
            )
    return x.astype(np.float32, copy=False)


def check_split_arrays(x: np.ndarray, y: np.ndarray, what: str) -> None:
    """Checks a split is non-empty and its images and labels have equal length."""
    x_len = np.shape(x)[0] if np.ndim(x) else 0
    y_len = np.shape(y)[0] if np.ndim(y) else 0
    if x_len != y_len:
        raise ValueError(
            f"{what}: {x_len} images but {y_len} labels; x and y must have the same length"
        )
    if x_len == 0:
        raise ValueError(f"{what} is empty (0 examples); every split needs at least one")
