"""Tests for mgdd_jax.data: sources, validation, preprocessing (ZCA + cache), sampling."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgdd_jax import data, outputs
from mgdd_jax.data import idx, preprocess, sources, validation
from mgdd_jax.data import settings as data_settings
from tests._idx_writer import encode_idx

FASHION_DIR = Path(sources.FASHION_MNIST_DEFAULT_DIR)


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _uint8_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Random uint8 images from an explicit jax.random key."""
    bits = jax.random.randint(jax.random.key(seed), shape, 0, 256)
    return np.asarray(bits, np.uint8)


def _balanced_labels(n: int, num_classes: int) -> np.ndarray:
    return (np.arange(n) % num_classes).astype(np.int64)


def _save_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def _valid_npz_arrays(seed: int = 0, n_train: int = 24, n_test: int = 9, shape=(4, 4, 2)):
    return {
        "x_train": _uint8_images(seed, (n_train, *shape)),
        "y_train": _balanced_labels(n_train, 3),
        "x_test": _uint8_images(seed + 1, (n_test, *shape)),
        "y_test": _balanced_labels(n_test, 3),
        "num_classes": np.array(3),
    }


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(encode_idx(array))


def _write_tiny_fashion_dir(directory: Path, n_train: int = 20, n_test: int = 10) -> dict:
    arrays = {
        "x_train": _uint8_images(10, (n_train, 28, 28)),
        "y_train": _balanced_labels(n_train, 10).astype(np.uint8),
        "x_test": _uint8_images(11, (n_test, 28, 28)),
        "y_test": _balanced_labels(n_test, 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in sources._FASHION_MNIST_FILES.items():
        _write_idx_gz(directory / f"{stem}.gz", arrays[key])
    return arrays


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load_dataset("digits")


# ---------------------------------------------------------------------------
# Fashion-MNIST.
# ---------------------------------------------------------------------------


@pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_real_files():
    ds = data.load_dataset("fashion_mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1)
    assert ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1) and ds.channels == 1
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[-1] == "Ankle boot"
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    assert ds.preprocessing.zca is None
    meta = json.loads(json.dumps(ds.metadata()))
    assert meta["sizes"] == {"train": 60000, "test": 10000}
    assert meta["image_shape"] == [28, 28, 1]
    assert meta["preprocessing"]["zca"] is False and meta["preprocessing"]["zca_reg"] == 0.1


def test_fashion_mnist_from_data_dir(tmp_path):
    raw = _write_tiny_fashion_dir(tmp_path / "fm")
    ds = data.load_dataset("fashion_mnist", data_dir=str(tmp_path / "fm"))
    assert ds.x_train.shape == (20, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(ds.y_train, raw["y_train"])
    # Standardisation is invertible: recover the raw pixels.
    recovered = ds.preprocessing.invert(ds.x_test)[..., 0] * 255.0
    np.testing.assert_allclose(recovered, raw["x_test"], atol=1e-3)


def test_fashion_mnist_uncompressed_files(tmp_path):
    raw = _write_tiny_fashion_dir(tmp_path)
    for stem in sources._FASHION_MNIST_FILES.values():
        gz = tmp_path / f"{stem}.gz"
        (tmp_path / stem).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.y_test, raw["y_test"])


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda b: b"\x01\x02" + b[2:], "magic"),
        (lambda b: b[:-7], "truncated"),
        (lambda b: b[:6], "truncated IDX header"),
    ],
)
def test_fashion_mnist_corrupt_idx(tmp_path, corrupt, match):
    _write_tiny_fashion_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    body = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(corrupt(body)))
    with pytest.raises(ValueError, match=match) as info:
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_fashion_mnist_not_gzip(tmp_path):
    _write_tiny_fashion_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"definitely not gzip data")
    with pytest.raises(ValueError, match="not a valid gzip"):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)


def test_fashion_mnist_mismatched_files(tmp_path):
    _write_tiny_fashion_dir(tmp_path)
    _write_idx_gz(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match="20 images but .* 7 labels"):
        data.load_dataset("fashion_mnist", data_dir=tmp_path)


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data_dir" in message


def test_idx_roundtrip_other_dtypes():
    for array in (np.arange(6, dtype=np.int32).reshape(2, 3), np.linspace(0, 1, 4)):
        parsed = idx.parse_idx(encode_idx(array))
        np.testing.assert_array_equal(parsed, array)
        assert parsed.dtype == array.dtype


