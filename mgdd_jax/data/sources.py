"""Raw dataset sources and their registry.

A *source* turns a dataset name (and an optional ``data_dir``) into
:class:`RawData`: unprocessed train/test arrays plus class metadata. Sources do
not scale, validate or standardise; :func:`mgdd_jax.data.load_dataset` does
that uniformly for all of them.

Names are resolved through two dicts, :data:`NAMED_SOURCES` (exact names) and
:data:`PREFIX_SOURCES` (``"prefix:argument"``); a new source is one entry.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from mgdd_jax.data import idx
from mgdd_jax.data.errors import DatasetNotFoundError


@dataclasses.dataclass(frozen=True, eq=False)
class RawData:
    """Unprocessed arrays as a source provides them.

    Attributes:
      x_train, x_test: ``(N, H, W)`` or ``(N, H, W, C)``; uint8 in 0..255 or
        float in [0, 1].
      y_train, y_test: ``(N,)`` integer class ids.
      num_classes: number of classes.
      class_names: one name per class.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]


# A source gets the argument after its prefix (or its own name, for named
# sources) and the user's data_dir (None: the source's default location).
SourceLoader = Callable[[str, str | None], RawData]

# ---------------------------------------------------------------------------
# Fashion-MNIST (IDX files, e.g. from Debian's dataset-fashion-mnist package).
# ---------------------------------------------------------------------------

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_idx_files(directory: Path) -> tuple[dict[str, Path], list[Path]]:
    """Locates each IDX file as ``NAME.gz`` or ``NAME``; returns found + missing."""
    found: dict[str, Path] = {}
    missing: list[Path] = []
    for key, stem in _FASHION_MNIST_FILES.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            missing.extend(candidates)
        else:
            found[key] = hit
    return found, missing


