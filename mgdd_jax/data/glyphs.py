"""The ``glyphs`` data source: reads the cached glyph corpus (meta-training data).

The corpus is a many-class stand-in for ImageNet (MGDD Alg. 1) that needs no
download: every class is one Unicode character drawn from the installed fonts.
It is *built* by :mod:`mgdd_jax.glyph_corpus` (fonts, character set, rendering,
manifest), usually with::

    python -m mgdd_jax.glyph_corpus

The file format both sides agree on is :mod:`mgdd_jax.data.glyph_format`. This
module reads it: :func:`load_corpus` checks a stored ``.npz``; :func:`load_glyphs`
(the ``glyphs`` / ``glyphs:classes=C,per_class=N,size=S,seed=K`` source) finds it,
colourises the grey masks into RGB and splits each class 90/10 into train/test. A
small corpus missing from the cache is rendered on first use (the builder is then
imported, by this module's one function-level import); anything else missing is an error
naming the command.

Every random draw comes from numpy Generators seeded from the key data of an
explicit ``jax.random`` key plus a stream tag (and, per class, the class
index; see :func:`mgdd_jax.rng.numpy_rng`), so the output does not depend on
JAX's PRNG configuration flags nor on the order in which classes are handled.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mgdd_jax.data.dataset import RawData
from mgdd_jax.data.errors import DatasetNotFoundError
from mgdd_jax.data.glyph_format import (
    ARRAY_KEYS,
    BUILD_COMMAND,
    CACHE_SUBDIR,
    DEFAULT_SEED,
    FONT_INSTALL_HINT,
    FORMAT_VERSION,
    STREAM_COLOUR,
    STREAM_SPLIT,
    CorpusSpec,
    GlyphCorpus,
    class_name,
    corpus_key,
    default_corpus_path,
)
from mgdd_jax.rng import numpy_rng

logger = logging.getLogger(__name__)

TEST_FRACTION = 0.1
# The loader renders a missing corpus itself only up to this many images (the default
# 1000 x 64); larger ones must be made explicitly with the build command.
MAX_AUTO_RENDER_IMAGES = 100_000

_SPEC_KEYS = {"classes": "num_classes", "per_class": "per_class", "size": "image_size",
              "seed": "seed"}


def load_corpus(path: str | os.PathLike) -> tuple[GlyphCorpus, dict[str, Any]]:
    """Reads a corpus file; returns it and its manifest.

    The file is written by :func:`mgdd_jax.glyph_corpus.save_corpus` in the layout of
    :mod:`mgdd_jax.data.glyph_format`. A corrupt, foreign or outdated file is a
    :class:`ValueError` naming :data:`~mgdd_jax.data.glyph_format.BUILD_COMMAND`.
    """
    path = Path(path).expanduser()
    remake = f"delete it and run `{BUILD_COMMAND}` again"
    try:
        with np.load(path, allow_pickle=False) as f:
            contents = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable glyph corpus ({e}); {remake}") from e
    missing = set(ARRAY_KEYS) - set(contents)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}: not a glyph corpus; {remake}")
    masks, labels = contents["masks"], contents["labels"]
    chars = [str(c) for c in contents["chars"]]
    font_list = [str(n) for n in contents["font_list"]]
    font_ids = contents["font_ids"]
    manifest = json.loads(str(contents["manifest"]))
    ok = (
        masks.dtype == np.uint8 and masks.ndim == 3 and masks.shape[1] == masks.shape[2]
        and labels.shape == (masks.shape[0],) and font_ids.shape == labels.shape
        and np.issubdtype(labels.dtype, np.integer)
        and (labels.size == 0 or (labels.min() >= 0 and labels.max() < len(chars)))
        and (font_ids.size == 0 or (font_ids.min() >= 0 and font_ids.max() < len(font_list)))
        and manifest.get("format_version") == FORMAT_VERSION
    )
    if not ok:
        raise ValueError(f"{path} holds inconsistent glyph arrays; {remake}")
    corpus = GlyphCorpus(masks, labels.astype(np.int32), chars,
                         [font_list[i] for i in font_ids.tolist()])
    return corpus, manifest


def colour_pairs(
    key: jax.Array, n: int, min_contrast: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(foreground, background)`` uint8 RGB colours, ``(n, 3)`` each.

    Background uniform; foreground uniform among colours whose luma (Rec. 601)
    differs from the background's by at least ``min_contrast`` (of 255), by
    rejection over 16 candidates, falling back to black or white.
    """
    rng = numpy_rng(key, STREAM_COLOUR)
    luma = np.array([0.299, 0.587, 0.114])
    bg = rng.integers(0, 256, (n, 3), dtype=np.int64)
    candidates = rng.integers(0, 256, (n, 16, 3), dtype=np.int64)
    ok = np.abs(candidates @ luma - (bg @ luma)[:, None]) >= min_contrast * 255
    first = np.argmax(ok, axis=1)
    fg = candidates[np.arange(n), first]
    fallback = np.where((bg @ luma)[:, None] < 127.5, 255, 0) * np.ones((1, 3), np.int64)
    fg = np.where(ok.any(axis=1)[:, None], fg, fallback)
    return fg.astype(np.uint8), bg.astype(np.uint8)


