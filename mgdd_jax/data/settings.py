"""Per-dataset settings, in one table keyed by the names the loaders take.

A row says what differs between datasets: the preprocessing (``zca``: ZCA-whiten after
standardising; ``image_size``: resize to this side, 0 for the native size) and the one part of
the evaluation protocol that depends on the data (``flip``: horizontal flips among the
evaluation augmentations). Values follow FRePo (``lib/dataset/dataloader.py``: ZCA for every
dataset but MNIST and Fashion-MNIST; ``script/eval.py``: ``use_flip=False`` for MNIST and
Fashion-MNIST), extended to the other grey digit / character sets, where a mirrored image is
another class or none (digits, glyphs, EMNIST, KMNIST, SVHN digits, USPS).

:func:`settings_for` looks a name up exactly as :func:`mgdd_jax.data.load_dataset` takes it
(``"fashion_mnist"``, ``"tfds:mnist"``, ``"glyphs:classes=20,per_class=50"``,
``"npz:/path/x.npz"``); names not listed fall back to their prefix row (``"tfds:*"``,
``"glyphs:*"``, ``"npz:*"``) and then to ``"default"``.

Your own data can set its evaluation setting in its name: ``images:DIR,...,flip=0|1`` and
``npz:PATH,flip=0|1`` (:func:`mgdd_jax.data.images.flip_option`) override the row's ``flip``.
``images:`` does not flip by default: a mirrored digit, letter or sign is another class or
none, and the loader cannot tell what the images show (``flip=1`` for photos of objects).
``npz:`` keeps the flips it always had (``flip=0`` for MNIST-like arrays).
"""

from __future__ import annotations

import dataclasses

from mgdd_jax.data import images


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
    """One row: ``zca`` (bool), ``image_size`` (int, 0 = native), ``flip`` (bool)."""

    zca: bool
    image_size: int
    flip: bool


_GREY_GLYPHS = DatasetSettings(zca=False, image_size=0, flip=False)
_RGB_OBJECTS = DatasetSettings(zca=True, image_size=0, flip=True)

DATASET_SETTINGS: dict[str, DatasetSettings] = {
    "fashion_mnist": _GREY_GLYPHS,
    "digits": _GREY_GLYPHS,
    "glyphs": _GREY_GLYPHS,
    "glyphs:*": _GREY_GLYPHS,
    # formula-driven classes (fractals, dead leaves, textures): mirror-invariant families
    "procedural": DatasetSettings(zca=False, image_size=0, flip=True),
    "procedural:*": DatasetSettings(zca=False, image_size=0, flip=True),
    # a mixture of sources (mix:A+B): formula-driven or rendered meta-training classes
    "mix:*": DatasetSettings(zca=False, image_size=0, flip=True),
    "tfds:mnist": _GREY_GLYPHS,
    "tfds:fashion_mnist": _GREY_GLYPHS,
    "tfds:emnist": _GREY_GLYPHS,
    "tfds:kmnist": _GREY_GLYPHS,
    "tfds:usps": _GREY_GLYPHS,
    "tfds:svhn_cropped": DatasetSettings(zca=True, image_size=0, flip=False),
    "tfds:cifar10": _RGB_OBJECTS,
    "tfds:cifar100": _RGB_OBJECTS,
    "tfds:imagenet_resized/32x32": DatasetSettings(zca=False, image_size=0, flip=True),
    "tfds:*": DatasetSettings(zca=False, image_size=0, flip=True),
    "npz:*": DatasetSettings(zca=False, image_size=0, flip=True),
    # a folder of your own images (images:DIR,size=N,...): resized by the loader itself
    "images:*": DatasetSettings(zca=False, image_size=0, flip=images.DEFAULT_FLIP),
    "default": DatasetSettings(zca=False, image_size=0, flip=True),
}


def settings_for(name: str) -> DatasetSettings:
    """The row of dataset ``name``: exact name, else its ``prefix:*`` row, else ``default``.

    TFDS names with a config or version (``"tfds:emnist/letters"``, ``"tfds:mnist:3.0.1"``)
    use their base name's row. A ``flip=0|1`` option of an ``images:`` or ``npz:`` name
    replaces the row's ``flip``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    row = _row_for(name)
    flip = images.flip_option(name)
    return row if flip is None else dataclasses.replace(row, flip=flip)


def _row_for(name: str) -> DatasetSettings:
    name = name.split("#classes=", 1)[0]  # a class subset has its dataset's settings
    if name in DATASET_SETTINGS:
        return DATASET_SETTINGS[name]
    if name.startswith("tfds:"):
        base = "tfds:" + name[len("tfds:"):].split("/")[0].split(":")[0]
        if base in DATASET_SETTINGS:
            return DATASET_SETTINGS[base]
    if ":" in name:
        prefix = name.split(":", 1)[0] + ":*"
        if prefix in DATASET_SETTINGS:
            return DATASET_SETTINGS[prefix]
    return DATASET_SETTINGS["default"]
