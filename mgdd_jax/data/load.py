"""``load_dataset``: name -> validated, preprocessed :class:`Dataset`."""

from __future__ import annotations

import logging
import os

import numpy as np

from mgdd_jax.data import preprocess, sources, validation
from mgdd_jax.data.dataset import Dataset

logger = logging.getLogger(__name__)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    zca: bool = False,
    zca_reg: float = 0.1,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Loads a dataset by name and preprocesses it.

    Steps: validate the options; read the raw arrays through the source
    registry (:mod:`mgdd_jax.data.sources`); validate them (labels, and an
    image layout that is plausibly channels-last: channels-first arrays are
    refused with the transpose that fixes them) and scale to float32 [0, 1] NHWC; optionally resize to ``image_size`` (bilinear); fit
    per-channel standardisation (and, with ``zca``, ZCA whitening) on the train
    split only; apply it to train and test.

    Args:
      name: ``"fashion_mnist"``, ``"digits"``, ``"glyphs"`` (or
        ``"glyphs:classes=C,per_class=N,..."``, the cached glyph corpus),
        ``"tfds:NAME"`` (a prepared TensorFlow Datasets set, e.g.
        ``"tfds:cifar10"``) or ``"npz:PATH"``; the full list is
        :func:`mgdd_jax.data.sources.available_datasets`.
      data_dir: where the source looks for its files (None: its default).
      zca: apply ZCA whitening after standardisation.
      zca_reg: relative ZCA regulariser strength, > 0 (recorded even without ZCA).
      image_size: resize images to ``image_size x image_size`` (None: keep).
      cache_dir: ZCA matrix cache (None: ``$MGDD_JAX_CACHE`` or ``~/.cache/mgdd_jax``).

    Returns:
      The :class:`Dataset`, float32 images and int32 labels.

    Raises:
      ValueError: on an unknown name, a bad option or invalid data, before any
        expensive work; :class:`DatasetNotFoundError` (a ValueError) when the
        files are missing.
    """
    zca_reg = validation.check_zca_reg(zca_reg)
    image_size = validation.check_image_size(image_size)
    raw = sources.load_raw(name, data_dir)
    return dataset_from_raw(name, raw, zca=zca, zca_reg=zca_reg, image_size=image_size,
                            cache_dir=cache_dir)


def dataset_from_raw(
    name: str,
    raw: sources.RawData,
    *,
    zca: bool = False,
    zca_reg: float = 0.1,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Validates raw arrays and preprocesses them: :func:`load_dataset` after reading.

    The one path from raw arrays to a :class:`Dataset`, shared by the named loaders and by
    in-memory arrays (:mod:`mgdd_jax.api`), so both refuse bad input with the same messages.
    Arguments as :func:`load_dataset`; ``raw`` holds the unprocessed splits.
    """
    zca_reg = validation.check_zca_reg(zca_reg)
    image_size = validation.check_image_size(image_size)
    where = f"dataset {name!r}"
    class_names = tuple(str(c) for c in raw.class_names)
    validation.check_num_classes(raw.num_classes, class_names, where)
    num_classes = int(raw.num_classes)
    validation.check_split_arrays(raw.x_train, raw.y_train, f"train split of {where}")
    validation.check_split_arrays(raw.x_test, raw.y_test, f"test split of {where}")
    validation.check_image_layout(np.shape(raw.x_train), f"x_train of {where}")
    validation.check_image_layout(np.shape(raw.x_test), f"x_test of {where}")
    y_train = validation.check_labels(raw.y_train, num_classes, f"y_train of {where}")
    y_test = validation.check_labels(raw.y_test, num_classes, f"y_test of {where}")
    x_train = validation.images_to_unit(raw.x_train, f"x_train of {where}")
    x_test = validation.images_to_unit(raw.x_test, f"x_test of {where}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{where}: train images have shape {x_train.shape[1:]} but test images "
            f"{x_test.shape[1:]} (H, W, C); both splits must share one image shape"
        )
    if image_size is not None:
        x_train = preprocess.resize_images(x_train, image_size)
        x_test = preprocess.resize_images(x_test, image_size)
    preprocessing, x_train, x_test = preprocess.preprocess_splits(
        name, x_train, x_test, zca=zca, zca_reg=zca_reg, cache_dir=cache_dir
    )
    dataset = Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        class_names=class_names,
        preprocessing=preprocessing,
    )
    logger.info(
        "loaded %s: train %s, test %s, %d classes, zca=%s",
        name,
        x_train.shape,
        x_test.shape,
        num_classes,
        zca,
    )
    return dataset