def load_fashion_mnist(_: str, data_dir: str | None) -> RawData:
    """Fashion-MNIST (60000 train / 10000 test 28x28 grayscale, 10 classes).

    Reads the four IDX files (gzip-compressed ``*.gz`` or uncompressed) from
    ``data_dir``, by default :data:`FASHION_MNIST_DEFAULT_DIR` (Debian package
    ``dataset-fashion-mnist``). TFDS is deliberately not used: the Debian files
    are recompressed, so TFDS's checksums would reject them.
    """
    directory = Path(data_dir if data_dir is not None else FASHION_MNIST_DEFAULT_DIR)
    found, missing = _find_idx_files(directory.expanduser())
    if missing:
        looked = "\n  ".join(str(p) for p in missing)
        raise DatasetNotFoundError(
            f"Fashion-MNIST files not found; looked for:\n  {looked}\n"
            "Install them with `apt-get install dataset-fashion-mnist` (into "
            f"{FASHION_MNIST_DEFAULT_DIR}) or put the four IDX files (from "
            "https://github.com/zalandoresearch/fashion-mnist) in a directory DIR and pass "
            "--data_dir=DIR (data_dir=DIR)."
        )
    arrays = {key: idx.read_idx(path) for key, path in found.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1:
            raise idx.IdxFormatError(
                f"{found[f'x_{split}']} / {found[f'y_{split}']}: expected images of rank 3 "
                f"and labels of rank 1, got shapes {x.shape} and {y.shape}"
            )
        if x.shape[0] != y.shape[0]:
            raise idx.IdxFormatError(
                f"{found[f'x_{split}']} holds {x.shape[0]} images but "
                f"{found[f'y_{split}']} holds {y.shape[0]} labels; the files do not belong "
                "together"
            )
    return RawData(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        num_classes=len(FASHION_MNIST_CLASSES),
        class_names=FASHION_MNIST_CLASSES,
    )


# ---------------------------------------------------------------------------
# scikit-learn digits (bundled with scikit-learn, no download).
# ---------------------------------------------------------------------------

DIGITS_SPLIT_SEED = 20230615
DIGITS_TEST_FRACTION = 0.2


def digits_split(
    labels: np.ndarray,
    *,
    test_fraction: float = DIGITS_TEST_FRACTION,
    seed: int = DIGITS_SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified train/test split of the digits data set.

    For every class ``c`` (ascending), its example indices are permuted with
    ``jax.random.permutation(jax.random.fold_in(key, c), n_c)`` where ``key`` is
    ``jax.random.key(seed, impl="threefry2x32")``, drawn with
    ``jax.threefry_partitionable(True)``; the first ``round(test_fraction * n_c)``
    go to test, the rest to train. Pinning the PRNG implementation and the
    partitionable flag makes the split identical on every machine and backend,
    whatever the user's JAX configuration.

    Returns:
      ``(train_indices, test_indices)``, each sorted, int64, disjoint and
      covering ``range(len(labels))``.
    """
    labels = np.asarray(labels)
    key = jax.random.key(seed, impl="threefry2x32")
    train, test = [], []
    with jax.threefry_partitionable(True):
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(c)), members.size))
            n_test = round(test_fraction * members.size)
            test.append(members[perm[:n_test]])
            train.append(members[perm[n_test:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(_: str, data_dir: str | None) -> RawData:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), split ~80/20.

    Pixel values 0..16 are divided by 16. ``data_dir`` is ignored (the data
    ships with scikit-learn). See :func:`digits_split` for the split.
    """
    del data_dir
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = (np.asarray(bunch.images, np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target)
    train, test = digits_split(labels)
    return RawData(
        x_train=images[train],
        y_train=labels[train],
        x_test=images[test],
        y_test=labels[test],
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
    )


# ---------------------------------------------------------------------------
# TensorFlow Datasets ("tfds:NAME", e.g. tfds:cifar10, tfds:imagenet_resized/32x32).
# ---------------------------------------------------------------------------

TFDS_INSTALL_HINT = "pip install 'mgdd-jax[tfds]'"
_TFDS_BATCH = 8192


def import_tfds():
    """Imports ``tensorflow_datasets`` lazily and keeps TensorFlow off the GPUs.

    TensorFlow would otherwise reserve all GPU memory when its input pipeline
    runs, starving JAX.
    """
    try:
        tfds = importlib.import_module("tensorflow_datasets")
    except ImportError as e:
        raise ImportError(
            f"'tfds:' datasets need TensorFlow Datasets, which is not installed ({e}). "
            f"Install the extra with: {TFDS_INSTALL_HINT}"
        ) from e
    try:
        tf = importlib.import_module("tensorflow")
        tf.config.set_visible_devices([], "GPU")
    except (ImportError, RuntimeError, ValueError):  # already initialised, or no TF GPU support
        pass
    return tfds


def _tfds_test_split(builder) -> str:
    """``"test"``, or ``"validation"`` for datasets without a test split."""
    known = set(builder.info.splits.keys())
    if not known or "test" in known:
        return "test"
    if "validation" in known:
        return "validation"
    raise ValueError(
        f"TFDS dataset {builder.name!r} has neither a 'test' nor a 'validation' split "
        f"(splits: {sorted(known)}); convert it to an npz file and use 'npz:PATH'"
    )


def _tfds_read_split(tfds, builder, spec: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:  # TFDS's way of saying "not prepared"
        raise DatasetNotFoundError(
            f"TFDS dataset {spec!r} is not prepared under {builder.data_dir} ({e}). "
            "mgdd_jax never downloads: prepare it once on a machine with internet, e.g. "
            f'`tfds build {spec} --data_dir=DIR` (or `python -c "import tensorflow_datasets '
            f"as tfds; tfds.builder('{spec}', data_dir='DIR').download_and_prepare()\"`), then "
            "pass --data_dir=DIR (data_dir=DIR) or set TFDS_DATA_DIR=DIR."
        ) from e
    ds = ds.map(lambda ex: (ex["image"], ex["label"])).batch(_TFDS_BATCH)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError(f"TFDS dataset {spec!r}: the {split!r} split is empty")
    return np.concatenate(xs), np.concatenate(ys)


def load_tfds(spec: str, data_dir: str | None) -> RawData:
    """Any TFDS image-classification dataset with ``image`` and ``label`` features.

    Images must have one fixed size (e.g. cifar10, cifar100, mnist, svhn_cropped,
    imagenet_resized/32x32); datasets with ``train`` and ``validation`` but no
    ``test`` split use ``validation`` as the test split.

    The full train and test (or validation) splits are read into memory. The
    dataset must already be prepared in ``data_dir`` (default: TFDS's own,
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); nothing is downloaded.
    """
    if not spec:
        raise ValueError("'tfds:' needs a dataset name, e.g. 'tfds:cifar10'")
    tfds = import_tfds()
    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"TFDS has no dataset {spec!r} (see `tfds.list_builders()`); examples: "
            "tfds:cifar10, tfds:cifar100, tfds:mnist, tfds:svhn_cropped, "
            "tfds:imagenet_resized/32x32"
        ) from e
    features = builder.info.features
    keys = set(features.keys())
    if not {"image", "label"} <= keys or not hasattr(features["label"], "num_classes"):
        raise ValueError(
            f"TFDS dataset {spec!r} is not an image-classification dataset with 'image' and "
            f"a class 'label' feature (features: {sorted(keys)})"
        )
    label = features["label"]
    x_train, y_train = _tfds_read_split(tfds, builder, spec, "train")
    x_test, y_test = _tfds_read_split(tfds, builder, spec, _tfds_test_split(builder))
    return RawData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=int(label.num_classes),
        class_names=tuple(str(n) for n in label.names),
    )


# ---------------------------------------------------------------------------
# A user's own arrays ("npz:PATH").
# ---------------------------------------------------------------------------

NPZ_REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(spec: str, data_dir: str | None) -> RawData:
    """Arrays from an ``.npz`` file with keys ``x_train, y_train, x_test, y_test``.

    Optional keys: ``class_names`` (unicode string array, one per class) and
    ``num_classes`` (scalar); without either, ``num_classes`` is one more than
    the largest label in either split. Images are uint8 (0..255) or float in
    [0, 1], NHWC or NHW (grayscale). A relative path is resolved against
    ``data_dir`` when one is given.
    """
    if not spec:
        raise ValueError("'npz:' needs a file path, e.g. 'npz:/data/my_set.npz'")
    path = Path(spec).expanduser()
    if not path.is_absolute() and data_dir is not None:
        path = Path(data_dir).expanduser() / path
    if not path.is_file():
        raise DatasetNotFoundError(
            f"npz file not found: {path} (from {'npz:' + spec!r}"
            + (f", data_dir={data_dir!r}" if data_dir is not None else "")
            + "). Save your arrays with np.savez(PATH, x_train=..., y_train=..., x_test=..., "
            "y_test=...) and pass 'npz:PATH'."
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            contents = {k: f[k] for k in f.files}
    except ValueError as e:  # object arrays (pickles) are refused
        raise ValueError(
            f"{path}: could not read the arrays ({e}); store plain numeric arrays, and "
            "class_names as a unicode array (np.array(names, dtype=str))"
        ) from e
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz file ({e})") from e
    missing = [k for k in NPZ_REQUIRED_KEYS if k not in contents]
    if missing:
        raise ValueError(
            f"{path} lacks the keys {missing} (it has {sorted(contents)}); an npz dataset "
            f"needs {list(NPZ_REQUIRED_KEYS)} and may have 'class_names' / 'num_classes'"
        )
    if "class_names" in contents:
        class_names = tuple(str(n) for n in np.asarray(contents["class_names"]).reshape(-1))
        num_classes = len(class_names)
    elif "num_classes" in contents:
        num_classes = int(np.asarray(contents["num_classes"]).reshape(()))
        class_names = tuple(str(c) for c in range(num_classes))
    else:
        num_classes = _infer_num_classes(contents["y_train"], contents["y_test"], path)
        class_names = tuple(str(c) for c in range(num_classes))
    return RawData(
        x_train=contents["x_train"],
        y_train=contents["y_train"],
        x_test=contents["x_test"],
        y_test=contents["y_test"],
        num_classes=num_classes,
        class_names=class_names,
    )


def _infer_num_classes(y_train: np.ndarray, y_test: np.ndarray, path: Path) -> int:
    """``1 + max label``; bad labels are left for the common label checks."""
    highest = -1
    for y in (y_train, y_test):
        y = np.asarray(y)
        if y.size and np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
            highest = max(highest, int(y.max()))
    return max(highest + 1, 1)


# ---------------------------------------------------------------------------
# Glyph corpus rendered from the installed fonts ("glyphs", "glyphs:classes=C,...").
# ---------------------------------------------------------------------------


def load_glyphs(spec: str, data_dir: str | None) -> RawData:
    """Many-class glyph corpus (meta-training); see :func:`mgdd_jax.data.glyphs.load_glyphs`."""
    from mgdd_jax.data import glyphs  # lazy: Pillow and fontTools only when asked for

    return glyphs.load_glyphs(spec, data_dir)


# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------

NAMED_SOURCES: dict[str, SourceLoader] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "glyphs": load_glyphs,
}
PREFIX_SOURCES: dict[str, SourceLoader] = {
    "glyphs:": load_glyphs,
    "npz:": load_npz,
    "tfds:": load_tfds,
}
_PREFIX_EXAMPLES = {
    "glyphs:": "glyphs:classes=C,per_class=N",
    "npz:": "npz:PATH",
    "tfds:": "tfds:NAME",
}


def available_datasets() -> list[str]:
    """Names :func:`mgdd_jax.data.load_dataset` accepts (prefixes with a placeholder)."""
    return sorted(NAMED_SOURCES) + [
        _PREFIX_EXAMPLES.get(p, p + "ARG") for p in sorted(PREFIX_SOURCES)
    ]


def resolve_source(name: str) -> tuple[SourceLoader, str]:
    """Finds the loader for ``name``; returns it with the argument to pass it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if name in NAMED_SOURCES:
        return NAMED_SOURCES[name], name
    for prefix, loader in PREFIX_SOURCES.items():
        if name.startswith(prefix):
            return loader, name[len(prefix) :]
    raise ValueError(
        f"unknown dataset {name!r}; available: {', '.join(available_datasets())} "
        "(e.g. 'tfds:cifar10' for any prepared TensorFlow Datasets image-classification "
        "set, 'npz:/path/arrays.npz' for your own arrays)"
    )


def load_raw(name: str, data_dir: str | os.PathLike | None = None) -> RawData:
    """Loads the raw arrays of dataset ``name`` through the registry."""
    loader, argument = resolve_source(name)
    return loader(argument, None if data_dir is None else os.fspath(data_dir))
