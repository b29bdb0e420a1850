"""A many-class corpus of font glyphs, rendered offline with Pillow.

The meta generator (MGDD Alg. 1) is meta-trained on a large many-class data set
(ImageNet in the paper). This module builds a stand-in that needs no download:
every class is one Unicode character, and its samples are that character drawn
from the fonts installed on the machine (Debian: ``fonts-dejavu-core``,
``fonts-noto-core``), each with a random font, size, stroke width and affine
jitter. The corpus is disjoint from the benchmark targets (Fashion-MNIST,
handwritten digits): every number character (Unicode categories ``Nd``, ``Nl``,
``No``) is excluded, as are compatibility variants (whose NFKC form differs,
e.g. ``²`` or full-width letters), separators, control/format/private-use
characters, combining marks, and characters that render empty.

Pipeline:

1. :func:`find_fonts` lists the ``.ttf``/``.otf`` files Pillow can open.
2. :func:`scan_charset` reads every font's character map (fontTools, which
   ships with matplotlib), renders each eligible character once per font that
   maps it, drops empty renderings and the font's missing-glyph box, merges
   characters whose cropped renderings are byte-identical in some font (e.g.
   Latin ``A``, Greek ``Α`` and Cyrillic ``А``: after centring they would be
   indistinguishable classes), keeps the characters drawn by at least
   ``min_fonts`` fonts, and drops the few drawn like a digit (Cyrillic ``З``
   is a ``3`` in DejaVu Sans Mono).
3. :func:`choose_classes` takes a key-based random subset, sorted by codepoint.
4. :func:`render_glyph_corpus` renders grey coverage masks (uint8, 1 channel).
5. :func:`save_corpus` / :func:`load_corpus` store them in a compressed
   ``.npz`` with a JSON manifest, written atomically; :func:`load_glyphs` (the
   ``glyphs`` data source) colourises the masks into RGB and splits each class
   90/10 into train/test.

Make the default corpus (1000 classes x 64 samples, 32x32) with::

    python -m experiments.make_glyphs

Every random draw comes from numpy Generators seeded from the key data of an
explicit ``jax.random`` key plus a stream tag (and, per class, the class
index), so the output does not depend on JAX's PRNG configuration flags nor on
the order in which classes are rendered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from mgdd_jax.data.errors import DatasetNotFoundError
from mgdd_jax.data.preprocess import resolve_cache_dir
from mgdd_jax.data.sources import RawData

logger = logging.getLogger(__name__)

DEFAULT_FONT_DIRS: tuple[str, ...] = ("/usr/share/fonts",)
FONT_SUFFIXES: tuple[str, ...] = (".ttf", ".otf")
CACHE_SUBDIR = "glyphs"

DEFAULT_NUM_CLASSES = 1000
DEFAULT_PER_CLASS = 64
DEFAULT_IMAGE_SIZE = 32
DEFAULT_SEED = 0
DEFAULT_MIN_FONTS = 2
TEST_FRACTION = 0.1

MAKE_COMMAND = "python -m experiments.make_glyphs"
FONT_INSTALL_HINT = "apt-get install fonts-dejavu-core fonts-noto-core"
# The loader renders a missing corpus itself only up to this many images (the
# default 64000 take well under a minute); larger ones must be made explicitly.
MAX_AUTO_RENDER_IMAGES = 100_000

FORMAT_VERSION = 1
_NUMBER_CATEGORIES = ("Nd", "Nl", "No")
# Character categories that never make a class: numbers, separators, control /
# format / surrogate / private-use / unassigned, combining marks.
EXCLUDED_CATEGORY_PREFIXES = ("N", "Z", "C", "M")
# Within one font, more than this many codepoints sharing one rendering are a
# placeholder glyph (a font drawing a box for whole blocks), not homoglyphs.
_MAX_HOMOGLYPH_GROUP = 16
# A character is dropped as a digit look-alike when its rendering is within
# DIGIT_LOOKALIKE_MEDIAN of a digit's (median over the fonts that draw both; see
# _FontScanner.digit_distances), or within DIGIT_LOOKALIKE_MIN in some font: e.g.
# Cyrillic "З" (identical to "3" in DejaVu Sans Mono) and "ƻ" go, while "S"
# (median 0.19 to "5"), "g" (0.22 to "9") and "O" (0.38 to "0") stay.
DIGIT_LOOKALIKE_MEDIAN = 0.12
DIGIT_LOOKALIKE_MIN = 0.05
# Random-stream tags mixed into the seed of every numpy Generator.
_STREAM_CLASSES, _STREAM_RENDER, _STREAM_COLOUR, _STREAM_SPLIT = 1, 2, 3, 4
_SPEC_KEYS = {"classes": "num_classes", "per_class": "per_class", "size": "image_size",
              "seed": "seed"}


# ---------------------------------------------------------------------------
# Fonts and the character set.
# ---------------------------------------------------------------------------


def _pil():
    """Imports Pillow's ``Image``, ``ImageDraw`` and ``ImageFont`` lazily."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:  # pragma: no cover - Pillow ships with matplotlib
        raise ImportError(
            f"the glyph corpus needs Pillow ({e}); install it with `pip install Pillow`"
        ) from e
    return Image, ImageDraw, ImageFont