# ---------------------------------------------------------------------------
# digits.
# ---------------------------------------------------------------------------


def test_digits_shapes_and_split(digits):
    assert digits.x_train.shape == (1438, 8, 8, 1) and digits.x_test.shape == (359, 8, 8, 1)
    assert digits.num_classes == 10 and digits.class_names == tuple("0123456789")
    train, test = sources.digits_split(np.asarray(_sklearn_digit_labels()))
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1797))
    # Stratified: every class contributes round(20%) of its examples to test.
    labels = _sklearn_digit_labels()
    for c in range(10):
        n_c = int((labels == c).sum())
        assert int((labels[test] == c).sum()) == round(0.2 * n_c)
    np.testing.assert_array_equal(digits.y_test, labels[test])
    # Fingerprint of the fixed split: must never change across machines/versions.
    assert test[:12].tolist() == [1, 2, 3, 5, 8, 9, 12, 14, 24, 25, 34, 44]
    assert int(test.sum()) == 324917


def _sklearn_digit_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().target)


def test_digits_deterministic(digits):
    again = data.load_dataset("digits")
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    labels = _sklearn_digit_labels()
    # Independent of the user's PRNG configuration.
    with jax.threefry_partitionable(False):
        _, test_flag = sources.digits_split(labels)
    np.testing.assert_array_equal(test_flag, sources.digits_split(labels)[1])


def test_digits_resize(digits):
    ds = data.load_dataset("digits", image_size=16)
    assert ds.x_train.shape == (1438, 16, 16, 1) and ds.x_test.shape == (359, 16, 16, 1)
    np.testing.assert_array_equal(ds.y_train, digits.y_train)
    np.testing.assert_allclose(ds.x_train.mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(), 1.0, atol=1e-4)
    assert ds.metadata()["image_shape"] == [16, 16, 1]


# ---------------------------------------------------------------------------
# TFDS (mocked; never downloads).
# ---------------------------------------------------------------------------


@pytest.mark.tfds
@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_mock(name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_dataset(f"tfds:{name}")
    assert ds.name == f"tfds:{name}"
    assert ds.x_train.shape == (12, *shape) and ds.x_test.shape == (12, *shape)
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert ds.y_train.dtype == np.int32 and ds.y_train.max() < 10
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)


