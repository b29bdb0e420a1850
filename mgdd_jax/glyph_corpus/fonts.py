"""Font files: finding the usable ones, their character maps, names and manifest records."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mgdd_jax.data.glyph_format import FONT_INSTALL_HINT

logger = logging.getLogger(__name__)

DEFAULT_FONT_DIRS: tuple[str, ...] = ("/usr/share/fonts",)
FONT_SUFFIXES: tuple[str, ...] = (".ttf", ".otf")


def pil():
    """Imports Pillow's ``Image``, ``ImageDraw`` and ``ImageFont`` lazily."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:  # pragma: no cover - Pillow ships with matplotlib
        raise ImportError(
            f"the glyph corpus needs Pillow ({e}); install it with `pip install Pillow`"
        ) from e
    return Image, ImageDraw, ImageFont


def load_font(path: Path, size: int):
    """Opens ``path`` at ``size`` px with the basic (unshaped, per-glyph) layout."""
    _, _, ImageFont = pil()
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
            load_font(path, 12)
        except OSError as e:
            logger.warning("skipping font %s: Pillow cannot open it (%s)", path, e)
            continue
        usable.append(path)
    return usable



def font_cmap(path: Path) -> set[int]:
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



def font_labels(paths: Sequence[Path]) -> list[str]:
    """A name per font: its file name, or its full path where file names clash."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.name] = counts.get(p.name, 0) + 1
    return [p.name if counts[p.name] == 1 else os.fspath(p) for p in paths]



def font_record(path: Path) -> dict[str, Any]:
    """Name, path, size in bytes and SHA-1 of a font file (for the manifest)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "path": os.fspath(path), "bytes": path.stat().st_size,
            "sha1": digest.hexdigest()}



def no_fonts_message(dirs: Iterable[Any]) -> str:
    """The error text for a font search that found nothing."""
    return (
        f"no usable .ttf/.otf fonts found in {', '.join(map(str, dirs))}; install some with "
        f"`{FONT_INSTALL_HINT}`"
    )