def _load_font(path: Path, size: int):
    """Opens ``path`` at ``size`` px with the basic (unshaped, per-glyph) layout."""
    _, _, ImageFont = _pil()
    return ImageFont.truetype(os.fspath(path), size, layout_engine=ImageFont.Layout.BASIC)


def find_fonts(dirs: Iterable[str | os.PathLike] = DEFAULT_FONT_DIRS) -> list[Path]:
    """Font files (``.ttf``/``.otf``, searched recursively) that Pillow can open.

    Args:
      dirs: directories to search; missing ones are skipped.

    Returns:
      Sorted, de-duplicated absolute paths.
    """
    found: set[Path] = set()
    for directory in dirs:
        root = Path(directory).expanduser()
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.suffix.lower() in FONT_SUFFIXES and path.is_file():
                found.add(path.resolve())
    usable = []
    for path in sorted(found):
        try:
            _load_font(path, 12)
        except OSError as e:
            logger.warning("skipping font %s: Pillow cannot open it (%s)", path, e)
            continue
        usable.append(path)
    return usable


def is_eligible_character(char: str) -> bool:
    """Whether ``char`` may be a class, judged from Unicode data alone.

    Refused: numbers (categories ``N*``: decimal digits, Roman numerals,
    superscripts, circled digits, fractions...), separators (``Z*``), control,
    format, surrogate, private-use and unassigned codepoints (``C*``), combining
    marks (``M*``), and compatibility characters whose NFKC normal form differs
    (full-width or mathematical letters, ligatures, ``²``, ``①``...), which are
    font variants of other characters. Rendering checks come on top
    (:func:`scan_charset`).
    """
    if len(char) != 1:
        return False
    if unicodedata.category(char).startswith(EXCLUDED_CATEGORY_PREFIXES):
        return False
    if unicodedata.normalize("NFKC", char) != char:
        return False
    return not any(unicodedata.category(c) in _NUMBER_CATEGORIES
                   for c in unicodedata.normalize("NFKD", char))


def class_name(codepoint: int) -> str:
    """``"U+0041 A"``: the codepoint and the character."""
    return f"U+{codepoint:04X} {chr(codepoint)}"