@pytest.mark.tfds
def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DatasetNotFoundError, match="not prepared") as info:
        data.load_dataset("tfds:mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "tfds build mnist" in str(info.value)


@pytest.mark.tfds
def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_dataset_xyz'"):
        data.load_dataset("tfds:no_such_dataset_xyz")


def test_tfds_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'mgdd-jax\[tfds\]'"):
        data.load_dataset("tfds:cifar10")


# ---------------------------------------------------------------------------
# npz.
# ---------------------------------------------------------------------------


def test_npz_uint8_grayscale(tmp_path):
    x_train = _uint8_images(0, (12, 5, 6))
    x_test = _uint8_images(1, (4, 5, 6))
    name = _save_npz(
        tmp_path / "gray.npz",
        x_train=x_train,
        y_train=_balanced_labels(12, 4),
        x_test=x_test,
        y_test=_balanced_labels(4, 4),
    )
    ds = data.load_dataset(name)
    assert ds.name == name
    assert ds.x_train.shape == (12, 5, 6, 1) and ds.image_shape == (5, 6, 1)
    assert ds.num_classes == 4 and ds.class_names == ("0", "1", "2", "3")
    np.testing.assert_allclose(ds.preprocessing.invert(ds.x_test)[..., 0] * 255, x_test, atol=1e-3)


def test_npz_float_nhwc_with_class_names(tmp_path):
    x_train = _uint8_images(2, (10, 4, 4, 3)).astype(np.float64) / 255.0
    x_test = _uint8_images(3, (5, 4, 4, 3)).astype(np.float32) / 255.0
    _save_npz(
        tmp_path / "rgb.npz",
        x_train=x_train,
        y_train=_balanced_labels(10, 5),
        x_test=x_test,
        y_test=_balanced_labels(5, 5),
        class_names=np.array(["a", "b", "c", "d", "e"]),
    )
    # A relative path is resolved against data_dir.
    ds = data.load_dataset("npz:rgb.npz", data_dir=tmp_path)
    assert ds.class_names == ("a", "b", "c", "d", "e") and ds.num_classes == 5
    assert ds.x_train.shape == (10, 4, 4, 3) and ds.channels == 3
    mean = x_train.mean(axis=(0, 1, 2))
    std = x_train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(ds.preprocessing.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(ds.x_test, (x_test - mean) / std, rtol=1e-4, atol=1e-5)


def test_npz_num_classes_key(tmp_path):
    arrays = _valid_npz_arrays()
    arrays["num_classes"] = np.array(7)
    name = _save_npz(tmp_path / "a.npz", **arrays)
    assert data.load_dataset(name).num_classes == 7


def test_npz_missing_file_and_keys(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="npz file not found"):
        data.load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    arrays = _valid_npz_arrays()
    del arrays["y_test"]
    name = _save_npz(tmp_path / "partial.npz", **arrays)
    with pytest.raises(ValueError, match=r"lacks the keys \['y_test'\]"):
        data.load_dataset(name)


# ---------------------------------------------------------------------------
# Validation: every bad input is a ValueError with a helpful message.
# ---------------------------------------------------------------------------


def _set(key, value):
    def edit(arrays):
        arrays[key] = value
        return arrays

    return edit


def _nan_pixel(arrays):
    x = arrays["x_train"].astype(np.float32) / 255.0
    x[0, 0, 0, 0] = np.nan
    arrays["x_train"] = x
    return arrays


def _constant_channel(arrays):
    arrays["x_train"][..., 1] = 17
    return arrays


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("y_train", _balanced_labels(24, 3) + 1),
         (r"y_train of .* contains label 3 \(8 out-of-range labels\), but the file declares 3 "
          r"classes \(num_classes=3\), so labels must be in \[0, 3\); they look 1-based")),
        (_set("y_test", -_balanced_labels(9, 3)),
         r"y_test of .* contains label -2 .* declares 3 classes \(num_classes=3\), .*; remap"),
        (_set("y_train", _balanced_labels(24, 3).astype(np.float32)), r"integer dtype.*astype"),
        (_set("x_train", np.zeros((24, 16), np.uint8)), r"rank 3 .* or 4 .* got rank 2"),
        (_set("x_test", np.zeros((9, 1, 4, 4, 2), np.uint8)), r"got rank 5"),
        (_set("x_train", np.zeros((24, 4, 4, 2), np.int64)), r"uint8 \(0\.\.255\) or float"),
        (_set("x_train", np.full((24, 4, 4, 2), 3.0)), r"\[3, 3\].*divide by 255"),
        (_set("x_test", np.full((9, 4, 4, 2), -0.5)), r"must lie in \[0, 1\]; rescale"),
        (_nan_pixel, r"1 NaN and 0 infinite"),
        (_constant_channel, r"channel\(s\) \[1\] .* constant .* = 0.0666"),
        (_set("y_train", _balanced_labels(23, 3)), r"24 images but 23 labels"),
        (_set("x_test", np.zeros((9, 4, 5, 2), np.uint8)), r"\(4, 4, 2\) but test .*\(4, 5, 2\)"),
        (_set("x_test", np.zeros((0, 4, 4, 2), np.uint8)), r"24|empty"),
    ],
)
def test_bad_npz_inputs(tmp_path, edit, match):
    arrays = edit(_valid_npz_arrays())
    if arrays["x_test"].shape[0] == 0:
        arrays["y_test"] = np.zeros(0, np.int64)
        match = r"test split of .* is empty"
    name = _save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        data.load_dataset(name)


def test_class_names_count_mismatch(tmp_path):
    name = _save_npz(tmp_path / "a.npz", class_names=np.array(["x", "y"]), **_valid_npz_arrays())
    with pytest.raises(ValueError, match=r"^\S+a\.npz stores num_classes=3 but 2 class_names"):
        data.load_dataset(name)


def test_label_past_declared_class_names(tmp_path):
    arrays = _valid_npz_arrays()
    del arrays["num_classes"]
    name = _save_npz(tmp_path / "a.npz", class_names=np.array(["x", "y"]), **arrays)
    with pytest.raises(ValueError) as info:
        data.load_dataset(name)
    message = str(info.value)
    assert "\n" not in message and "IPC" not in message
    assert message.startswith(f"y_train of {tmp_path / 'a.npz'} contains label 2 (8 out-of")
    assert "declares 2 classes (2 class_names), so labels must be in [0, 2)" in message


