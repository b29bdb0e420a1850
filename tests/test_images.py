"""The ``images:DIR`` source: layout, options, cache, settable flips, and every bad tree.

Trees are a few dozen tiny PNGs written into ``tmp_path``; the cache is ``tmp_path/cache``
(``MGDD_JAX_CACHE``, set by conftest).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mgdd_jax import data, evaluation
from mgdd_jax.data import images, settings, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_tree(root, classes, ext=".png"):
    """``classes``: ``{name: uint8 array (n, H, W[, C])}`` -> ``root/name/{i:03d}.png``."""
    for name, arrays in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(arrays):
            Image.fromarray(np.asarray(a, np.uint8)).save(root / name / f"{i:03d}{ext}")
    return root


def noise(seed, n, shape=(8, 8)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "tree", {"b": noise(1, 6), "a": noise(0, 6), "c": noise(2, 6)})


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def assert_nothing_written(cache):
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))


# ------------------------------------------------------------------------------ the layout
def test_classes_are_sorted_folder_names_and_travel_with_the_set(tree):
    raw = sources.load_raw(f"images:{tree}")
    assert raw.class_names == ("a", "b", "c") and raw.num_classes == 3
    ds = data.load_dataset(f"images:{tree}")
    assert ds.metadata()["class_names"] == ["a", "b", "c"]
    assert ds.image_shape == (8, 8, 1)
    # 10% hold-out per class: round(0.6) = 1 test image of each class
    assert np.bincount(ds.y_test).tolist() == [1, 1, 1]
    assert np.bincount(ds.y_train).tolist() == [5, 5, 5]
    # class "a" is folder a/: its train images are a/'s files (in name order) but the held-out one
    a = noise(0, 6)
    got = {bytes(x) for x in raw.x_train[raw.y_train == 0]}
    assert got < {bytes(x) for x in a} and len(got) == 5


def test_hold_out_is_seeded(tree):
    one = sources.load_raw(f"images:{tree},test_fraction=0.5,seed=3")
    again = sources.load_raw(f"images:{tree},test_fraction=0.5,seed=3")
    other = sources.load_raw(f"images:{tree},test_fraction=0.5,seed=4")
    assert np.bincount(one.y_test).tolist() == [3, 3, 3]
    assert np.array_equal(one.x_test, again.x_test)
    assert not np.array_equal(one.x_test, other.x_test)


def test_nested_folders_and_hidden_entries(tmp_path):
    root = write_tree(tmp_path / "t", {"a": noise(0, 2), "b": noise(1, 2), "a/sub": noise(2, 2)})
    (root / ".DS_Store").write_bytes(b"\0junk")
    (root / "b" / ".hidden.txt").write_text("x")
    (root / ".ipynb_checkpoints").mkdir()
    raw = sources.load_raw(f"images:{root},test_fraction=0.25")
    assert raw.class_names == ("a", "b")
    assert len(raw.y_train) + len(raw.y_test) == 6


@pytest.mark.parametrize("channels", [None, 3])
def test_folder_and_npz_give_identical_arrays(tmp_path, channels):
    shape = (8, 8) if channels is None else (8, 8, 3)
    names = ("cat", "dog", "emu")
    train = {n: noise(10 + i, 4, shape) for i, n in enumerate(names)}
    test = {n: noise(20 + i, 2, shape) for i, n in enumerate(names)}
    root = tmp_path / "t"
    write_tree(root / "train", train)
    write_tree(root / "test", test)
    npz = tmp_path / "same.npz"
    np.savez(npz, x_train=np.concatenate([train[n] for n in names]),
             y_train=np.repeat(np.arange(3), 4), x_test=np.concatenate([test[n] for n in names]),
             y_test=np.repeat(np.arange(3), 2), class_names=np.array(names))
    a, b = sources.load_raw(f"images:{root}"), sources.load_raw(f"npz:{npz}")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.class_names == b.class_names
    da, db = data.load_dataset(f"images:{root}"), data.load_dataset(f"npz:{npz},flip=0")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(da, key), getattr(db, key))
    for key, value in da.preprocessing.to_arrays().items():
        np.testing.assert_array_equal(value, db.preprocessing.to_arrays()[key])


def test_relative_folder_uses_data_dir(tree):
    raw = sources.load_raw("images:tree", data_dir=tree.parent)
    assert raw.class_names == ("a", "b", "c")


# ------------------------------------------------------------------------------ the options
def test_size_crop_and_resize(tmp_path):
    wide = np.tile(np.arange(12, dtype=np.uint8) * 20, (8, 1))  # 8 high, 12 wide
    root = write_tree(tmp_path / "t", {"a": [wide, wide], "b": [wide, wide]})
    crop = sources.load_raw(f"images:{root},size=8,test_fraction=0.5")
    np.testing.assert_array_equal(crop.x_train[0], wide[:, 2:10])  # the centred square
    stretched = sources.load_raw(f"images:{root},size=8,resize=resize,test_fraction=0.5")
    expect = np.asarray(Image.fromarray(wide).resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(stretched.x_train[0], expect)
    small = sources.load_raw(f"images:{root},size=4,test_fraction=0.5")
    assert small.x_train.shape[1:] == (4, 4)


def test_colour_modes(tmp_path):
    grey, rgb = noise(0, 2), noise(1, 2, (8, 8, 3))
    root = write_tree(tmp_path / "t", {"a": grey, "b": rgb})
    as_rgb = sources.load_raw(f"images:{root},color=rgb,test_fraction=0.5")
    assert as_rgb.x_train.shape[1:] == (8, 8, 3)
    x = np.concatenate([as_rgb.x_train, as_rgb.x_test])
    y = np.concatenate([as_rgb.y_train, as_rgb.y_test])
    for g in x[y == 0]:  # grey repeated over the channels
        assert any(np.array_equal(g, np.repeat(a[..., None], 3, -1)) for a in grey)
    as_grey = sources.load_raw(f"images:{root},color=gray,test_fraction=0.5")
    luma = [np.asarray(Image.fromarray(c).convert("L")) for c in rgb]
    xg = np.concatenate([as_grey.x_train, as_grey.x_test])
    yg = np.concatenate([as_grey.y_train, as_grey.y_test])
    for g in xg[yg == 1]:
        assert any(np.array_equal(g, lum) for lum in luma)


def test_sixteen_bit_grey_and_jpeg(tmp_path):
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(wide).save(root / "a" / "x.png")
    Image.fromarray(wide).save(root / "a" / "y.png")
    write_tree(root, {"b": noise(0, 2)}, ext=".jpg")
    raw = sources.load_raw(f"images:{root},test_fraction=0.5")
    x = np.concatenate([raw.x_train, raw.x_test])[np.concatenate([raw.y_train, raw.y_test]) == 0]
    np.testing.assert_array_equal(x[0], ((wide.astype(np.uint32) + 128) // 257).astype(np.uint8))


@pytest.mark.parametrize("options, match", [
    ("bogus=1", "unknown option 'bogus'"),
    ("size=abc", "size='abc' must be an integer >= 4"),
    ("size=2", "must be an integer >= 4"),
    ("resize=crop", "resize= needs size=N"),
    ("size=8,resize=pad", "must be crop"),
    ("color=cmyk", "must be grey"),
    ("test_fraction=1.5", "strictly between 0 and 1"),
    ("seed=-1", "seed='-1' must be an integer"),
    ("flip=yes", "flip='yes' must be 0"),
    ("size=8,size=9", "given twice"),
])
def test_bad_options(tree, cache, options, match):
    with pytest.raises(ValueError, match=match):
        sources.load_raw(f"images:{tree},{options}")
    assert_nothing_written(cache)


# -------------------------------------------------------------------------------- the cache
def test_second_load_reads_the_cache(tree, cache, monkeypatch):
    first = sources.load_raw(f"images:{tree}")
    assert len(list((cache / images.CACHE_SUBDIR).glob("*.npz"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(images, "decode_image", no_decoding)
    again = sources.load_raw(f"images:{tree},seed=5")  # the split is not part of the key

    def every(raw):
        return sorted(bytes(x) for x in np.concatenate([raw.x_train, raw.x_test]))

    assert every(again) == every(first) and len(every(first)) == 18
    with pytest.raises(AssertionError, match="decoded although cached"):
        sources.load_raw(f"images:{tree},size=4")  # another decoding: another key


def test_cache_follows_the_files(tree, cache):
    sources.load_raw(f"images:{tree}")
    path = tree / "a" / "000.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # a new mtime (and same size: PNG of a constant differs anyway)
    raw = sources.load_raw(f"images:{tree},test_fraction=0.5,seed=0")
    x = np.concatenate([raw.x_train, raw.x_test])
    assert any((img == 7).all() for img in x)
    assert len(list((cache / images.CACHE_SUBDIR).glob("*.npz"))) == 2


def test_corrupt_cache_is_rebuilt(tree, cache, caplog):
    sources.load_raw(f"images:{tree}")
    (cached,) = (cache / images.CACHE_SUBDIR).glob("*.npz")
    cached.write_bytes(b"not an npz")
    raw = sources.load_raw(f"images:{tree}")
    assert raw.num_classes == 3 and "ignoring unreadable image cache" in caplog.text


# ------------------------------------------------------------------------ settable flips
def test_flip_is_settable_and_reaches_the_protocol(tree, tmp_path):
    assert settings.settings_for(f"images:{tree}").flip is False  # the safe default
    assert settings.settings_for(f"images:{tree},size=8,flip=1").flip is True
    assert settings.settings_for(f"images:{tree},flip=1#classes=0,1").flip is True
    assert settings.settings_for("npz:/x.npz").flip is True  # as before
    assert settings.settings_for("npz:/x.npz,flip=0").flip is False
    off = evaluation.get_protocol("cpu", f"images:{tree}").augment
    on = evaluation.get_protocol("cpu", f"images:{tree},flip=1").augment
    assert "flip" not in off.split("_") and "flip" in on.split("_")
    with pytest.raises(ValueError, match="flip='2' must be 0"):
        settings.settings_for("npz:/x.npz,flip=2")


def test_npz_takes_the_flip_option_only(tmp_path):
    npz = tmp_path / "a.npz"
    np.savez(npz, x_train=noise(0, 4), y_train=np.array([0, 1, 0, 1]), x_test=noise(1, 2),
             y_test=np.array([0, 1]))
    assert sources.load_raw(f"npz:{npz},flip=0").num_classes == 2
    with pytest.raises(ValueError, match="unknown option 'size'"):
        sources.load_raw(f"npz:{npz},size=8")


@pytest.mark.slow
def test_distilled_set_saves_flip_and_class_names(tree, tmp_path):
    from mgdd_jax.cli import distill
    from mgdd_jax.configs import distill as distill_config

    c = distill_config.get_config("smoke")
    c.update(dataset=f"images:{tree},flip=1,test_fraction=0.34", ipc="2",
             out=str(tmp_path / "out"))
    c.adapt.batch_size = 6
    c.eval.enabled = False
    distill.run(c)
    z = np.load(tmp_path / "out" / "ipc2.npz")
    meta = json.loads(str(z["metadata"]))
    assert meta["dataset"]["class_names"] == ["a", "b", "c"]
    assert "flip" in meta["eval_protocol"]["augment"].split("_")
    c.update(dataset=f"images:{tree},test_fraction=0.34", out=str(tmp_path / "out2"))
    assert "flip" not in distill.prepare(c).protocol.augment.split("_")


# -------------------------------------------------------------------------------- bad trees
def _lone_file(root):
    (root / "notes.txt").write_text("hello")
    return "notes.txt", "outside any class folder"


def _empty_class(root):
    (root / "d").mkdir()
    return os.path.join("tree", "d"), "class folders without images"


def _truncated(root):
    data_ = (root / "a" / "000.png").read_bytes()
    (root / "a" / "000.png").write_bytes(data_[: len(data_) // 2])
    return "000.png", "truncated"


def _garbage(root):
    (root / "b" / "fake.png").write_bytes(b"this is not a png at all")
    return "fake.png", "cannot identify image file"


def _not_an_image(root):
    (root / "c" / "labels.csv").write_text("a,b")
    return "labels.csv", "not images"


def _mixed_sizes(root):
    write_tree(root, {"c": noise(5, 2, (10, 12))}, ext=".bmp")
    return "12x10", "pass size=N"


def _mixed_colour(root):
    write_tree(root, {"b": noise(5, 2, (8, 8, 3))}, ext=".webp")
    return "rgb: 2 files", "pass color=grey or color=rgb"


def _single_class(root):
    for name in ("b", "c"):
        for f in (root / name).iterdir():
            f.unlink()
        (root / name).rmdir()
    return "1 class folder", "at least two"


def _link_loop(root):
    os.symlink(root, root / "a" / "again")
    return "again", "a loop"


def _self_link(root):
    os.symlink("self", root / "b" / "self")
    return "self -> self", "Too many levels of symbolic links"


def _broken_link(root):
    os.symlink("nowhere.png", root / "a" / "gone.png")
    return "gone.png -> nowhere.png", "No such file or directory"


def _float_pixels(root):
    Image.fromarray(np.zeros((8, 8), np.float32)).save(root / "c" / "float.tif")
    return "float.tif", "32-bit pixels (mode F)"


def _case_clash(root):
    write_tree(root, {"A": noise(9, 2)})
    return "tree/A and", "differ only by case"


def _half_split(root):
    (root / "test").mkdir()
    return "train/ is missing", "exactly the folders train/ and test/"


def _split_classes_differ(root):
    # move everything under train/, give test/ other classes
    (root / "train").mkdir()
    for name in ("a", "b", "c"):
        (root / name).rename(root / "train" / name)
    write_tree(root / "test", {"a": noise(0, 1), "z": noise(1, 1)})
    return "only in train/: ['b', 'c']", "only in test/: ['z']"


def _holdout_options_with_test_folder(root):
    _split_classes_differ(root)
    write_tree(root / "test", {"b": noise(0, 1), "c": noise(1, 1)})
    for f in (root / "test" / "z").iterdir():
        f.unlink()
    (root / "test" / "z").rmdir()
    return "has a test/ folder", "apply only without one"


BAD_TREES = [_lone_file, _empty_class, _truncated, _garbage, _not_an_image, _mixed_sizes,
             _mixed_colour, _single_class, _link_loop, _self_link, _broken_link, _float_pixels,
             _case_clash, _half_split,
             _split_classes_differ, _holdout_options_with_test_folder]


@pytest.mark.parametrize("spoil", BAD_TREES, ids=lambda f: f.__name__.strip("_"))
def test_bad_tree_is_refused_naming_the_files(tree, cache, spoil):
    names, what = spoil(tree)
    options = ",seed=1" if spoil is _holdout_options_with_test_folder else ""
    with pytest.raises(ValueError) as e:
        data.load_dataset(f"images:{tree}{options}")
    message = str(e.value)
    assert names in message and what in message, message
    assert_nothing_written(cache)


def test_missing_folder(tmp_path, cache):
    with pytest.raises(data.DatasetNotFoundError, match="image folder not found"):
        sources.load_raw(f"images:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="needs a folder"):
        sources.load_raw("images:")
    assert_nothing_written(cache)


def test_many_bad_files_are_counted(tree):
    for i in range(12):
        (tree / "a" / f"junk{i:02d}.txt").write_text("x")
    with pytest.raises(ValueError, match=r"(?s)not images \(by their suffix\) \(12\).*and 4 more"):
        sources.load_raw(f"images:{tree}")


def test_ipc_larger_than_a_class_names_it(tmp_path):
    root = write_tree(tmp_path / "t", {"big": noise(0, 6), "tiny": noise(1, 3)})
    ds = data.load_dataset(f"images:{root}")
    with pytest.raises(ValueError, match=r"IPC=5 is larger than class 1 \('tiny'\) has "
                                         r"\(2 train images\)"):
        data.check_per_class(ds, 5)


def _distill_cli(tmp_path, dataset, *args):
    cmd = [sys.executable, "-m", "mgdd_jax", "distill", "--config=smoke",
           f"--dataset={dataset}", f"--out={tmp_path / 'out'}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)


def test_cli_refuses_a_bad_tree_writing_nothing(tree, tmp_path, cache):
    _empty_class(tree)
    _garbage(tree)
    p = _distill_cli(tmp_path, f"images:{tree}", "--ipc=2")
    assert p.returncode == 2, p.stderr
    assert "error: image folder" in p.stderr and os.path.join("tree", "d") in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()
    assert_nothing_written(cache)
    (tree / "d").rmdir()  # the layout is fixed; now the pixels are checked
    p = _distill_cli(tmp_path, f"images:{tree}", "--ipc=2")
    assert p.returncode == 2 and "fake.png" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()
    assert_nothing_written(cache)
