"""Datasets for mgdd_jax: loading, preprocessing and class-balanced sampling.

Typical use::

    from mgdd_jax import data
    ds = data.load_dataset("fashion_mnist", zca=True)
    x_init, y_init = data.sample_initial_set(jax.random.key(0), ds, ipc=10)

Modules: :mod:`~mgdd_jax.data.dataset` (the :class:`Dataset` and
:class:`Preprocessing` containers, and :class:`RawData`),
:mod:`~mgdd_jax.data.sources` (raw loaders and their registry; the accepted names
are listed by :func:`mgdd_jax.data.sources.available_datasets`),
:mod:`~mgdd_jax.data.glyphs` (reader of the cached glyph corpus, which
:mod:`mgdd_jax.glyph_corpus` builds), :mod:`~mgdd_jax.data.preprocess`
(standardisation, ZCA and its cache), :mod:`~mgdd_jax.data.sampling`
(class-balanced index sampling), :mod:`~mgdd_jax.data.validation` (input checks),
:mod:`~mgdd_jax.data.idx` (IDX file reader).
"""

from mgdd_jax.data.dataset import Dataset, Preprocessing, RawData
from mgdd_jax.data.errors import DatasetNotFoundError
from mgdd_jax.data.load import load_dataset
from mgdd_jax.data.sampling import (
    ClassIndex,
    balanced_batch_indices,
    check_per_class,
    class_balanced_indices,
    sample_initial_set,
)

__all__ = [
    "ClassIndex",
    "Dataset",
    "DatasetNotFoundError",
    "Preprocessing",
    "RawData",
    "balanced_batch_indices",
    "check_per_class",
    "class_balanced_indices",
    "load_dataset",
    "sample_initial_set",
]