def _load_with_poisoned_images(name: str, monkeypatch):
    """load_dataset(name), failing the test if image conversion (the first work) starts."""

    def no_work(*args, **kwargs):
        raise AssertionError("the bad input should have been refused before any work")

    monkeypatch.setattr(validation, "images_to_unit", no_work)
    return data.load_dataset(name)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((24, 1, 28, 28), (r"\(24, 1, 28, 28\), which looks channels-first .* 28-channel "
                           r"images of height 1; .* np\.transpose\(x, \(0, 2, 3, 1\)\) "
                           r"\(giving shape \(24, 28, 28, 1\)\)$")),
        ((24, 3, 32, 32), r"\(24, 3, 32, 32\), which looks channels-first"),
        ((24, 4, 4, 8), r"\(24, 4, 4, 8\), which looks channels-first"),
        ((24, 2, 28, 28), (r"\(24, 2, 28, 28\), read as \(N, H, W, C\) images of height 2 "
                           r"pixels; .* np\.transpose\(x, \(0, 2, 3, 1\)\)")),
        ((24, 1, 784), r"\(24, 1, 784\), read as \(N, H, W\) images of height 1 .* reshape"),
        ((24, 3, 3, 3), r"\(24, 3, 3, 3\), .* height 3 pixels; images must be at least 4 pixels high"),
    ],
)
def test_npz_implausible_image_layout(tmp_path, monkeypatch, shape, match):
    arrays = _valid_npz_arrays()
    arrays["x_train"] = np.zeros(shape, np.uint8)
    name = _save_npz(tmp_path / "cf.npz", **arrays)
    with pytest.raises(ValueError, match=r"^x_train of dataset 'npz:\S+cf\.npz' has shape " + match) as info:
        _load_with_poisoned_images(name, monkeypatch)
    assert "\n" not in str(info.value)


def test_in_memory_channels_first_is_refused(monkeypatch):
    from mgdd_jax.data import load

    x, y = np.zeros((6, 3, 8, 8), np.uint8), _balanced_labels(6, 3)
    raw = data.RawData(x_train=x, y_train=y, x_test=x, y_test=y, num_classes=3,
                       class_names=("a", "b", "c"))
    monkeypatch.setattr(validation, "images_to_unit", lambda *a: pytest.fail("work started"))
    with pytest.raises(ValueError, match=r"^x_train of dataset 'arrays' has shape \(6, 3, 8, 8\), "
                       r"which looks channels-first .* \(giving shape \(6, 8, 8, 3\)\)$"):
        load.dataset_from_raw("arrays", raw)


def test_npz_channels_last_after_transpose_loads(tmp_path):
    arrays = _valid_npz_arrays(shape=(2, 6, 6))  # (N, C, H, W): 2 channels of 6x6
    with pytest.raises(ValueError, match="at least 4 pixels high"):
        data.load_dataset(_save_npz(tmp_path / "a.npz", **arrays))
    for key in ("x_train", "x_test"):
        arrays[key] = np.transpose(arrays[key], (0, 2, 3, 1))
    ds = data.load_dataset(_save_npz(tmp_path / "b.npz", **arrays))
    assert ds.image_shape == (6, 6, 2)


@pytest.mark.parametrize(
    "y_train, y_test, match",
    [
        # 1-based labels: class 0 would be an empty extra class.
        (_balanced_labels(24, 3) + 1, _balanced_labels(9, 3) + 1,
         r"taken to be 0\.\.3 .* y_train has no label 0 \(1 of 4 classes empty\); .* y - 1"),
        # A stray label one past the last class, in the test split only.
        (_balanced_labels(24, 3), np.array([0, 1, 2, 3, 0, 1, 2, 0, 1]),
         r"taken to be 0\.\.3 .* y_train has no label 3 \(1 of 4 classes empty\)"),
    ],
)
def test_npz_inferred_classes_must_all_be_in_train(tmp_path, monkeypatch, y_train, y_test, match):
    arrays = _valid_npz_arrays()
    del arrays["num_classes"]
    arrays.update(y_train=y_train, y_test=y_test)
    name = _save_npz(tmp_path / "a.npz", **arrays)
    with pytest.raises(ValueError, match=r"^\S+a\.npz stores no num_classes or class_names, so its "
                       r"classes are " + match) as info:
        _load_with_poisoned_images(name, monkeypatch)
    assert "IPC" not in str(info.value)