@dataclasses.dataclass(frozen=True)
class Charset:
    """Characters usable as classes and the fonts that draw each.

    Attributes:
      fonts: the font files, in the order ``covering`` indexes.
      codepoints: the characters, ascending.
      covering: per character, the indices into ``fonts`` of the fonts that
        draw it (ascending, at least ``min_fonts`` of them).
      merged: how many eligible characters were dropped as homoglyphs of a kept one.
      digit_lookalikes: characters dropped because they look like a digit.
    """

    fonts: tuple[Path, ...]
    codepoints: tuple[int, ...]
    covering: tuple[tuple[int, ...], ...]
    merged: int = 0
    digit_lookalikes: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.codepoints)

    @property
    def chars(self) -> list[str]:
        """The characters, in class order."""
        return [chr(cp) for cp in self.codepoints]

    def subset(self, indices: Sequence[int]) -> Charset:
        """The characters at ``indices`` (re-sorted by codepoint)."""
        order = sorted({int(i) for i in indices}, key=lambda i: self.codepoints[i])
        return dataclasses.replace(
            self,
            codepoints=tuple(self.codepoints[i] for i in order),
            covering=tuple(self.covering[i] for i in order),
        )


def _font_cmap(path: Path) -> set[int]:
    """Codepoints mapped by the font's best Unicode cmap (empty if unreadable)."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError as e:  # pragma: no cover - fontTools ships with matplotlib
        raise ImportError(
            f"the glyph corpus reads font character maps with fontTools ({e}); it is a "
            "dependency of matplotlib; install it with `pip install fonttools`"
        ) from e
    try:
        with TTFont(os.fspath(path), lazy=True, fontNumber=0) as font:
            return set(font.getBestCmap() or {})
    except Exception as e:  # noqa: BLE001 - fontTools raises many types on bad fonts
        logger.warning("skipping font %s: cannot read its character map (%s)", path, e)
        return set()


class _FontScanner:
    """Draws single characters of one font on a reusable canvas, cropped to their ink."""

    DESCRIPTOR_SIDE = 12

    def __init__(self, path: Path, size: int) -> None:
        Image, ImageDraw, _ = _pil()
        self.font = _load_font(path, size)
        self.side = 6 * size
        self.canvas = Image.new("L", (self.side, self.side), 0)
        self.draw = ImageDraw.Draw(self.canvas)
        self.origin = (2 * size, 4 * size)  # left end of the baseline
        self.digits: np.ndarray | None = None  # (10, d*d + 1) descriptors of 0-9

    def ink(self, char: str) -> tuple[bytes, np.ndarray] | None:
        """``(signature, descriptor)`` of ``char``'s ink, or None when it draws nothing.

        The signature is a digest of the ink-cropped coverage (equal for glyphs
        that differ only in position); the descriptor is that crop box-resized to
        ``DESCRIPTOR_SIDE``^2 values in [0, 1] plus the log aspect ratio.
        """
        Image = _pil()[0]
        self.canvas.paste(0, (0, 0, self.side, self.side))
        self.draw.text(self.origin, char, font=self.font, fill=255, anchor="ls")
        bbox = self.canvas.getbbox()
        if bbox is None:
            return None
        image, box = self.canvas, bbox
        if min(bbox[:2]) == 0 or max(bbox[2:]) == self.side:  # clipped: draw it exactly
            x0, y0, x1, y1 = self.font.getbbox(char)
            image = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
            _pil()[1].Draw(image).text((1 - x0, 1 - y0), char, font=self.font, fill=255)
            box = image.getbbox()
        width, height = box[2] - box[0], box[3] - box[1]
        crop = image.crop(box).tobytes()
        signature = hashlib.sha1(f"{width}x{height}".encode() + crop).digest()
        side = self.DESCRIPTOR_SIDE
        small = image.resize((side, side), Image.Resampling.BOX, box=box).tobytes()
        descriptor = np.append(np.frombuffer(small, np.uint8) / 255.0, math.log(width / height))
        return signature, descriptor

    def digit_distances(self, descriptors: np.ndarray) -> np.ndarray | None:
        """Distance of each descriptor to the nearest of this font's digits 0-9.

        Mean absolute coverage difference of the descriptors plus the absolute
        difference of their log aspect ratios. None when the font draws no digits.
        """
        if self.digits is None or not len(self.digits) or not len(descriptors):
            return None
        diff = np.abs(descriptors[:, None, :] - self.digits[None, :, :])
        return (diff[..., :-1].mean(axis=-1) + diff[..., -1]).min(axis=1)


def _is_digit_lookalike(distances: Sequence[float]) -> bool:
    """Whether per-font digit distances mark a character as looking like a digit."""
    if not len(distances):
        return False
    return (float(np.median(distances)) <= DIGIT_LOOKALIKE_MEDIAN
            or min(distances) <= DIGIT_LOOKALIKE_MIN)


class _UnionFind:
    """Disjoint sets over hashable items."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while a != root:
            self.parent[a], a = root, self.parent.get(a, a)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def scan_charset(
    fonts: Sequence[str | os.PathLike],
    *,
    min_fonts: int = DEFAULT_MIN_FONTS,
    scan_size: int = 20,
) -> Charset:
    """Finds every character drawn by at least ``min_fonts`` of ``fonts``.

    A font draws a character when its cmap maps it, and its rendering at
    ``scan_size`` px is non-empty and differs from the font's missing-glyph box
    (".notdef"). Characters are first filtered by :func:`is_eligible_character`.
    Characters whose renderings, cropped to their ink, are identical in some font
    are homoglyphs and merged (transitively); each group keeps the member drawn
    by the most fonts (then the lowest codepoint). Finally, characters that look
    like a digit 0-9 are dropped (see :data:`DIGIT_LOOKALIKE_MEDIAN`).

    Fonts are ordered by file name (then path). Takes about 3 s for DejaVu's
    22 fonts, 9 s with Noto core's 268 on top (one core).
    """
    if isinstance(min_fonts, bool) or not isinstance(min_fonts, int) or min_fonts < 1:
        raise ValueError(f"min_fonts must be an integer >= 1, got {min_fonts!r}")
    # Ordered by file name, so that the corpus does not depend on where fonts live.
    paths = tuple(sorted({Path(f) for f in fonts}, key=lambda p: (p.name, os.fspath(p))))
    cmaps = [_font_cmap(p) for p in paths]
    counts: dict[int, int] = {}
    for cmap in cmaps:
        for cp in cmap:
            counts[cp] = counts.get(cp, 0) + 1
    candidates = {cp for cp, n in counts.items()
                  if n >= min_fonts and is_eligible_character(chr(cp))}

    drawn_by: dict[int, list[int]] = {}
    digit_distances: dict[int, list[float]] = {}
    groups = _UnionFind()
    for fi, (path, cmap) in enumerate(zip(paths, cmaps, strict=True)):
        mine = sorted(cmap & candidates)
        if not mine:
            continue
        scanner = _FontScanner(path, scan_size)
        notdef = scanner.ink("\U0010ffff")
        digits = [scanner.ink(d) for d in "0123456789" if ord(d) in cmap]
        scanner.digits = np.array([d[1] for d in digits if d is not None], np.float32)
        by_signature: dict[bytes, list[int]] = {}
        drawn, descriptors = [], []
        for cp in mine:
            ink = scanner.ink(chr(cp))
            if ink is None or (notdef is not None and ink[0] == notdef[0]):
                continue
            by_signature.setdefault(ink[0], []).append(cp)
            drawn.append(cp)
            descriptors.append(ink[1])
        distances = scanner.digit_distances(np.array(descriptors, np.float32))
        if distances is not None:
            for cp, distance in zip(drawn, distances.tolist(), strict=True):
                digit_distances.setdefault(cp, []).append(distance)
        for members in by_signature.values():
            if len(members) > _MAX_HOMOGLYPH_GROUP:
                continue  # a placeholder drawn for many codepoints: not real glyphs
            for cp in members:
                drawn_by.setdefault(cp, []).append(fi)
            for cp in members[1:]:
                groups.union(members[0], cp)

    best: dict[int, int] = {}
    for cp, fis in drawn_by.items():
        root = groups.find(cp)
        other = best.get(root)
        if other is None or (len(fis), -cp) > (len(drawn_by[other]), -other):
            best[root] = cp
    usable = {cp for cp in best.values() if len(drawn_by[cp]) >= min_fonts}
    lookalikes = {cp for cp in usable if _is_digit_lookalike(digit_distances.get(cp, []))}
    kept = sorted(usable - lookalikes)
    merged = sum(1 for cp in drawn_by if len(drawn_by[cp]) >= min_fonts) - len(usable)
    return Charset(
        fonts=paths,
        codepoints=tuple(kept),
        covering=tuple(tuple(drawn_by[cp]) for cp in kept),
        merged=merged,
        digit_lookalikes=tuple(sorted(lookalikes)),
    )


