"""Tests for the glyph corpus builder (mgdd_jax.glyph_corpus) and its reader, the ``glyphs``
data source (mgdd_jax.data.glyphs).

They render tiny corpora (a few classes x 4 samples at 16x16) from three DejaVu fonts
(Debian package fonts-dejavu-core), and are skipped where those are not installed.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import jax
import numpy as np
import pytest

from mgdd_jax import data, glyph_corpus
from mgdd_jax.data import glyphs

from tests._helpers import (
    DEJAVU,
    TEST_FONTS,
    check_make_glyphs_cli,
    link_test_fonts,
    needs_test_fonts,
)

REPO = Path(__file__).resolve().parents[1]

pytestmark = needs_test_fonts


@pytest.fixture(scope="module")
def font_dir(tmp_path_factory) -> Path:
    """A directory holding (links to) the three test fonts."""
    return link_test_fonts(tmp_path_factory.mktemp("fonts"))


@pytest.fixture(scope="module")
def charset(font_dir) -> glyph_corpus.Charset:
    return glyph_corpus.scan_charset(glyph_corpus.find_fonts([font_dir]))


@pytest.fixture(scope="module")
def corpus(charset) -> glyph_corpus.GlyphCorpus:
    return glyph_corpus.render_glyph_corpus(jax.random.key(0), 5, 4, 16, charset=charset)


def _tiny_corpus_file(path: Path, charset: glyph_corpus.Charset, seed: int = 3) -> Path:
    corpus = glyph_corpus.render_glyph_corpus(glyphs.corpus_key(seed), 6, 4, 16, charset=charset)
    manifest = glyph_corpus.make_manifest(corpus, seed=seed, fonts=charset.fonts,
                                    available_classes=len(charset))
    return glyph_corpus.save_corpus(path, corpus, manifest)


# ---------------------------------------------------------------------------
# Fonts and the character set.
# ---------------------------------------------------------------------------


def test_find_fonts_sorted_and_filtered(tmp_path, font_dir):
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "DejaVuSerif.ttf").symlink_to(DEJAVU / "DejaVuSerif.ttf")
    found = glyph_corpus.find_fonts([tmp_path, tmp_path / "missing"])
    assert found == [DEJAVU / "DejaVuSerif.ttf"]
    fonts = glyph_corpus.find_fonts([font_dir])
    assert fonts == sorted(fonts) and [p.name for p in fonts] == sorted(TEST_FONTS)


@pytest.mark.parametrize("char", ["5", "٣", "²", "①", "½", "Ⅳ", "Ａ", "ﬁ", " ", "\u00a0",
                                  "\u200b", "\n", "\u0301", "\ue000"])
def test_ineligible_characters(char):
    assert not glyph_corpus.is_eligible_character(char)


@pytest.mark.parametrize("char", ["A", "z", "Ж", "λ", "→", "@", "ß"])
def test_eligible_characters(char):
    assert glyph_corpus.is_eligible_character(char)


def test_charset_has_no_digits_marks_or_homoglyphs(charset):
    chars = charset.chars
    assert len(chars) > 1000  # three DejaVu fonts draw thousands of characters
    assert list(charset.codepoints) == sorted(set(charset.codepoints))
    assert not set("0123456789") & set(chars)
    assert all(unicodedata.category(c)[0] not in "NZCM" for c in chars)
    # Latin A, Greek Alpha and Cyrillic A are one glyph in DejaVu: only A stays.
    assert "A" in chars and "\u0391" not in chars and "\u0410" not in chars
    # Cyrillic Ze is drawn like the digit 3 in some fonts.
    assert "\u0417" not in chars
    assert all(len(c) >= glyph_corpus.DEFAULT_MIN_FONTS for c in charset.covering)


def test_too_many_classes_is_an_error(charset):
    with pytest.raises(data.DatasetNotFoundError, match="fonts-noto-core"):
        glyph_corpus.choose_classes(jax.random.key(0), charset, len(charset) + 1)


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


def test_corpus_shapes_and_content(corpus):
    masks, labels, chars, font_names = corpus
    assert masks.shape == (20, 16, 16) and masks.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.tolist() == [c for c in range(5) for _ in range(4)]
    assert len(chars) == 5 and [ord(c) for c in chars] == sorted(ord(c) for c in chars)
    assert not set("0123456789") & set(chars)
    assert all(unicodedata.category(c) != "Nd" for c in chars)
    assert len(font_names) == 20 and set(font_names) <= set(TEST_FONTS)
    assert (masks.reshape(20, -1).max(axis=1) > 128).all()  # every sample has ink
    assert (masks.reshape(20, -1).min(axis=1) == 0).all()  # ... and background
    for c in range(5):
        group = masks[labels == c].reshape(4, -1)
        assert len({row.tobytes() for row in group}) == 4  # no two samples alike


def test_rendering_is_deterministic(charset, font_dir, corpus):
    again = glyph_corpus.render_glyph_corpus(jax.random.key(0), 5, 4, 16, fonts=[
        font_dir / name for name in TEST_FONTS])  # scans the fonts itself
    assert again.masks.tobytes() == corpus.masks.tobytes()
    assert again.chars == corpus.chars and again.font_names == corpus.font_names
    other = glyph_corpus.render_glyph_corpus(jax.random.key(1), 5, 4, 16, charset=charset)
    assert other.masks.tobytes() != corpus.masks.tobytes()


def test_render_rejects_bad_arguments(charset):
    with pytest.raises(ValueError, match="per_class"):
        glyph_corpus.render_glyph_corpus(jax.random.key(0), 2, 0, 16, charset=charset)
    with pytest.raises(data.DatasetNotFoundError, match="fonts-dejavu-core"):
        glyph_corpus.render_glyph_corpus(jax.random.key(0), 2, 2, 16, fonts=[])


# ---------------------------------------------------------------------------
# Colour, split, file.
# ---------------------------------------------------------------------------


def test_colourise(corpus):
    key = glyphs.corpus_key(0)
    rgb = glyphs.colourise(key, corpus.masks)
    assert rgb.shape == (20, 16, 16, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, glyphs.colourise(key, corpus.masks))
    fg, bg = glyphs.colour_pairs(key, 20)
    luma = np.array([0.299, 0.587, 0.114])
    assert (np.abs(fg @ luma - bg @ luma) >= 0.3 * 255 - 1e-9).all()
    for i in range(20):
        m = corpus.masks[i]
        assert (rgb[i][m == 0] == bg[i]).all() and (rgb[i][m == 255] == fg[i]).all()
        lo, hi = np.minimum(fg[i], bg[i]), np.maximum(fg[i], bg[i])
        assert ((rgb[i] >= lo) & (rgb[i] <= hi)).all()


def test_split_per_class(corpus):
    labels = np.repeat(np.arange(7), 20)
    train, test = glyphs.split_per_class(glyphs.corpus_key(0), labels)
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(140))
    assert (np.bincount(labels[test]) == 2).all() and (np.bincount(labels[train]) == 18).all()
    again = glyphs.split_per_class(glyphs.corpus_key(0), labels)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    train4, test4 = glyphs.split_per_class(glyphs.corpus_key(0), corpus.labels)
    assert (np.bincount(corpus.labels[test4]) == 1).all() and len(train4) == 15


def test_save_load_round_trip_is_atomic(tmp_path, charset, monkeypatch):
    path = _tiny_corpus_file(tmp_path / "out" / "tiny.npz", charset)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.json", "tiny.npz"]
    loaded, manifest = glyphs.load_corpus(path)
    assert loaded.masks.shape == (24, 16, 16) and loaded.labels.dtype == np.int32
    assert manifest["seed"] == 3 and manifest["num_classes"] == 6
    assert manifest["class_names"] == [glyphs.class_name(ord(c)) for c in loaded.chars]
    assert all(len(f["sha1"]) == 40 and f["bytes"] > 0 for f in manifest["fonts"])
    umask = os.umask(0)
    os.umask(umask)
    for written in path.parent.iterdir():  # outputs.atomic_path's permissions, not mkstemp's
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", fail)
    with pytest.raises(OSError, match="disk full"):
        glyph_corpus.save_corpus(tmp_path / "out" / "other.npz", loaded, manifest)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.json", "tiny.npz"]


def test_corrupt_file_is_reported(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="python -m mgdd_jax.glyph_corpus"):
        glyphs.load_corpus(bad)


# ---------------------------------------------------------------------------
# The data source.
# ---------------------------------------------------------------------------


def test_load_dataset_from_file(tmp_path, charset):
    path = _tiny_corpus_file(tmp_path / "tiny.npz", charset)
    ds = data.load_dataset("glyphs", data_dir=path)
    assert ds.num_classes == 6 and len(ds.class_names) == 6
    assert all(n.startswith("U+") and len(n.split(" ")[1]) == 1 for n in ds.class_names)
    assert ds.x_train.shape == (18, 16, 16, 3) and ds.x_test.shape == (6, 16, 16, 3)
    assert sorted(ds.y_test.tolist()) == list(range(6))
    raw = data.sources.load_raw("glyphs", path)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() > 200


def test_load_dataset_finds_file_under_data_dir(tmp_path, charset):
    spec = glyphs.parse_spec("classes=6,per_class=4,size=16,seed=3")
    _tiny_corpus_file(tmp_path / "glyphs" / spec.filename, charset)
    ds = data.load_dataset("glyphs:classes=6,per_class=4,size=16,seed=3", data_dir=tmp_path)
    assert ds.num_classes == 6


def test_missing_corpus_names_the_command(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_dataset("glyphs", data_dir=tmp_path)
    message = str(e.value)
    assert "python -m mgdd_jax.glyph_corpus" in message and "experiments" not in message
    assert str(tmp_path / "glyphs" / glyphs.CorpusSpec().filename) in message
    with pytest.raises(data.DatasetNotFoundError, match="--num_classes=2 --per_class=3"):
        data.load_dataset("glyphs:classes=2,per_class=3", data_dir=tmp_path)


def test_missing_small_corpus_is_rendered_into_the_cache(font_dir, monkeypatch):
    monkeypatch.setattr(glyph_corpus, "DEFAULT_FONT_DIRS", (os.fspath(font_dir),))
    ds = data.load_dataset("glyphs:classes=3,per_class=4,size=16,seed=5")
    assert ds.num_classes == 3 and ds.x_train.shape == (9, 16, 16, 3)
    cache = Path(os.environ["MGDD_JAX_CACHE"]) / "glyphs"
    assert sorted(p.name for p in cache.iterdir()) == [
        "glyphs-c3-n4-s16-seed5.json", "glyphs-c3-n4-s16-seed5.npz"]


def test_missing_corpus_without_fonts(tmp_path, monkeypatch):
    monkeypatch.setattr(glyph_corpus, "DEFAULT_FONT_DIRS", (os.fspath(tmp_path / "no-fonts"),))
    with pytest.raises(data.DatasetNotFoundError, match="apt-get install fonts-dejavu-core"):
        data.load_dataset("glyphs:classes=3,per_class=4")
    assert not (Path(os.environ["MGDD_JAX_CACHE"]) / "glyphs").exists() or not any(
        (Path(os.environ["MGDD_JAX_CACHE"]) / "glyphs").iterdir())


@pytest.mark.parametrize("spec", ["classes", "classes=x", "colour=3", "classes=0", "a=1,b=2"])
def test_bad_spec(spec):
    with pytest.raises(ValueError, match="glyph corpus spec"):
        data.load_dataset(f"glyphs:{spec}")


@pytest.mark.parametrize("module", ["mgdd_jax.glyph_corpus"])
def test_make_glyphs_cli(tmp_path, font_dir, module):
    """The builder's entry point (the checkout's alias of it, experiments.make_glyphs, is
    tested in tests/launchers/test_glyphs.py)."""
    check_make_glyphs_cli(module, tmp_path, font_dir)


# ---------------------------------------------------------------------------
# Layering: the reader does not need the builder.
# ---------------------------------------------------------------------------


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only; imports inside functions are lazy
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_data_package_does_not_import_the_builder():
    for path in (REPO / "mgdd_jax" / "data").glob("*.py"):
        imported = _module_level_imports(path)
        assert not any(n.startswith("mgdd_jax.glyph_corpus") for n in imported), path
    # glyphs <- sources only: no cycle between the reader and the registry.
    assert "mgdd_jax.data.sources" not in _module_level_imports(
        REPO / "mgdd_jax" / "data" / "glyphs.py")


def test_reader_and_builder_share_only_the_format():
    """The builder imports the format module, never the reader; the format imports neither."""
    for path in (REPO / "mgdd_jax" / "glyph_corpus").glob("*.py"):
        imported = _module_level_imports(path)
        assert not any(n.startswith("mgdd_jax.data.glyphs") for n in imported), path
    fmt = _module_level_imports(REPO / "mgdd_jax" / "data" / "glyph_format.py")
    assert not any(n.startswith(("mgdd_jax.glyph_corpus", "mgdd_jax.data.glyphs")) for n in fmt)
    assert glyph_corpus.CorpusSpec is glyphs.CorpusSpec  # one definition, seen by both


def test_library_messages_name_the_package_command():
    """Every user-facing command the reader and builder print is the package's own."""
    assert glyph_corpus.BUILD_COMMAND == "python -m mgdd_jax.glyph_corpus"
    assert glyphs.CorpusSpec(num_classes=2).command == (
        "python -m mgdd_jax.glyph_corpus --num_classes=2")
    for path in [*(REPO / "mgdd_jax" / "glyph_corpus").glob("*.py"),
                 REPO / "mgdd_jax" / "data" / "glyphs.py",
                 REPO / "mgdd_jax" / "data" / "glyph_format.py"]:
        assert "experiments" not in path.read_text(), path


@pytest.mark.parametrize("module", ["mgdd_jax.data.glyphs", "mgdd_jax.data.glyph_format",
                                    "mgdd_jax.data.sources", "mgdd_jax.glyph_corpus"])
def test_modules_import_in_a_fresh_process(module):
    code = (f"import sys, {module}; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('PIL', 'fontTools')]; "
            f"assert {module!r} == 'mgdd_jax.glyph_corpus' or not heavy, heavy")
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr


def test_loading_a_cached_corpus_does_not_import_the_builder(tmp_path, charset):
    path = _tiny_corpus_file(tmp_path / "tiny.npz", charset)
    code = ("import sys; from mgdd_jax import data; "
            f"ds = data.load_dataset('glyphs', data_dir={os.fspath(path)!r}); "
            "assert ds.num_classes == 6; "
            "assert 'mgdd_jax.glyph_corpus' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
