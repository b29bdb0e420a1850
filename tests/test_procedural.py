"""The offline meta-training sources of issue 10 item 5: ``procedural`` and ``mix:``."""

import numpy as np
import pytest

from mgdd_jax import data
from mgdd_jax.data import procedural, sources
from mgdd_jax.data import settings as data_settings

TINY = "procedural:classes=6,per_class=10,size=16"


def test_rasterise_against_a_loop():
    rng = np.random.default_rng(0)
    pts = rng.random((3, 50, 2))
    pts[0, 0] = (1.0, 1.0)  # the far edge lands in the last pixel
    want = np.zeros((3, 8, 8), np.float32)
    for n in range(3):
        for x, y in pts[n]:
            want[n, min(int(y * 8), 7), min(int(x * 8), 7)] += 1
    np.testing.assert_array_equal(procedural.rasterise(pts, 8), want)


def test_chaos_game_draws_the_sierpinski_triangle():
    """Three maps x -> x/2 + corner/2: every point lies in the attractor, so none in the
    removed middle triangle (up to the 2^-8 left by the burn-in), and all three corners'
    sub-triangles are visited about equally (p = 1/3 each)."""
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = np.broadcast_to(0.5 * np.eye(2), (1, 3, 2, 2))
    b = (corners / 2)[None]
    pts = procedural._chaos_game(np.random.default_rng(1), a, b, np.full((1, 3), 1 / 3))[0]
    x, y = pts[:, 0], pts[:, 1]
    eps = 2.0**-8
    assert np.all((x >= -eps) & (y >= -eps) & (x + y <= 1 + eps))
    in_middle = (x < 0.5 - eps) & (y < 0.5 - eps) & (x + y > 0.5 + eps)
    assert not in_middle.any()  # the removed middle triangle stays empty
    # and so does the middle of the lower-left copy (the next level of the recursion)
    assert not ((x < 0.25 - eps) & (y < 0.25 - eps) & (x + y > 0.25 + eps)).any()
    share = [np.mean((x < 0.5) & (y < 0.5)), np.mean(x >= 0.5), np.mean(y >= 0.5)]
    np.testing.assert_allclose(share, 1 / 3, atol=0.03)


def test_paint_takes_the_last_covering_leaf():
    rng = np.random.default_rng(2)
    inside = rng.random((2, 5, 4, 4)) < 0.3
    grey = rng.random((2, 5))
    want = np.empty((2, 4, 4))
    for n in range(2):
        for i in range(4):
            for j in range(4):
                covering = [leaf for leaf in range(5) if inside[n, leaf, i, j]]
                want[n, i, j] = grey[n, covering[-1] if covering else 0]
    np.testing.assert_array_equal(procedural.paint(inside, grey), want)


@pytest.mark.parametrize("kind", procedural.KINDS)
def test_each_kind_makes_varied_deterministic_classes(kind):
    spec = procedural.ProceduralSpec(kinds=(kind,), num_classes=3, per_class=6, image_size=16)
    masks = procedural.class_masks(spec, 1)
    assert masks.shape == (6, 16, 16) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, procedural.class_masks(spec, 1))  # deterministic
    # a class is a function of its index and the seed only, not of the class count
    bigger = procedural.ProceduralSpec(kinds=(kind,), num_classes=9, per_class=6,
                                       image_size=16)
    np.testing.assert_array_equal(masks, procedural.class_masks(bigger, 1))
    assert not np.array_equal(masks, procedural.class_masks(spec, 2))
    assert len({m.tobytes() for m in masks}) == 6  # samples of one class differ
    assert masks.std() > 10  # not blank
    other_seed = procedural.ProceduralSpec(kinds=(kind,), num_classes=3, per_class=6,
                                           image_size=16, seed=1)
    assert not np.array_equal(masks, procedural.class_masks(other_seed, 1))


def test_fractal_classes_fill_part_of_the_canvas():
    spec = procedural.ProceduralSpec(kinds=("fractal",), num_classes=4, per_class=8,
                                     image_size=32)
    for c in range(4):
        fill = (procedural.class_masks(spec, c) > 0).mean()
        assert 0.02 < fill < 0.8, (c, fill)


def test_loads_as_a_dataset_with_split_and_names():
    raw = sources.load_raw(TINY)
    assert raw.num_classes == 6 and raw.x_train.shape[1:] == (16, 16, 3)
    assert raw.x_train.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(raw.y_train), [9] * 6)  # 90/10 per class
    np.testing.assert_array_equal(np.bincount(raw.y_test), [1] * 6)
    assert raw.class_names[:4] == ("fractal-0", "deadleaves-1", "texture-2", "fractal-3")
    ds = data.load_dataset(TINY)
    assert ds.image_shape == (16, 16, 3) and ds.num_classes == 6
    only = sources.load_raw("procedural:kinds=texture/fractal,classes=4,per_class=4,size=8")
    assert only.class_names == ("texture-0", "fractal-1", "texture-2", "fractal-3")


@pytest.mark.parametrize("spec, match", [
    ("kinds=clouds", "kinds"), ("kinds=fractal/fractal", "kinds"), ("classes=1", "classes"),
    ("per_class=1", "per_class"), ("size=4", "size"), ("colour=3", "KEY=VALUE"),
    ("classes=x", "KEY=VALUE"), ("kinds=", "KEY=VALUE"),
])
def test_bad_procedural_spec(spec, match):
    with pytest.raises(ValueError, match=match):
        data.load_dataset(f"procedural:{spec}")


def test_mix_concatenates_classes_with_offsets():
    a = sources.load_raw(TINY)
    b = sources.load_raw("procedural:kinds=texture,classes=3,per_class=10,size=16,seed=1")
    mix = sources.load_raw(f"mix:{TINY}"
                           "+procedural:kinds=texture,classes=3,per_class=10,size=16,seed=1")
    assert mix.num_classes == 9
    np.testing.assert_array_equal(mix.x_train, np.concatenate([a.x_train, b.x_train]))
    np.testing.assert_array_equal(mix.y_train, np.concatenate([a.y_train, b.y_train + 6]))
    np.testing.assert_array_equal(mix.y_test, np.concatenate([a.y_test, b.y_test + 6]))
    assert mix.class_names[0] == f"{TINY}/fractal-0"
    assert mix.class_names[6].endswith("seed=1/texture-0")
    # a class subset of a mixture picks across its parts
    sub = sources.load_raw(f"mix:{TINY}+procedural:kinds=texture,classes=3,per_class=10,"
                           "size=16,seed=1#classes=5-6")
    assert sub.class_names == (mix.class_names[5], mix.class_names[6])


@pytest.mark.parametrize("spec, match", [
    ("mix:digits", "at least two"), ("mix:digits+digits", "at least two"),
    ("mix:digits+", "at least two"),
    (f"mix:digits+{TINY}", "share image shape"),
    ("mix:digits+nope", "unknown dataset 'nope'"),
])
def test_bad_mix(spec, match):
    with pytest.raises(ValueError, match=match):
        data.load_dataset(spec)


def test_settings_rows_of_the_new_sources():
    for name in ("procedural", TINY):
        row = data_settings.settings_for(name)
        assert (row.zca, row.flip) == (False, True)
    assert data_settings.settings_for("mix:glyphs+procedural").zca is False