def _rng(key: jax.Array, *tags: int) -> np.random.Generator:
    """A numpy Generator seeded from ``key``'s data and ``tags`` (no global state)."""
    data = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel().tolist()
    return np.random.default_rng([*data, *(int(t) for t in tags)])


def _too_few_classes_message(available: int, wanted: int, n_fonts: int) -> str:
    return (
        f"the installed fonts ({n_fonts} files) draw only {available} usable glyph classes, "
        f"but {wanted} were asked for; install more fonts (`{FONT_INSTALL_HINT}`: DejaVu alone "
        "gives about 4500 classes, with Noto core about 9200) or ask for fewer classes "
        "(--num_classes)"
    )


def choose_classes(key: jax.Array, charset: Charset, num_classes: int) -> Charset:
    """A key-based random subset of ``num_classes`` characters, sorted by codepoint.

    Asking for all of them returns them all (the key is then irrelevant).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes > len(charset):
        raise DatasetNotFoundError(
            _too_few_classes_message(len(charset), num_classes, len(charset.fonts))
        )
    picked = _rng(key, _STREAM_CLASSES).choice(len(charset), size=num_classes, replace=False)
    return charset.subset(picked.tolist())


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RenderParams:
    """Per-sample random variation (fractions are of the image side).

    Attributes:
      size_range: font size (em height) range.
      max_stroke: outline drawn around the glyph (Pillow ``stroke_width``),
        integer 0..max_stroke px at the drawing resolution (``supersample``
        times the output; thinner at smaller sizes, as it is scaled with them).
      max_rotation_deg: rotation uniform in +-this.
      max_shear: horizontal shear factor uniform in +-this.
      scale_jitter: independent x and y scale factors uniform in 1 +- this.
      max_translate: shift of the ink centre, uniform in +-this per axis
        (limited so that the glyph stays inside the image).
      fill: the transformed glyph is shrunk to fit this fraction of the side.
      supersample: glyphs are drawn and warped at this many times the output
        resolution, then box-filtered down (anti-aliasing).
      scan_size: px size of the renderings compared when scanning the fonts.
    """

    size_range: tuple[float, float] = (0.5, 0.85)
    max_stroke: int = 2
    max_rotation_deg: float = 15.0
    max_shear: float = 0.2
    scale_jitter: float = 0.1
    max_translate: float = 0.1
    fill: float = 0.95
    supersample: int = 2
    scan_size: int = 20

    def __post_init__(self) -> None:
        lo, hi = self.size_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"size_range must satisfy 0 < lo <= hi <= 1, got {self.size_range}")
        if self.max_stroke < 0 or self.supersample < 1 or self.scan_size < 4:
            raise ValueError(
                "max_stroke must be >= 0, supersample >= 1 and scan_size >= 4; got "
                f"{self.max_stroke}, {self.supersample}, {self.scan_size}"
            )
        if not 0 < self.fill <= 1 or not 0 <= self.scale_jitter < 1:
            raise ValueError(f"fill must be in (0, 1] and scale_jitter in [0, 1); got {self}")


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


class _GlyphDrawer:
    """Renders one character's glyphs at a reference size, memoised per (font, stroke)."""

    def __init__(self, paths: Sequence[Path], ref_px: int) -> None:
        self.paths = paths
        self.ref_px = ref_px
        self._fonts: dict[int, Any] = {}
        self._glyphs: dict[tuple[int, int], Any] = {}

    def start_character(self) -> None:
        self._glyphs.clear()

    def glyph(self, font_index: int, char: str, stroke: int):
        """Ink-cropped L image of ``char`` with an outline of ``stroke`` px."""
        cache_key = (font_index, stroke)
        image = self._glyphs.get(cache_key)
        if image is None:
            Image, ImageDraw, _ = _pil()
            font = self._fonts.get(font_index)
            if font is None:
                font = self._fonts[font_index] = _load_font(self.paths[font_index], self.ref_px)
            x0, y0, x1, y1 = font.getbbox(char, stroke_width=stroke)
            canvas = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
            ImageDraw.Draw(canvas).text(
                (1 - x0, 1 - y0), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255
            )
            bbox = canvas.getbbox()
            image = canvas.crop(bbox) if bbox is not None else canvas
            self._glyphs[cache_key] = image
        return image


