"""The in-memory dataset, the preprocessing that produced it, and the raw arrays of a source."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from mgdd_jax.data import transforms

_PREFIX = "preprocessing_"


def _set(obj: Any, name: str, value: Any) -> None:
    """Assigns a field of a frozen dataclass (used to normalise in __post_init__)."""
    object.__setattr__(obj, name, value)


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
    """Per-channel standardisation, optionally followed by ZCA whitening.

    Fitted on the train split only (see :func:`mgdd_jax.data.load_dataset`) and
    applied identically to train, test and anything later compared to them.

    Attributes:
      mean: ``(C,)`` float32 per-channel mean of the train images in [0, 1] scale.
      std: ``(C,)`` float32 per-channel standard deviation (all > 0).
      zca: ``(d, d)`` float32 symmetric whitening matrix acting on flattened
        standardised images (``d = H * W * C``), or ``None`` without ZCA.
      zca_reg: the relative ZCA regulariser; recorded even when ``zca`` is None.

    ``eq=False``: instances compare by identity (array fields have no useful
    ``==``); compare :meth:`to_arrays` outputs to test equality of contents.
    """

    mean: np.ndarray
    std: np.ndarray
    zca: np.ndarray | None
    zca_reg: float = 0.1

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if mean.ndim != 1 or mean.shape != std.shape or mean.size == 0:
            raise ValueError(
                f"Preprocessing mean and std must both have shape (C,), got "
                f"{mean.shape} and {std.shape}"
            )
        if not (np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError(f"Preprocessing std must be finite and > 0, got {std}")
        if not np.all(np.isfinite(mean)):
            raise ValueError(f"Preprocessing mean must be finite, got {mean}")
        zca_reg = float(self.zca_reg)
        if not (np.isfinite(zca_reg) and zca_reg > 0):
            raise ValueError(f"zca_reg must be a finite number > 0, got {self.zca_reg}")
        zca = self.zca
        if zca is not None:
            zca = np.asarray(zca, np.float32)
            if zca.ndim != 2 or zca.shape[0] != zca.shape[1] or zca.shape[0] % mean.size:
                raise ValueError(
                    f"Preprocessing zca must be a square (d, d) matrix with d a multiple "
                    f"of C={mean.size}, got shape {zca.shape}"
                )
        _set(self, "mean", mean)
        _set(self, "std", std)
        _set(self, "zca", zca)
        _set(self, "zca_reg", zca_reg)

    @property
    def channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.mean.size)

    def _check_images(self, x: np.ndarray) -> None:
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(
                f"expected NHWC images with C={self.channels} channels, got shape {x.shape}"
            )

    def standardise(self, x01: np.ndarray) -> np.ndarray:
        """Only the per-channel standardisation step of :meth:`apply`."""
        x01 = np.asarray(x01)
        self._check_images(x01)
        return transforms.standardise(x01, self.mean, self.std)

    def apply(self, x01: np.ndarray) -> np.ndarray:
        """Maps [0, 1]-scale NHWC images to model inputs.

        Args:
          x01: ``(N, H, W, C)`` floats in [0, 1] scale (values are not clipped).

        Returns:
          ``(N, H, W, C)`` float32: standardised, then whitened if ``zca`` is set.
        """
        x = self.standardise(x01)
        if self.zca is not None:
            x = transforms.flat_matmul(x, self.zca)
        return x

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Approximate inverse of :meth:`apply`, back to [0, 1] scale (unclipped).

        Useful to visualise distilled images. The ZCA part is inverted with a
        float64 matrix inverse of ``zca`` (well conditioned thanks to the
        regulariser).
        """
        x = np.asarray(x)
        self._check_images(x)
        if self.zca is not None:
            inverse = np.linalg.inv(self.zca.astype(np.float64))
            x = transforms.flat_matmul(x, inverse)
        return transforms.unstandardise(x, self.mean, self.std)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez``; keys are prefixed ``"preprocessing_"``.

        ``zca`` is stored as a ``(0, 0)`` array when absent (``savez`` has no None).
        """
        zca = self.zca if self.zca is not None else np.zeros((0, 0), np.float32)
        return {
            f"{_PREFIX}mean": self.mean,
            f"{_PREFIX}std": self.std,
            f"{_PREFIX}zca": zca,
            f"{_PREFIX}zca_reg": np.asarray(self.zca_reg, np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_arrays`; accepts a dict or an ``np.load`` result.

        Extra keys (e.g. other arrays saved in the same ``.npz``) are ignored.
        """
        missing = [
            f"{_PREFIX}{k}" for k in ("mean", "std", "zca_reg") if f"{_PREFIX}{k}" not in arrays
        ]
        if missing:
            raise ValueError(
                f"cannot rebuild Preprocessing: missing keys {missing} "
                f"(have {sorted(arrays.keys())}); save it with Preprocessing.to_arrays()"
            )
        zca = arrays.get(f"{_PREFIX}zca")
        zca = None if zca is None or np.asarray(zca).size == 0 else np.asarray(zca)
        return cls(
            mean=np.asarray(arrays[f"{_PREFIX}mean"]),
            std=np.asarray(arrays[f"{_PREFIX}std"]),
            zca=zca,
            zca_reg=float(np.asarray(arrays[f"{_PREFIX}zca_reg"])),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (the whitening matrix itself is left out)."""
        return {
            "standardisation": "per-channel",
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "zca": self.zca is not None,
            "zca_dim": None if self.zca is None else int(self.zca.shape[0]),
            "zca_reg": float(self.zca_reg),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class RawData:
    """Unprocessed arrays as a source provides them (see :mod:`mgdd_jax.data.sources`).

    Attributes:
      x_train, x_test: ``(N, H, W)`` or ``(N, H, W, C)``; uint8 in 0..255 or
        float in [0, 1].
      y_train, y_test: ``(N,)`` integer class ids.
      num_classes: number of classes.
      class_names: one name per class.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed image-classification dataset held in host memory.

    Attributes:
      name: the name it was loaded by, e.g. ``"fashion_mnist"``, ``"digits"``,
        ``"tfds:cifar10"`` or ``"npz:/path/x.npz"``.
      x_train: ``(N, H, W, C)`` float32, preprocessed.
      y_train: ``(N,)`` int32 labels in ``[0, num_classes)``.
      x_test: ``(M, H, W, C)`` float32, preprocessed with the train statistics.
      y_test: ``(M,)`` int32.
      num_classes: number of classes.
      class_names: one human-readable name per class.
      preprocessing: the fitted :class:`Preprocessing` (to map new [0, 1]-scale
        images the same way, or to invert it for visualisation).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    preprocessing: Preprocessing

    def __post_init__(self) -> None:
        _set(self, "class_names", tuple(str(c) for c in self.class_names))
        _set(self, "num_classes", int(self.num_classes))
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype == np.float32):
                raise ValueError(f"x_{split} must be a float32 NHWC numpy array")
            if not (isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype == np.int32):
                raise ValueError(f"y_{split} must be a 1-D int32 numpy array")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{split} has {x.shape[0]} images but y_{split} {y.shape[0]}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train and test image shapes differ: {self.x_train.shape[1:]} vs "
                f"{self.x_test.shape[1:]}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.preprocessing.channels != self.x_train.shape[-1]:
            raise ValueError("preprocessing channel count does not match the images")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    @property
    def channels(self) -> int:
        """Number of image channels ``C``."""
        return self.image_shape[-1]

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description (for run logs and checkpoints)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "sizes": {"train": int(self.x_train.shape[0]), "test": int(self.x_test.shape[0])},
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.describe(),
        }