@pytest.mark.parametrize("value", [np.array([3, 4]), np.array(2.5), np.array(0), np.array("3")])
def test_npz_bad_num_classes(tmp_path, value):
    arrays = _valid_npz_arrays()
    arrays["num_classes"] = value
    name = _save_npz(tmp_path / "a.npz", **arrays)
    with pytest.raises(ValueError, match=r"'num_classes' must be one integer >= 1, got .*"
                       r"np\.array\(NUM_CLASSES\)$"):
        data.load_dataset(name)


def test_npz_whole_float_num_classes_is_accepted(tmp_path):
    arrays = _valid_npz_arrays()
    arrays["num_classes"] = np.array(4.0)
    assert data.load_dataset(_save_npz(tmp_path / "a.npz", **arrays)).num_classes == 4


@pytest.mark.parametrize("zca_reg", [0.0, -1.0, float("nan"), "0.1"])
def test_bad_zca_reg_before_loading(zca_reg):
    # The option error wins over the (missing-file) data error: checked first.
    with pytest.raises(ValueError, match="zca_reg"):
        data.load_dataset("npz:/does/not/exist.npz", zca=True, zca_reg=zca_reg)


@pytest.mark.parametrize("image_size", [0, -3, 2.5, True])
def test_bad_image_size(image_size):
    with pytest.raises(ValueError, match="image_size"):
        data.load_dataset("digits", image_size=image_size)


def test_unknown_dataset_lists_options():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'") as info:
        data.load_dataset("cifar10")
    for option in ("digits", "fashion_mnist", "tfds:", "npz:"):
        assert option in str(info.value)
    assert not hasattr(data, "available_datasets")  # one list: the registry's
    assert sources.available_datasets() == [
        "digits", "fashion_mnist", "glyphs", "procedural", "glyphs:classes=C,per_class=N",
        "images:DIR,size=N,color=grey|rgb",
        "mix:NAME+NAME", "npz:PATH", "procedural:kinds=fractal/deadleaves/texture,classes=C",
        "tfds:NAME",
    ]


# ---------------------------------------------------------------------------
# Preprocessing and ZCA.
# ---------------------------------------------------------------------------


def _reference_zca(x01_train: np.ndarray, reg: float):
    """Independent NumPy reference: SVD instead of eigh, no chunking."""
    x = x01_train.astype(np.float64)
    mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
    std = x.reshape(-1, x.shape[-1]).std(axis=0)
    flat = ((x - mean) / std).reshape(len(x), -1)
    centred = flat - flat.mean(axis=0)
    cov = centred.T @ centred / len(x)
    u, s, _ = np.linalg.svd(cov)
    lam = reg * s.sum() / s.size
    w = u @ np.diag(1.0 / np.sqrt(s + lam)) @ u.T
    return mean, std, w, cov


def test_zca_matches_reference(tmp_path):
    arrays = _valid_npz_arrays(seed=5, n_train=60, n_test=7, shape=(4, 4, 2))
    name = _save_npz(tmp_path / "z.npz", **arrays)
    ds = data.load_dataset(name, zca=True, zca_reg=0.2, cache_dir=tmp_path / "c")
    x01 = arrays["x_train"] / 255.0
    mean, std, w, cov = _reference_zca(x01, 0.2)
    assert ds.preprocessing.zca.shape == (32, 32) and ds.preprocessing.zca.dtype == np.float32
    np.testing.assert_allclose(ds.preprocessing.zca, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ds.preprocessing.zca, ds.preprocessing.zca.T, atol=1e-6)
    x_test = ((arrays["x_test"] / 255.0 - mean) / std).reshape(7, -1) @ w
    np.testing.assert_allclose(ds.x_test.reshape(7, -1), x_test, rtol=1e-4, atol=1e-4)
    # Whitened train covariance is W cov W = U diag(s / (s + reg)) U^T.
    white = ds.x_train.reshape(60, -1).astype(np.float64)
    white_cov = np.cov(white, rowvar=False, bias=True)
    np.testing.assert_allclose(white_cov, w @ cov @ w, atol=1e-4)
    eig = np.linalg.eigvalsh(white_cov)
    assert eig.max() < 1.0 and eig.min() > -1e-5
    # apply() on fresh [0,1] images reproduces the stored test set.
    np.testing.assert_allclose(
        ds.preprocessing.apply(arrays["x_test"] / 255.0), ds.x_test, rtol=1e-5, atol=1e-5
    )
    described = json.loads(json.dumps(ds.metadata()))["preprocessing"]
    assert described["zca"] is True and described["zca_dim"] == 32
    assert described["zca_reg"] == 0.2


