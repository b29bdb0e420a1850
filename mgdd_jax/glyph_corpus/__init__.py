"""Builds the glyph corpus: a many-class data set rendered offline from installed fonts.

The meta generator (MGDD Alg. 1) is meta-trained on a large many-class data set
(ImageNet in the paper). This package builds a stand-in that needs no download:
every class is one Unicode character, and its samples are that character drawn
from the fonts installed on the machine (Debian: ``fonts-dejavu-core``,
``fonts-noto-core``), each with a random font, size, stroke width and affine
jitter. The corpus is disjoint from the benchmark targets (Fashion-MNIST,
handwritten digits): every number character (Unicode categories ``Nd``, ``Nl``,
``No``) is excluded, as are compatibility variants (whose NFKC form differs,
e.g. ``²`` or full-width letters), separators, control/format/private-use
characters, combining marks, and characters that render empty.

Pipeline:

1. :func:`find_fonts` (:mod:`.fonts`) lists the ``.ttf``/``.otf`` files Pillow can open.
2. :func:`scan_charset` (:mod:`.charset`) reads every font's character map
   (fontTools, which ships with matplotlib), renders each eligible character
   once per font that maps it, drops empty renderings and the font's
   missing-glyph box, merges characters whose cropped renderings are
   byte-identical in some font (e.g. Latin ``A``, Greek ``Α`` and Cyrillic
   ``А``: after centring they would be indistinguishable classes), keeps the
   characters drawn by at least ``min_fonts`` fonts, and drops the few drawn
   like a digit (Cyrillic ``З`` is a ``3`` in DejaVu Sans Mono).
3. :func:`choose_classes` takes a key-based random subset, sorted by codepoint.
4. :func:`render_glyph_corpus` (:mod:`.render`) renders grey coverage masks
   (uint8, 1 channel).
5. :func:`make_manifest` / :func:`save_corpus` (:mod:`.build`) store them in a
   compressed ``.npz`` with a JSON manifest, written atomically;
   :func:`make_corpus` does steps 1-5 in one call.

The file format (names, arrays, manifest version, random streams) is
:mod:`mgdd_jax.data.glyph_format`, shared with the reader: reading a corpus and
turning it into RGB train/test splits (the ``glyphs`` data source) belong to
:mod:`mgdd_jax.data.glyphs`, which imports this package only to render a missing
small corpus on first use.

Make the default corpus (1000 classes x 64 samples, 32x32) with::

    python -m mgdd_jax.glyph_corpus

(:mod:`mgdd_jax.glyph_corpus.cli`; ``--help`` lists the flags).

Every random draw comes from numpy Generators seeded by
:func:`mgdd_jax.rng.numpy_rng` from the key data of an explicit ``jax.random``
key plus a stream tag (and, per class, the codepoint), so the output does not
depend on JAX's PRNG configuration flags nor on the order in which classes are
rendered.
"""

from mgdd_jax.data.glyph_format import (
    BUILD_COMMAND,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_CLASSES,
    DEFAULT_PER_CLASS,
    DEFAULT_SEED,
    FONT_INSTALL_HINT,
    CorpusSpec,
    GlyphCorpus,
    class_name,
    corpus_key,
    default_corpus_path,
)
from mgdd_jax.glyph_corpus.build import make_corpus, make_manifest, save_corpus
from mgdd_jax.glyph_corpus.charset import (
    DEFAULT_MIN_FONTS,
    Charset,
    choose_classes,
    is_eligible_character,
    scan_charset,
)
from mgdd_jax.glyph_corpus.fonts import (
    DEFAULT_FONT_DIRS,
    find_fonts,
    font_labels,
    font_record,
    no_fonts_message,
)
from mgdd_jax.glyph_corpus.render import RenderParams, render_glyph_corpus

__all__ = [
    "BUILD_COMMAND",
    "DEFAULT_FONT_DIRS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MIN_FONTS",
    "DEFAULT_NUM_CLASSES",
    "DEFAULT_PER_CLASS",
    "DEFAULT_SEED",
    "FONT_INSTALL_HINT",
    "Charset",
    "CorpusSpec",
    "GlyphCorpus",
    "RenderParams",
    "choose_classes",
    "class_name",
    "corpus_key",
    "default_corpus_path",
    "find_fonts",
    "font_labels",
    "font_record",
    "is_eligible_character",
    "make_corpus",
    "make_manifest",
    "no_fonts_message",
    "render_glyph_corpus",
    "save_corpus",
    "scan_charset",
]
