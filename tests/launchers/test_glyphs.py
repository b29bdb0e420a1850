"""experiments.make_glyphs, the checkout's alias of the glyph corpus builder's entry point
(mgdd_jax.glyph_corpus, tested in tests/test_glyphs.py): the same command, the same checks.

Skipped where the three DejaVu test fonts are not installed (fonts-dejavu-core).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._helpers import check_make_glyphs_cli, link_test_fonts, needs_test_fonts

pytestmark = needs_test_fonts


@pytest.fixture(scope="module")
def font_dir(tmp_path_factory) -> Path:
    """A directory holding (links to) the three test fonts."""
    return link_test_fonts(tmp_path_factory.mktemp("fonts"))


@pytest.mark.parametrize("module", ["experiments.make_glyphs"])
def test_make_glyphs_cli(tmp_path, font_dir, module):
    """The builder's entry point, through the checkout's alias of it."""
    check_make_glyphs_cli(module, tmp_path, font_dir)