def test_zca_cache_hit(tmp_path, monkeypatch):
    name = _save_npz(tmp_path / "z.npz", **_valid_npz_arrays(seed=7))
    calls = []
    real_fit = preprocess.fit_zca

    def counting_fit(x, reg):
        calls.append(reg)
        return real_fit(x, reg)

    monkeypatch.setattr(preprocess, "fit_zca", counting_fit)
    first = data.load_dataset(name, zca=True)
    # The conftest points $MGDD_JAX_CACHE at a per-test directory.
    files = list((Path(os.environ["MGDD_JAX_CACHE"]) / "zca").glob("*.npy"))
    assert len(files) == 1
    second = data.load_dataset(name, zca=True)
    assert calls == [0.1]
    np.testing.assert_array_equal(first.preprocessing.zca, second.preprocessing.zca)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    data.load_dataset(name, zca=True, zca_reg=0.3)  # another key
    assert calls == [0.1, 0.3]
    assert not list(files[0].parent.glob(".tmp-*"))  # no leftover temp files


def test_zca_cache_goes_through_atomic_path(tmp_path, monkeypatch):
    name = _save_npz(tmp_path / "z.npz", **_valid_npz_arrays(seed=6))
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(outputs.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(outputs.os, "replace",
                        lambda a, b: events.append(("replace", Path(b).suffix)) or real_replace(a, b))
    data.load_dataset(name, zca=True, cache_dir=tmp_path / "c")
    assert events == ["fsync", ("replace", ".npy")]  # contents on disk before the rename
    (cached,) = (tmp_path / "c" / "zca").glob("*.npy")
    umask = os.umask(0)
    os.umask(umask)
    assert cached.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "x.npy"
    with pytest.raises(RuntimeError, match="boom"), outputs.atomic_path(str(target), ".npy") as tmp:
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list((tmp_path / "sub").iterdir()) == []


def test_check_resumable_out(tmp_path):
    """A resumable run's --out: a new nested path or an existing directory passes (nothing is
    made); a file, or a path under a file, is refused with the path in the message."""
    new = tmp_path / "a" / "b"
    assert outputs.check_resumable_out(str(new)) == str(new) and not (tmp_path / "a").exists()
    assert outputs.check_resumable_out(str(tmp_path)) == str(tmp_path)
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"--out=.*plain exists and is a file"):
        outputs.check_resumable_out(str(f))
    with pytest.raises(ValueError, match=r"--bench=.*cannot be made: .*plain is a file"):
        outputs.check_resumable_out(str(f / "sub" / "dir"), flag="--bench")


def test_zca_unwritable_cache_warns(tmp_path, caplog):
    name = _save_npz(tmp_path / "z.npz", **_valid_npz_arrays(seed=8))
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="mgdd_jax.data.preprocess"):
        ds = data.load_dataset(name, zca=True, cache_dir=blocker / "cache")
    assert "continuing without caching" in caplog.text
    reference = data.load_dataset(name, zca=True, cache_dir=tmp_path / "ok")
    np.testing.assert_array_equal(ds.preprocessing.zca, reference.preprocessing.zca)


def test_zca_corrupt_cache_file_refits(tmp_path, caplog):
    name = _save_npz(tmp_path / "z.npz", **_valid_npz_arrays(seed=9))
    good = data.load_dataset(name, zca=True, cache_dir=tmp_path / "c")
    (cached,) = (tmp_path / "c" / "zca").glob("*.npy")
    cached.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="mgdd_jax.data.preprocess"):
        again = data.load_dataset(name, zca=True, cache_dir=tmp_path / "c")
    assert re.search("ignoring .* ZCA cache file", caplog.text)
    np.testing.assert_array_equal(again.preprocessing.zca, good.preprocessing.zca)


