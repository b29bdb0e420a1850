"""The character set: which characters the fonts draw, distinct from digits and from each other."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from mgdd_jax.data.errors import DatasetNotFoundError
from mgdd_jax.data.glyph_format import FONT_INSTALL_HINT, STREAM_CLASSES
from mgdd_jax.glyph_corpus.fonts import font_cmap, load_font, pil
from mgdd_jax.rng import numpy_rng

DEFAULT_MIN_FONTS = 2
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



class _FontScanner:
    """Draws single characters of one font on a reusable canvas, cropped to their ink."""

    DESCRIPTOR_SIDE = 12

    def __init__(self, path: Path, size: int) -> None:
        Image, ImageDraw, _ = pil()
        self.font = load_font(path, size)
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
        Image = pil()[0]
        self.canvas.paste(0, (0, 0, self.side, self.side))
        self.draw.text(self.origin, char, font=self.font, fill=255, anchor="ls")
        bbox = self.canvas.getbbox()
        if bbox is None:
            return None
        image, box = self.canvas, bbox
        if min(bbox[:2]) == 0 or max(bbox[2:]) == self.side:  # clipped: draw it exactly
            x0, y0, x1, y1 = self.font.getbbox(char)
            image = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
            pil()[1].Draw(image).text((1 - x0, 1 - y0), char, font=self.font, fill=255)
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

    Fonts are ordered by file name (then path).
    """
    if isinstance(min_fonts, bool) or not isinstance(min_fonts, int) or min_fonts < 1:
        raise ValueError(f"min_fonts must be an integer >= 1, got {min_fonts!r}")
    # Ordered by file name, so that the corpus does not depend on where fonts live.
    paths = tuple(sorted({Path(f) for f in fonts}, key=lambda p: (p.name, os.fspath(p))))
    cmaps = [font_cmap(p) for p in paths]
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
    picked = numpy_rng(key, STREAM_CLASSES).choice(len(charset), size=num_classes, replace=False)
    return charset.subset(picked.tolist())
