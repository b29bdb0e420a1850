"""Rendering: per-sample random font, size, stroke and affine jitter, as grey coverage masks."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mgdd_jax.data.errors import DatasetNotFoundError
from mgdd_jax.data.glyph_format import DEFAULT_IMAGE_SIZE, STREAM_RENDER, GlyphCorpus
from mgdd_jax.glyph_corpus.charset import (
    DEFAULT_MIN_FONTS,
    Charset,
    choose_classes,
    scan_charset,
)
from mgdd_jax.glyph_corpus.fonts import (
    DEFAULT_FONT_DIRS,
    find_fonts,
    font_labels,
    load_font,
    no_fonts_message,
    pil,
)
from mgdd_jax.rng import numpy_rng


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
            Image, ImageDraw, _ = pil()
            font = self._fonts.get(font_index)
            if font is None:
                font = self._fonts[font_index] = load_font(self.paths[font_index], self.ref_px)
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

    Image = pil()[0]
    ss = params.supersample
    out_px = image_size * ss
    lo, hi = params.size_range
    ref_px = max(4, round(hi * out_px))
    drawer = _GlyphDrawer(chosen.fonts, ref_px)
    masks = np.zeros((num_classes * per_class, image_size, image_size), np.uint8)
    font_ids = np.zeros(num_classes * per_class, np.int64)
    for c, (cp, covering) in enumerate(zip(chosen.codepoints, chosen.covering, strict=True)):
        # One Generator per class (seeded by its codepoint): classes are independent.
        rng = numpy_rng(key, STREAM_RENDER, cp)
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
