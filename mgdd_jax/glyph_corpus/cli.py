r"""The command line of the glyph corpus builder: ``python -m mgdd_jax.glyph_corpus``.

    python -m mgdd_jax.glyph_corpus

writes the default corpus (1000 classes x 64 samples, 32x32, seed 0) to
``$MGDD_JAX_CACHE/glyphs/glyphs-c1000-n64-s32-seed0.npz`` (default cache:
``~/.cache/mgdd_jax``), where ``load_dataset("glyphs")`` finds it, plus a JSON copy of its
manifest next to it. Other corpora, e.g.::

    python -m mgdd_jax.glyph_corpus --num_classes=200 --per_class=32 --seed=1

are loaded as ``glyphs:classes=200,per_class=32,seed=1``. With ``--out=PATH`` the file goes
elsewhere; load it with ``--data_dir=PATH``. Fonts come from ``--font_dirs`` (default
``/usr/share/fonts``); for more classes ``apt-get install fonts-dejavu-core fonts-noto-core``.

Reports the fonts found and the classes available (timestamped stage lines of
:func:`mgdd_jax.progress.stage`), a :class:`mgdd_jax.progress.Progress` line while rendering,
then the time taken, the output path and its size. Bad input, too few fonts or an unwritable
``--out``: one ``error:`` line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from absl import app, flags, logging

from mgdd_jax import glyph_corpus
from mgdd_jax.progress import Progress, stage

_NUM_CLASSES = flags.DEFINE_integer("num_classes", glyph_corpus.DEFAULT_NUM_CLASSES,
                                    "Number of classes (characters).")
_PER_CLASS = flags.DEFINE_integer("per_class", glyph_corpus.DEFAULT_PER_CLASS,
                                  "Samples per class.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", glyph_corpus.DEFAULT_IMAGE_SIZE,
                                   "Side of the square images in pixels.")
_SEED = flags.DEFINE_integer("seed", glyph_corpus.DEFAULT_SEED,
                             "Seed of jax.random.key (classes, rendering, colours, split).")
_OUT = flags.DEFINE_string("out", None,
                           "Output .npz (default: the cache path load_dataset looks at).")
_FONT_DIRS = flags.DEFINE_list("font_dirs", list(glyph_corpus.DEFAULT_FONT_DIRS),
                               "Comma-separated directories searched for .ttf/.otf fonts.")
_MIN_FONTS = flags.DEFINE_integer("min_fonts", glyph_corpus.DEFAULT_MIN_FONTS,
                                  "A character must be drawn by at least this many fonts.")

# What bad input raises (a bad flag, too few fonts or classes: DatasetNotFoundError is a
# ValueError, a missing Pillow or fontTools an ImportError).
_BAD_INPUT = (ValueError, FileNotFoundError, ImportError)


def _fail(message: str) -> None:
    """The command's one ``error:`` line on stderr, then exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def _exit_on_bad_input() -> Iterator[None]:
    try:
        yield
    except _BAD_INPUT as e:
        _fail(str(e))


def main(argv: list[str]) -> None:
    """Renders and saves the corpus the flags describe (the ``app.run`` main)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    with _exit_on_bad_input():
        for flag in (_NUM_CLASSES, _PER_CLASS, _IMAGE_SIZE, _MIN_FONTS):
            if flag.value < 1:
                raise ValueError(f"--{flag.name} must be >= 1, got {flag.value}")
        if _SEED.value < 0:
            raise ValueError(f"--seed must be >= 0, got {_SEED.value}")
        spec = glyph_corpus.CorpusSpec(_NUM_CLASSES.value, _PER_CLASS.value, _IMAGE_SIZE.value,
                                       _SEED.value)
        out = _OUT.value or os.fspath(glyph_corpus.default_corpus_path(
            spec.num_classes, spec.per_class, spec.image_size, spec.seed))
        if not out.endswith(".npz"):
            raise ValueError(f"--out must name a .npz file, got {out!r}")

        start = time.perf_counter()
        fonts = glyph_corpus.find_fonts(_FONT_DIRS.value)
        stage(f"fonts: {len(fonts)} in {', '.join(_FONT_DIRS.value)}")
        if not fonts:
            raise ValueError(glyph_corpus.no_fonts_message(_FONT_DIRS.value))
        charset = glyph_corpus.scan_charset(fonts, min_fonts=_MIN_FONTS.value)
        scan_s = time.perf_counter() - start
        stage(f"classes available: {len(charset)} (drawn by >= {_MIN_FONTS.value} fonts; "
              f"{charset.merged} homoglyphs merged, {len(charset.digit_lookalikes)} digit "
              f"look-alikes dropped; scan {scan_s:.1f} s)")
        bar = Progress("rendering classes", spec.num_classes)
        corpus = glyph_corpus.render_glyph_corpus(
            glyph_corpus.corpus_key(spec.seed), spec.num_classes, spec.per_class,
            spec.image_size, min_fonts=_MIN_FONTS.value, charset=charset,
            progress=lambda done, total: bar.update(done),
        )
        render_s = bar.close()
    manifest = glyph_corpus.make_manifest(corpus, seed=spec.seed, fonts=fonts,
                                          min_fonts=_MIN_FONTS.value,
                                          available_classes=len(charset))
    try:
        path = glyph_corpus.save_corpus(out, corpus, manifest)
    except OSError as e:
        _fail(f"cannot write {out}: {e}")
    n = corpus.masks.shape[0]
    stage(f"rendered {n} images ({spec.num_classes} classes x {spec.per_class}, "
          f"{spec.image_size}x{spec.image_size}) in {render_s:.1f} s "
          f"({n / max(render_s, 1e-9):.0f} images/s); total {time.perf_counter() - start:.1f} s")
    stage(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; "
          f"{len(manifest['fonts'])} fonts used)")


def run() -> None:
    """Parses the flags and runs :func:`main` (both entry points call this)."""
    app.run(main)