def test_preprocessing_roundtrip(tmp_path, digits):
    prep = digits.preprocessing
    path = tmp_path / "p.npz"
    np.savez(path, **prep.to_arrays(), other=np.zeros(3))
    with np.load(path) as loaded:
        restored = data.Preprocessing.from_arrays(loaded)
    assert restored.zca is None and restored.zca_reg == prep.zca_reg
    np.testing.assert_array_equal(restored.mean, prep.mean)
    x01 = np.linspace(0, 1, 2 * 64).reshape(2, 8, 8, 1).astype(np.float32)
    np.testing.assert_array_equal(restored.apply(x01), prep.apply(x01))

    with_zca = data.load_dataset("digits", zca=True, zca_reg=0.5).preprocessing
    again = data.Preprocessing.from_arrays(with_zca.to_arrays())
    np.testing.assert_array_equal(again.zca, with_zca.zca)
    np.testing.assert_allclose(again.invert(again.apply(x01)), x01, atol=1e-4)
    with pytest.raises(ValueError, match="missing keys"):
        data.Preprocessing.from_arrays({"preprocessing_mean": prep.mean})
    with pytest.raises(ValueError, match="C=1 channels"):
        prep.apply(np.zeros((2, 8, 8, 3), np.float32))


# ---------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------

# 3 classes of sizes 5, 3 and 7, interleaved.
_LABELS = np.array([0, 1, 2, 2, 0, 2, 1, 0, 2, 2, 0, 1, 2, 0, 2])


def _index() -> data.ClassIndex:
    return data.ClassIndex.from_labels(_LABELS, 3)


def test_class_index_from_labels():
    ci = _index()
    assert ci.table.shape == (3, 7) and ci.table.dtype == jnp.int32
    np.testing.assert_array_equal(ci.counts, [5, 3, 7])
    table = np.asarray(ci.table)
    for c in range(3):
        assert (_LABELS[table[c]] == c).all()  # padding is valid too
        np.testing.assert_array_equal(
            np.sort(table[c, : ci.counts[c]]), np.flatnonzero(_LABELS == c)
        )
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        data.ClassIndex.from_labels(_LABELS, 2)


def test_class_balanced_indices_properties():
    ci = _index()
    idx_ = np.asarray(data.class_balanced_indices(jax.random.key(0), ci, 3))
    assert idx_.shape == (9,) and idx_.dtype == np.int32
    np.testing.assert_array_equal(_LABELS[idx_], np.repeat([0, 1, 2], 3))
    for group in idx_.reshape(3, 3):
        assert len(set(group.tolist())) == 3
    # Deterministic for a key, different across keys.
    again = np.asarray(data.class_balanced_indices(jax.random.key(0), ci, 3))
    np.testing.assert_array_equal(idx_, again)
    draws = {
        tuple(np.asarray(data.class_balanced_indices(jax.random.key(s), ci, 3)).tolist())
        for s in range(8)
    }
    assert len(draws) > 1
    # per_class equal to a class size returns the whole class.
    full = np.asarray(data.class_balanced_indices(jax.random.key(1), ci, 3, jnp.array([1])))
    np.testing.assert_array_equal(np.sort(full), np.flatnonzero(_LABELS == 1))
    with pytest.raises(ValueError, match="larger than the largest class"):
        data.class_balanced_indices(jax.random.key(0), ci, 8)


def test_sampling_is_jittable_and_subsets():
    ci = _index()

    @jax.jit
    def draw(key, class_index, classes):
        return data.class_balanced_indices(key, class_index, 2, classes)

    out = np.asarray(draw(jax.random.key(3), ci, jnp.array([2, 0])))
    np.testing.assert_array_equal(_LABELS[out], [2, 2, 0, 0])
    batch = jax.jit(lambda k, c: data.balanced_batch_indices(k, c, 7))(jax.random.key(4), ci)
    assert batch.shape == (7,)
    # Legacy uint32 keys work as well.
    legacy = data.class_balanced_indices(jax.random.PRNGKey(0), ci, 2)
    assert legacy.shape == (6,)


@pytest.mark.parametrize("batch_size", [2, 6, 7, 8, 9])
def test_balanced_batch_remainder(batch_size):
    ci = _index()
    for seed in range(5):
        batch = np.asarray(data.balanced_batch_indices(jax.random.key(seed), ci, batch_size))
        assert batch.shape == (batch_size,)
        assert len(set(batch.tolist())) == batch_size  # no repeats
        per_class = np.bincount(_LABELS[batch], minlength=3)
        base, remainder = divmod(batch_size, 3)
        assert per_class.min() >= base and per_class.max() <= base + 1
        assert int((per_class == base + 1).sum()) == (remainder if remainder else 0)
        np.testing.assert_array_equal(_LABELS[batch[: 3 * base]], np.repeat([0, 1, 2], base))