def _affine(
    glyph_size: tuple[int, int],
    out_px: int,
    scale: float,
    angle: float,
    shear: float,
    sx: float,
    sy: float,
    tx: float,
    ty: float,
    fill: float,
) -> tuple[float, ...]:
    """Pillow AFFINE coefficients (output -> input) placing the glyph on the canvas."""
    w, h = glyph_size
    cos, sin = math.cos(angle), math.sin(angle)
    # forward = rotation @ shear @ diag(sx, sy) * scale
    a = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    a = a @ np.diag([sx, sy]) * scale
    corners = np.array([[-w, -h], [w, -h], [-w, h], [w, h]], dtype=np.float64).T / 2
    extent = np.ptp(a @ corners, axis=1)
    largest = float(extent.max())
    if largest > fill * out_px:
        a *= fill * out_px / largest
        extent *= fill * out_px / largest
    slack = np.maximum((out_px - extent) / 2, 0.0)
    centre_out = out_px / 2 + np.clip([tx * out_px, ty * out_px], -slack, slack)
    inv = np.linalg.inv(a)
    offset = np.array([w / 2, h / 2]) - inv @ centre_out
    return (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])


def font_labels(paths: Sequence[Path]) -> list[str]:
    """A name per font: its file name, or its full path where file names clash."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.name] = counts.get(p.name, 0) + 1
    return [p.name if counts[p.name] == 1 else os.fspath(p) for p in paths]


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def render_glyph_corpus(
    key: jax.Array,
    num_classes: int,
    per_class: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    fonts: Sequence[str | os.PathLike] | None = None,
    *,
    min_fonts: int = DEFAULT_MIN_FONTS,
    params: RenderParams = RenderParams(),
    charset: Charset | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GlyphCorpus:
    """Renders ``per_class`` glyph masks for each of ``num_classes`` characters.

    Each sample: a font drawn uniformly among those that draw the character,
    a font size in ``params.size_range`` of the image side, a Pillow stroke
    width of 0..``params.max_stroke``, then rotation, shear, x/y scale and
    translation jitter; the ink is centred, shrunk if it would not fit, and
    anti-aliased by supersampling.

    Args:
      key: a ``jax.random`` key; the same key (and fonts) give identical masks.
      num_classes: number of characters (classes), a key-based subset of the
        usable ones (:func:`choose_classes`).
      per_class: samples per class.
      image_size: side of the square masks in pixels.
      fonts: font files (None: :func:`find_fonts` of ``/usr/share/fonts``).
      min_fonts: a character must be drawn by at least this many fonts.
      params: the random variation.
      charset: a precomputed :func:`scan_charset` (skips the scan; ``fonts``
        and ``min_fonts`` are then ignored).
      progress: called as ``progress(classes_done, num_classes)``.

    Returns:
      :class:`GlyphCorpus` ``(masks, labels, chars, font_names)`` (unpacks as a
      4-tuple): masks ``(N, S, S)`` uint8, labels ``(N,)`` int32 (class-major
      order), the class characters, and each sample's font file name.

    Raises:
      DatasetNotFoundError: no fonts, or fewer usable characters than
        ``num_classes``.
    """
    num_classes = _check_positive_int(num_classes, "num_classes")
    per_class = _check_positive_int(per_class, "per_class")
    image_size = _check_positive_int(image_size, "image_size")
    if charset is None:
        paths = find_fonts() if fonts is None else [Path(f) for f in fonts]
        if not paths:
            raise DatasetNotFoundError(no_fonts_message(DEFAULT_FONT_DIRS if fonts is None
                                                         else ["(the fonts given)"]))
        charset = scan_charset(paths, min_fonts=min_fonts, scan_size=params.scan_size)
    chosen = choose_classes(key, charset, num_classes)

    Image = _pil()[0]
    ss = params.supersample
    out_px = image_size * ss
    lo, hi = params.size_range
    ref_px = max(4, round(hi * out_px))
    drawer = _GlyphDrawer(chosen.fonts, ref_px)
    masks = np.zeros((num_classes * per_class, image_size, image_size), np.uint8)
    font_ids = np.zeros(num_classes * per_class, np.int64)
    for c, (cp, covering) in enumerate(zip(chosen.codepoints, chosen.covering, strict=True)):
        # One Generator per class (seeded by its codepoint): classes are independent.
        rng = _rng(key, _STREAM_RENDER, cp)
        n = per_class
        which = np.asarray(covering)[rng.integers(len(covering), size=n)]
        scale = rng.uniform(lo, hi, n) / hi
        stroke = rng.integers(0, params.max_stroke + 1, n)
        angle = np.deg2rad(rng.uniform(-1, 1, n) * params.max_rotation_deg)
        shear = rng.uniform(-1, 1, n) * params.max_shear
        sxy = 1 + rng.uniform(-1, 1, (2, n)) * params.scale_jitter
        txy = rng.uniform(-1, 1, (2, n)) * params.max_translate
        drawer.start_character()
        char = chr(cp)
        for i in range(n):
            glyph = drawer.glyph(int(which[i]), char, int(stroke[i]))
            coeffs = _affine(
                glyph.size, out_px, scale[i], angle[i], shear[i], sxy[0, i], sxy[1, i],
                txy[0, i], txy[1, i], params.fill,
            )
            warped = glyph.transform(
                (out_px, out_px), Image.Transform.AFFINE, coeffs,
                resample=Image.Resampling.BILINEAR, fillcolor=0,
            )
            if ss > 1:
                warped = warped.reduce(ss)
            masks[c * per_class + i] = np.asarray(warped)
        font_ids[c * per_class: (c + 1) * per_class] = which
        if progress is not None:
            progress(c + 1, num_classes)
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    names = font_labels(chosen.fonts)
    return GlyphCorpus(masks, labels, chosen.chars, [names[i] for i in font_ids])


# ---------------------------------------------------------------------------
# The cached file.
# ---------------------------------------------------------------------------


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


def font_record(path: Path) -> dict[str, Any]:
    """Name, path, size in bytes and SHA-1 of a font file (for the manifest)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "path": os.fspath(path), "bytes": path.stat().st_size,
            "sha1": digest.hexdigest()}