def colourise(key: jax.Array, masks: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``x = bg * (1 - m) + fg * m`` per sample, as uint8 NHWC ``(N, S, S, 3)``."""
    masks = np.asarray(masks, np.uint8)
    fg, bg = colour_pairs(key, masks.shape[0])
    out = np.empty((*masks.shape, 3), np.uint8)
    for start in range(0, masks.shape[0], chunk):
        sl = slice(start, start + chunk)
        m = masks[sl, ..., None].astype(np.uint32)
        mixed = bg[sl, None, None, :] * (255 - m) + fg[sl, None, None, :] * m
        out[sl] = (mixed + 127) // 255
    return out


def split_per_class(
    key: jax.Array, labels: np.ndarray, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class random train/test split: ``max(1, round(f * n_c))`` to test when ``n_c >= 2``.

    Returns:
      ``(train_indices, test_indices)``, sorted int64, disjoint and covering all samples.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        perm = numpy_rng(key, STREAM_SPLIT, int(c)).permutation(members.size)
        n_test = max(1, round(test_fraction * members.size)) if members.size >= 2 else 0
        test.append(members[perm[:n_test]])
        train.append(members[perm[n_test:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def parse_spec(spec: str) -> CorpusSpec:
    """``""``/``"glyphs"`` -> the default; ``"classes=200,per_class=32,size=32,seed=1"``."""
    if spec in ("", "glyphs"):
        return CorpusSpec()
    values: dict[str, int] = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in _SPEC_KEYS or not re.fullmatch(r"\s*\d+\s*", value):
            raise ValueError(
                f"bad glyph corpus spec {spec!r}: expected comma-separated KEY=INTEGER with KEY "
                f"in {sorted(_SPEC_KEYS)}, e.g. 'glyphs:classes=200,per_class=32'"
            )
        values[_SPEC_KEYS[name]] = int(value)
    corpus = CorpusSpec(**values)
    for field in ("num_classes", "per_class", "image_size"):
        if getattr(corpus, field) < 1:
            raise ValueError(f"bad glyph corpus spec {spec!r}: {field} must be >= 1")
    return corpus


def raw_data_from_corpus(corpus: GlyphCorpus, seed: int) -> RawData:
    """Colourises a corpus and splits it 90/10 per class (both keyed by ``seed``)."""
    key = corpus_key(seed)
    images = colourise(key, corpus.masks)
    train, test = split_per_class(key, corpus.labels)
    codepoints = [ord(c) for c in corpus.chars]
    return RawData(
        x_train=images[train],
        y_train=corpus.labels[train],
        x_test=images[test],
        y_test=corpus.labels[test],
        num_classes=len(codepoints),
        class_names=tuple(class_name(cp) for cp in codepoints),
    )


def load_glyphs(spec: str, data_dir: str | None) -> RawData:
    """The ``glyphs`` data source: the rendered glyph corpus as RGB images.

    ``glyphs`` is the default corpus (1000 classes x 64 samples, 32x32, seed
    0); ``glyphs:classes=C,per_class=N,size=S,seed=K`` (any subset of the keys)
    another one. Train/test: 90/10 per class; colours: a random foreground and
    background per sample, contrasting in luma. Both are fixed by the seed.

    The corpus file is ``data_dir`` itself when that is a file, else
    ``data_dir/glyphs/<file>`` or ``data_dir/<file>``; without ``data_dir``,
    ``<cache>/glyphs/<file>`` ($MGDD_JAX_CACHE or ~/.cache/mgdd_jax). A missing
    file in the cache is rendered there from the installed fonts (if at most
    :data:`MAX_AUTO_RENDER_IMAGES` images) by :func:`mgdd_jax.glyph_corpus.make_corpus`,
    the one place this module imports the builder; a missing file under ``data_dir``,
    or a larger one, is a :class:`DatasetNotFoundError` naming the
    ``python -m mgdd_jax.glyph_corpus`` command that makes it.
    """
    corpus_spec = parse_spec(spec)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        candidates = [root] if root.is_file() else [root / CACHE_SUBDIR / corpus_spec.filename,
                                                    root / corpus_spec.filename]
    else:
        candidates = [default_corpus_path(corpus_spec.num_classes, corpus_spec.per_class,
                                          corpus_spec.image_size, corpus_spec.seed)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        n_images = corpus_spec.num_classes * corpus_spec.per_class
        if data_dir is not None or n_images > MAX_AUTO_RENDER_IMAGES:
            looked = "\n  ".join(map(str, candidates))
            raise DatasetNotFoundError(
                f"glyph corpus not found; looked for:\n  {looked}\n"
                f"Make it with `{corpus_spec.command}` (add --out=PATH to write it elsewhere, "
                "then pass --data_dir=PATH); it renders the characters of the fonts in "
                f"/usr/share/fonts (more classes: `{FONT_INSTALL_HINT}`)."
            )
        path = candidates[0]
        _render_into_cache(corpus_spec, path)
    corpus, manifest = load_corpus(path)
    seed = manifest.get("seed")
    return raw_data_from_corpus(corpus, DEFAULT_SEED if seed is None else int(seed))


def _render_into_cache(corpus_spec: CorpusSpec, path: Path) -> None:
    """Renders a missing small corpus to ``path`` with the builder, imported only here (it
    needs Pillow and fontTools; reading a corpus does not)."""
    from mgdd_jax import glyph_corpus

    n_images = corpus_spec.num_classes * corpus_spec.per_class
    logger.warning(
        "glyph corpus %s not found: rendering it now from the installed fonts (%d images, "
        "once; equivalent to `%s`)", path, n_images, corpus_spec.command,
    )
    start = time.perf_counter()
    try:
        glyph_corpus.make_corpus(corpus_spec, path, font_dirs=glyph_corpus.DEFAULT_FONT_DIRS)
    except DatasetNotFoundError as e:
        raise DatasetNotFoundError(
            f"glyph corpus {path} not found and cannot be rendered here: {e}. Make it on a "
            f"machine with fonts using `{corpus_spec.command}` and copy it to {path} (or "
            "pass --data_dir=PATH)."
        ) from e
    logger.warning("rendered glyph corpus %s in %.1f s", path, time.perf_counter() - start)