def test_sampling_is_uniform():
    ci = _index()
    keys = jax.random.split(jax.random.key(123), 3000)
    draws = np.asarray(jax.vmap(lambda k: data.class_balanced_indices(k, ci, 2))(keys))
    class0 = draws[:, :2]  # class 0 has 5 members
    members = np.flatnonzero(_LABELS == 0)
    for observed in (
        np.array([(class0 == m).sum() for m in members]),  # any slot
        np.array([(class0[:, 0] == m).sum() for m in members]),  # first slot
    ):
        expected = observed.sum() / members.size
        chi2 = ((observed - expected) ** 2 / expected).sum()
        assert chi2 < 20.0, observed  # df = 4; p ~ 5e-4
    # The extra slot of balanced batches is spread evenly over classes.
    batches = np.asarray(jax.vmap(lambda k: data.balanced_batch_indices(k, ci, 4))(keys))
    extra_class = np.bincount(_LABELS[batches[:, 3]], minlength=3)
    chi2 = ((extra_class - 1000.0) ** 2 / 1000.0).sum()
    assert chi2 < 15.0, extra_class  # df = 2


def test_check_per_class_messages(digits):
    labels = np.array([0] * 5 + [1] * 3 + [2] * 4)
    names = ("t-shirt", "dress", "coat")
    with pytest.raises(
        ValueError,
        match=r"^IPC=4 is larger than class 1 \('dress'\) has \(3 train images\); "
        r"choose IPC <= 3$",
    ):
        data.check_per_class(labels, 4, class_names=names)
    with pytest.raises(ValueError, match=r"^batch=9 is larger than class 1 has \(3 train"):
        data.check_per_class(data.ClassIndex.from_labels(labels, 3), 9, what="batch")
    with pytest.raises(ValueError, match="IPC must be >= 1, got IPC=0"):
        data.check_per_class(labels, 0)
    with pytest.raises(ValueError, match="integer"):
        data.check_per_class(labels, 2.0)
    with pytest.raises(ValueError, match=r"class 3 has no train images"):
        data.check_per_class(labels, 1, num_classes=4)
    data.check_per_class(labels, 3)  # fine
    with pytest.raises(ValueError, match=r"IPC=175 is larger than class \d \('\d'\) has \(1"):
        data.check_per_class(digits, 175)


def test_sample_initial_set(digits):
    x, y = data.sample_initial_set(jax.random.key(0), digits, 5)
    assert x.shape == (50, 8, 8, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(y, np.repeat(np.arange(10), 5))
    rows = {row.tobytes() for row in digits.x_train}
    assert all(img.tobytes() in rows for img in x)
    x2, _ = data.sample_initial_set(jax.random.key(0), digits, 5)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match="IPC=1000 is larger than class"):
        data.sample_initial_set(jax.random.key(0), digits, 1000)


# ---------------------------------------------------------------------------------------------
# The one per-dataset table (mgdd_jax.data.settings), keyed by the names the loaders take.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, zca, flip", [
    ("fashion_mnist", False, False), ("digits", False, False), ("glyphs", False, False),
    ("glyphs:classes=20,per_class=50", False, False), ("tfds:mnist", False, False),
    ("tfds:fashion_mnist", False, False), ("tfds:emnist/letters", False, False),
    ("tfds:mnist:3.0.1", False, False), ("tfds:svhn_cropped", True, False),
    ("tfds:cifar10", True, True), ("tfds:cifar100", True, True),
    ("tfds:imagenet_resized/32x32", False, True), ("tfds:some_new_set", False, True),
    ("npz:/tmp/x.npz", False, True), ("my_registered_name", False, True),
])
def test_settings_table_rows_by_loader_name(name, zca, flip):
    row = data_settings.settings_for(name)
    assert (row.zca, row.flip, row.image_size) == (zca, flip, 0)


def test_every_named_source_has_its_own_row():
    from mgdd_jax.data import sources
    for name in sources.NAMED_SOURCES:
        assert name in data_settings.DATASET_SETTINGS, name
    for prefix in sources.PREFIX_SOURCES:
        assert any(k.startswith(prefix) for k in data_settings.DATASET_SETTINGS), prefix


def test_settings_for_refuses_a_non_name():
    with pytest.raises(ValueError, match="non-empty string"):
        data_settings.settings_for("")
