"""The corpus file: its manifest, writing it, and the one-call ``make_corpus``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mgdd_jax.data.errors import DatasetNotFoundError
from mgdd_jax.data.glyph_format import (
    FORMAT_VERSION,
    CorpusSpec,
    GlyphCorpus,
    class_name,
    corpus_arrays,
    corpus_key,
    manifest_path,
    manifest_text,
)
from mgdd_jax.glyph_corpus.charset import DEFAULT_MIN_FONTS, scan_charset
from mgdd_jax.glyph_corpus.fonts import (
    DEFAULT_FONT_DIRS,
    find_fonts,
    font_labels,
    font_record,
    no_fonts_message,
)
from mgdd_jax.glyph_corpus.render import RenderParams, render_glyph_corpus
from mgdd_jax.outputs import atomic_path

DEFAULT_RENDER_PARAMS = RenderParams()


def make_manifest(
    corpus: GlyphCorpus,
    *,
    seed: int | None,
    fonts: Sequence[Path],
    params: RenderParams = DEFAULT_RENDER_PARAMS,
    min_fonts: int = DEFAULT_MIN_FONTS,
    available_classes: int | None = None,
) -> dict[str, Any]:
    """The JSON manifest stored with a corpus: classes, fonts, seed and parameters."""
    import PIL
    from PIL import features

    used = sorted(set(corpus.font_names))
    by_name = dict(zip(font_labels(fonts), fonts, strict=True))
    return {
        "format_version": FORMAT_VERSION,
        "num_classes": len(corpus.chars),
        "per_class": int(corpus.masks.shape[0] // max(len(corpus.chars), 1)),
        "image_size": int(corpus.masks.shape[1]),
        "seed": seed,
        "codepoints": [ord(c) for c in corpus.chars],
        "class_names": [class_name(ord(c)) for c in corpus.chars],
        "fonts": [font_record(by_name[n]) if n in by_name else {"name": n} for n in used],
        "min_fonts": min_fonts,
        "available_classes": available_classes,
        "render_params": dataclasses.asdict(params),
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
    }


def save_corpus(path: str | os.PathLike, corpus: GlyphCorpus, manifest: dict[str, Any]) -> Path:
    """Writes the masks, labels, fonts and manifest to ``path`` (compressed ``.npz``).

    The arrays are :func:`mgdd_jax.data.glyph_format.corpus_arrays`. Both ``path`` and a
    human-readable copy of the manifest (:func:`~mgdd_jax.data.glyph_format.manifest_path`)
    are written atomically with :func:`mgdd_jax.outputs.atomic_path` (temporary file,
    fsync, then ``os.replace``; permissions ``0666 & ~umask``).
    """
    path = Path(path).expanduser()
    arrays = corpus_arrays(corpus, manifest)
    with atomic_path(os.fspath(path), ".npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    with atomic_path(os.fspath(manifest_path(path)), ".json") as tmp, open(tmp, "wb") as f:
        f.write(manifest_text(manifest).encode())
    return path


def make_corpus(
    spec: CorpusSpec,
    out: str | os.PathLike,
    *,
    font_dirs: Sequence[str | os.PathLike] = DEFAULT_FONT_DIRS,
    min_fonts: int = DEFAULT_MIN_FONTS,
    params: RenderParams = DEFAULT_RENDER_PARAMS,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Finds fonts, renders ``spec`` with :func:`~mgdd_jax.data.glyph_format.corpus_key`
    (a pinned threefry2x32 ``jax.random.key(seed)``) and saves it to ``out``.

    Returns the path and the manifest.
    """
    fonts = find_fonts(font_dirs)
    if not fonts:
        raise DatasetNotFoundError(no_fonts_message(font_dirs))
    charset = scan_charset(fonts, min_fonts=min_fonts, scan_size=params.scan_size)
    corpus = render_glyph_corpus(
        corpus_key(spec.seed), spec.num_classes, spec.per_class, spec.image_size,
        min_fonts=min_fonts, params=params, charset=charset, progress=progress,
    )
    manifest = make_manifest(corpus, seed=spec.seed, fonts=fonts, params=params,
                             min_fonts=min_fonts, available_classes=len(charset))
    return save_corpus(out, corpus, manifest), manifest
