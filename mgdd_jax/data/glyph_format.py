"""The glyph corpus file format: what its builder writes and its reader reads.

The builder is :mod:`mgdd_jax.glyph_corpus` (``python -m mgdd_jax.glyph_corpus``); the
reader, the ``glyphs`` data source, is :mod:`mgdd_jax.data.glyphs`. Both import this module
and nothing of each other at import time.

A corpus is one compressed ``.npz`` holding :data:`ARRAY_KEYS`:

* ``masks``: ``(N, S, S)`` uint8 coverage (0 = background, 255 = ink);
* ``labels``: ``(N,)`` int32 class ids, samples ordered class by class;
* ``chars``: ``(C,)`` str, the character of each class;
* ``font_list``: ``(F,)`` str, the fonts used (sorted names); ``font_ids``: ``(N,)`` int16,
  each sample's index into it;
* ``manifest``: a 0-d str, the JSON manifest (``format_version`` = :data:`FORMAT_VERSION`,
  ``seed``, classes, fonts, rendering parameters), also written beside the file as
  :func:`manifest_path`.

It is named :func:`corpus_filename` and cached at :func:`default_corpus_path`. Every random
draw of the builder and the reader comes from :func:`corpus_key` plus one of the stream tags
below (see :func:`mgdd_jax.rng.numpy_rng`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from mgdd_jax.data.preprocess import resolve_cache_dir

BUILD_COMMAND = "python -m mgdd_jax.glyph_corpus"
FONT_INSTALL_HINT = "apt-get install fonts-dejavu-core fonts-noto-core"

CACHE_SUBDIR = "glyphs"
DEFAULT_NUM_CLASSES = 1000
DEFAULT_PER_CLASS = 64
DEFAULT_IMAGE_SIZE = 32
DEFAULT_SEED = 0

FORMAT_VERSION = 1
ARRAY_KEYS: tuple[str, ...] = ("masks", "labels", "chars", "font_list", "font_ids", "manifest")
# Random-stream tags mixed into the seed of every numpy Generator: the builder draws the
# classes and renders with the first two, the reader colours and splits with the last two.
# Changing one changes every corpus.
STREAM_CLASSES, STREAM_RENDER, STREAM_COLOUR, STREAM_SPLIT = 1, 2, 3, 4


def class_name(codepoint: int) -> str:
    """``"U+0041 A"``: the codepoint and the character."""
    return f"U+{codepoint:04X} {chr(codepoint)}"


class GlyphCorpus(NamedTuple):
    """Rendered glyph masks.

    Attributes:
      masks: ``(N, S, S)`` uint8 coverage (0 = background, 255 = ink).
      labels: ``(N,)`` int32 class ids; samples are ordered class by class.
      chars: the character of each class.
      font_names: the font each sample was drawn with (length N; the file
        name, or the full path where two fonts share a file name).
    """

    masks: np.ndarray
    labels: np.ndarray
    chars: list[str]
    font_names: list[str]


def corpus_filename(num_classes: int, per_class: int, image_size: int, seed: int) -> str:
    """``glyphs-c1000-n64-s32-seed0.npz`` for the default corpus."""
    return f"glyphs-c{num_classes}-n{per_class}-s{image_size}-seed{seed}.npz"


def default_corpus_path(
    num_classes: int = DEFAULT_NUM_CLASSES,
    per_class: int = DEFAULT_PER_CLASS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """``<cache>/glyphs/<corpus_filename>``; cache: ``cache_dir``, else
    ``$MGDD_JAX_CACHE``, else ``~/.cache/mgdd_jax`` (as for the ZCA cache)."""
    name = corpus_filename(num_classes, per_class, image_size, seed)
    return resolve_cache_dir(cache_dir) / CACHE_SUBDIR / name


def manifest_path(path: str | os.PathLike) -> Path:
    """The human-readable JSON copy of a corpus's manifest: ``path`` with ``.json``."""
    return Path(path).expanduser().with_suffix(".json")


def corpus_key(seed: int) -> jax.Array:
    """The key a corpus with this seed is made from (threefry2x32, pinned, so that the
    corpus is the same under any JAX PRNG configuration)."""
    return jax.random.key(seed, impl="threefry2x32")


def corpus_arrays(corpus: GlyphCorpus, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The :data:`ARRAY_KEYS` arrays a corpus file stores (the manifest as indented JSON)."""
    font_list = sorted(set(corpus.font_names))
    index = {n: i for i, n in enumerate(font_list)}
    return {
        "masks": np.asarray(corpus.masks, np.uint8),
        "labels": np.asarray(corpus.labels, np.int32),
        "chars": np.array(corpus.chars, dtype=str),
        "font_list": np.array(font_list, dtype=str),
        "font_ids": np.array([index[n] for n in corpus.font_names], dtype=np.int16),
        "manifest": np.array(manifest_text(manifest)),
    }


def manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as stored, in the file and in its JSON copy."""
    return json.dumps(manifest, indent=1, ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """Which corpus a dataset name asks for."""

    num_classes: int = DEFAULT_NUM_CLASSES
    per_class: int = DEFAULT_PER_CLASS
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = DEFAULT_SEED

    @property
    def filename(self) -> str:
        return corpus_filename(self.num_classes, self.per_class, self.image_size, self.seed)

    @property
    def command(self) -> str:
        """The command that makes this corpus in the default cache."""
        flags = [f"--{field.name}={getattr(self, field.name)}"
                 for field in dataclasses.fields(self)
                 if getattr(self, field.name) != field.default]
        return " ".join([BUILD_COMMAND, *flags])