def make_manifest(
    corpus: GlyphCorpus,
    *,
    seed: int | None,
    fonts: Sequence[Path],
    params: RenderParams = RenderParams(),
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


def _atomic_write(path: Path, write: Callable[[Any], None], suffix: str) -> None:
    """Calls ``write(file)`` on a temporary file next to ``path``, then renames it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the corpus is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_corpus(path: str | os.PathLike, corpus: GlyphCorpus, manifest: dict[str, Any]) -> Path:
    """Writes the masks, labels, fonts and manifest to ``path`` (compressed ``.npz``).

    Both ``path`` and a human-readable ``<path minus .npz>.json`` copy of the
    manifest are written atomically (temporary file, then ``os.replace``).
    """
    path = Path(path).expanduser()
    font_list = sorted(set(corpus.font_names))
    index = {n: i for i, n in enumerate(font_list)}
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    arrays = {
        "masks": np.asarray(corpus.masks, np.uint8),
        "labels": np.asarray(corpus.labels, np.int32),
        "chars": np.array(corpus.chars, dtype=str),
        "font_list": np.array(font_list, dtype=str),
        "font_ids": np.array([index[n] for n in corpus.font_names], dtype=np.int16),
        "manifest": np.array(text),
    }
    _atomic_write(path, lambda f: np.savez_compressed(f, **arrays), ".npz")
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(text.encode()), ".json")
    return path


def load_corpus(path: str | os.PathLike) -> tuple[GlyphCorpus, dict[str, Any]]:
    """Reads a corpus written by :func:`save_corpus`; returns it and its manifest."""
    path = Path(path).expanduser()
    remake = f"delete it and run `{MAKE_COMMAND}` again"
    try:
        with np.load(path, allow_pickle=False) as f:
            contents = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable glyph corpus ({e}); {remake}") from e
    missing = {"masks", "labels", "chars", "font_list", "font_ids", "manifest"} - set(contents)
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


# ---------------------------------------------------------------------------
# Colour and split (at load time).
# ---------------------------------------------------------------------------


def colour_pairs(
    key: jax.Array, n: int, min_contrast: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(foreground, background)`` uint8 RGB colours, ``(n, 3)`` each.

    Background uniform; foreground uniform among colours whose luma (Rec. 601)
    differs from the background's by at least ``min_contrast`` (of 255), by
    rejection over 16 candidates, falling back to black or white.
    """
    rng = _rng(key, _STREAM_COLOUR)
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
        perm = _rng(key, _STREAM_SPLIT, int(c)).permutation(members.size)
        n_test = max(1, round(test_fraction * members.size)) if members.size >= 2 else 0
        test.append(members[perm[:n_test]])
        train.append(members[perm[n_test:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ---------------------------------------------------------------------------
# The data source.
# ---------------------------------------------------------------------------


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
        return " ".join([MAKE_COMMAND, *flags])


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


def no_fonts_message(dirs: Iterable[Any]) -> str:
    """The error text for a font search that found nothing."""
    return (
        f"no usable .ttf/.otf fonts found in {', '.join(map(str, dirs))}; install some with "
        f"`{FONT_INSTALL_HINT}`"
    )


def corpus_key(seed: int) -> jax.Array:
    """The key a corpus with this seed is made from (threefry2x32, pinned)."""
    return jax.random.key(seed, impl="threefry2x32")


def make_corpus(
    spec: CorpusSpec,
    out: str | os.PathLike,
    *,
    font_dirs: Sequence[str | os.PathLike] = DEFAULT_FONT_DIRS,
    min_fonts: int = DEFAULT_MIN_FONTS,
    params: RenderParams = RenderParams(),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Finds fonts, renders ``spec`` with ``jax.random.key(seed)`` and saves it to ``out``.

    The key is a threefry2x32 key (pinned, so that the corpus is the same under
    any JAX PRNG configuration). Returns the path and the manifest.
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
    :data:`MAX_AUTO_RENDER_IMAGES` images; the default takes under a minute);
    a missing file under ``data_dir`` is an error.
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
        logger.warning(
            "glyph corpus %s not found: rendering it now from the installed fonts (%d images, "
            "once; equivalent to `%s`)", path, n_images, corpus_spec.command,
        )
        start = time.perf_counter()
        try:
            make_corpus(corpus_spec, path, font_dirs=DEFAULT_FONT_DIRS)
        except DatasetNotFoundError as e:
            raise DatasetNotFoundError(
                f"glyph corpus {path} not found and cannot be rendered here: {e}. Make it on a "
                f"machine with fonts using `{corpus_spec.command}` and copy it to {path} (or "
                "pass --data_dir=PATH)."
            ) from e
        logger.warning("rendered glyph corpus %s in %.1f s", path, time.perf_counter() - start)
    corpus, manifest = load_corpus(path)
    seed = manifest.get("seed")
    return raw_data_from_corpus(corpus, DEFAULT_SEED if seed is None else int(seed))
