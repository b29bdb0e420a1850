"""Raw dataset sources and their registry.

A *source* turns a dataset name (and an optional ``data_dir``) into
:class:`RawData`: unprocessed train/test arrays plus class metadata. Sources do
not scale, validate or standardise; :func:`mgdd_jax.data.load_dataset` does
that uniformly for all of them.

Names are resolved through two dicts, :data:`NAMED_SOURCES` (exact names) and
:data:`PREFIX_SOURCES` (``"prefix:argument"``); a new source is one entry.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from mgdd_jax.data import glyphs, idx, images, procedural
from mgdd_jax.data.dataset import RawData
from mgdd_jax.data.errors import DatasetNotFoundError

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
    ``num_classes`` (scalar; must equal the number of names when both are
    stored). With either, every label must lie in ``[0, num_classes)``; without
    either, ``num_classes`` is one more than the largest label in either split
    and every class must occur in ``y_train``. Images are uint8 (0..255) or
    float in [0, 1], channels-last NHWC or NHW (grayscale), at least 4 pixels
    high (:func:`mgdd_jax.data.load_dataset` refuses channels-first arrays such
    as ``(N, 1, 28, 28)``, see :func:`mgdd_jax.data.validation.check_image_layout`).
    A relative path is resolved against ``data_dir`` when one is given. ``npz:PATH,flip=0``
    turns horizontal flips off in the evaluation protocol (default on; read by
    :func:`mgdd_jax.data.settings.settings_for`).

    Raises:
      DatasetNotFoundError: the file does not exist.
      ValueError: unreadable file, missing keys, a bad ``num_classes``, or
        labels outside the declared (or inferred) classes; before any other work.
    """
    if not spec:
        raise ValueError("'npz:' needs a file path, e.g. 'npz:/data/my_set.npz'")
    images.flip_option("npz:" + spec)  # a bad or unknown option fails here
    spec = images.split_options(spec, "npz:", images.NPZ_OPTION_KEYS)[0]
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
    declared = None
    if "num_classes" in contents:
        num_classes = _read_num_classes(contents["num_classes"], path)
        declared = f"num_classes={num_classes}"
    if "class_names" in contents:
        class_names = tuple(str(n) for n in np.asarray(contents["class_names"]).reshape(-1))
        if declared is not None and num_classes != len(class_names):
            raise ValueError(
                f"{path} stores num_classes={num_classes} but {len(class_names)} class_names; "
                "they must agree (one name per class): fix one of them, or drop num_classes"
            )
        num_classes = len(class_names)
        declared = f"{num_classes} class_names"
    elif declared is not None:
        class_names = tuple(str(c) for c in range(num_classes))
    if declared is not None:
        for key in ("y_train", "y_test"):
            _check_declared_labels(contents[key], num_classes, declared, f"{key} of {path}")
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


def _read_num_classes(value: np.ndarray, path: Path) -> int:
    """The ``num_classes`` entry of an npz file as an int >= 1."""
    value = np.asarray(value)
    number = value.reshape(()).item() if value.size == 1 else None
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or not float(number).is_integer()
        or number < 1
    ):
        raise ValueError(
            f"{path}: 'num_classes' must be one integer >= 1, got {value.dtype} array of shape "
            f"{value.shape} ({np.array2string(value.reshape(-1)[:4])}); store it as "
            "np.array(NUM_CLASSES)"
        )
    return int(number)


def _integer_labels(y: np.ndarray) -> np.ndarray | None:
    """``y`` if it is a non-empty 1-D integer array (else None: the common checks report it)."""
    y = np.asarray(y)
    if y.ndim != 1 or not y.size or y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        return None
    return y


def _check_declared_labels(y: np.ndarray, num_classes: int, declared: str, what: str) -> None:
    """Labels of an npz file that declares its classes must lie in ``[0, num_classes)``."""
    y = _integer_labels(y)
    if y is None:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo >= 0 and hi < num_classes:
        return
    bad = lo if lo < 0 else hi
    n_bad = int(((y < 0) | (y >= num_classes)).sum())
    hint = (
        f"they look 1-based (1..{num_classes}): subtract 1 (y - 1)"
        if lo == 1 and hi == num_classes
        else "remap them to 0..num_classes-1, or store the right num_classes / class_names"
    )
    raise ValueError(
        f"{what} contains label {bad} ({n_bad} out-of-range labels), but the file declares "
        f"{num_classes} classes ({declared}), so labels must be in [0, {num_classes}); {hint}"
    )


def _infer_num_classes(y_train: np.ndarray, y_test: np.ndarray, path: Path) -> int:
    """``1 + max label`` over both splits; every class must then have train labels.

    Negative or non-integer labels are left for the common label checks.
    """
    train, test = _integer_labels(y_train), _integer_labels(y_test)
    highest = max([int(y.max()) for y in (train, test) if y is not None], default=-1)
    num_classes = max(highest + 1, 1)
    if train is not None and int(train.min()) >= 0:
        present = np.unique(train)
        n_missing = num_classes - present.size
        if n_missing:
            # The smallest missing ids all lie below present.size + 5 (no huge arange).
            first = np.setdiff1d(np.arange(min(num_classes, present.size + 5)), present)[:5]
            shown = ", ".join(str(c) for c in first) + (", ..." if n_missing > 5 else "")
            raise ValueError(
                f"{path} stores no num_classes or class_names, so its classes are taken to be "
                f"0..{highest} (labels 0 to the largest label), but y_train has no label "
                f"{shown} ({n_missing} of {num_classes} classes empty); labels must be "
                "0..num_classes-1 with every class in y_train: fix the labels (1-based labels: "
                "y - 1), or store num_classes / class_names"
            )
    return num_classes


# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Mixtures ("mix:A+B+..."): the classes of several sources side by side.
# ---------------------------------------------------------------------------

MIX_SEP = "+"


def load_mix(spec: str, data_dir: str | None) -> RawData:
    """``mix:glyphs+procedural``: the classes of every listed source, in order, as one set.

    Source ``i``'s classes become ``offset_i .. offset_i + C_i - 1`` (offset: the classes
    before it) and keep their names prefixed ``"<source>/"``; each keeps its own train/test
    split. The parts are loaded with the same ``data_dir`` and must agree in image shape and
    dtype (e.g. the 32x32 RGB uint8 of ``glyphs`` and ``procedural``): a meta-training source
    made of several kinds of classes.
    """
    names = [n.strip() for n in spec.split(MIX_SEP)]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise ValueError(f"bad mixture 'mix:{spec}': list at least two distinct dataset names "
                         f"joined by {MIX_SEP!r}, e.g. 'mix:glyphs+procedural'")
    parts = [load_raw(n, data_dir) for n in names]
    shapes = {n: (p.x_train.shape[1:], str(p.x_train.dtype)) for n, p in zip(names, parts)}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"mixture 'mix:{spec}': its sources must share image shape and dtype, "
                         f"got {shapes}; resize or pick sources of one format")
    offsets = np.cumsum([0] + [p.num_classes for p in parts])

    def cat(field: str, shift: bool) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(p, field)).astype(np.int32) + o if shift
                               else np.asarray(getattr(p, field))
                               for p, o in zip(parts, offsets)])

    return RawData(x_train=cat("x_train", False), y_train=cat("y_train", True),
                   x_test=cat("x_test", False), y_test=cat("y_test", True),
                   num_classes=int(offsets[-1]),
                   class_names=tuple(f"{n}/{c}" for n, p in zip(names, parts)
                                     for c in p.class_names))


NAMED_SOURCES: dict[str, SourceLoader] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "glyphs": glyphs.load_glyphs,
    "procedural": procedural.load_procedural,
}
PREFIX_SOURCES: dict[str, SourceLoader] = {
    "glyphs:": glyphs.load_glyphs,
    "images:": images.load_images,
    "mix:": load_mix,
    "npz:": load_npz,
    "procedural:": procedural.load_procedural,
    "tfds:": load_tfds,
}
_PREFIX_EXAMPLES = {
    "glyphs:": "glyphs:classes=C,per_class=N",
    "images:": "images:DIR,size=N,color=grey|rgb",
    "mix:": "mix:NAME+NAME",
    "npz:": "npz:PATH",
    "procedural:": "procedural:kinds=fractal/deadleaves/texture,classes=C",
    "tfds:": "tfds:NAME",
}


def available_datasets() -> list[str]:
    """Names :func:`mgdd_jax.data.load_dataset` accepts (prefixes with a placeholder)."""
    return sorted(NAMED_SOURCES) + [
        _PREFIX_EXAMPLES.get(p, p + "ARG") for p in sorted(PREFIX_SOURCES)
    ]


def resolve_source(name: str) -> tuple[SourceLoader, str]:
    """Finds the loader for ``name``; returns it with the argument to pass it.

    A ``#classes=`` suffix is checked and set aside (:func:`load_raw` applies it).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    name = split_class_subset(name)[0]
    if name in NAMED_SOURCES:
        return NAMED_SOURCES[name], name
    for prefix, loader in PREFIX_SOURCES.items():
        if name.startswith(prefix):
            return loader, name[len(prefix) :]
    raise ValueError(
        f"unknown dataset {name!r}; available: {', '.join(available_datasets())} "
        "(e.g. 'tfds:cifar10' for any prepared TensorFlow Datasets image-classification "
        "set, 'npz:/path/arrays.npz' for your own arrays, 'images:/path/folder' for a "
        "folder of images with one sub-folder per class)"
    )


CLASS_SUBSET_SEP = "#classes="


def split_class_subset(name: str) -> tuple[str, tuple[int, ...] | None]:
    """``"fashion_mnist#classes=0-4"`` -> ``("fashion_mnist", (0, 1, 2, 3, 4))``.

    The suffix keeps only the listed classes of a dataset (both splits), relabelled
    ``0..k-1`` in the listed order: a comma list of class ids and ``a-b`` ranges, e.g.
    ``#classes=5-9`` or ``#classes=0,2,4``. Without the suffix the classes are ``None`` (all).
    """
    if not isinstance(name, str) or CLASS_SUBSET_SEP not in name:
        return name, None
    base, spec = name.split(CLASS_SUBSET_SEP, 1)
    classes: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            classes.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"dataset {name!r}: bad class list {spec!r}; write e.g. "
                         f"{base}{CLASS_SUBSET_SEP}0-4 or {base}{CLASS_SUBSET_SEP}0,2,4") from None
    if not base or len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"dataset {name!r}: a class subset needs a dataset name and at least "
                         f"two distinct classes, e.g. {base or 'fashion_mnist'}"
                         f"{CLASS_SUBSET_SEP}0-4")
    return base, tuple(classes)


def select_classes(raw: RawData, classes: tuple[int, ...], name: str) -> RawData:
    """The images of ``classes`` only, relabelled ``0..k-1`` in that order."""
    bad = [c for c in classes if not 0 <= c < raw.num_classes]
    if bad:
        raise ValueError(f"dataset {name!r}: classes {bad} do not exist (it has "
                         f"{raw.num_classes} classes, 0..{raw.num_classes - 1})")
    lut = np.full(raw.num_classes, -1, np.int64)
    lut[list(classes)] = np.arange(len(classes))

    def keep(x, y):
        y = np.asarray(y).astype(np.int64)
        m = lut[y] >= 0
        return np.asarray(x)[m], lut[y[m]].astype(np.int32)

    x_train, y_train = keep(raw.x_train, raw.y_train)
    x_test, y_test = keep(raw.x_test, raw.y_test)
    return RawData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=len(classes),
                   class_names=tuple(str(raw.class_names[c]) for c in classes))


def load_raw(name: str, data_dir: str | os.PathLike | None = None) -> RawData:
    """Loads the raw arrays of dataset ``name`` through the registry.

    A ``#classes=...`` suffix (:func:`split_class_subset`) keeps only those classes, e.g.
    ``"fashion_mnist#classes=0-4"`` and ``"fashion_mnist#classes=5-9"``: a disjoint-class
    split of one dataset, each with its own train and test split.
    """
    base, classes = split_class_subset(name)
    loader, argument = resolve_source(base)
    raw = loader(argument, None if data_dir is None else os.fspath(data_dir))
    return raw if classes is None else select_classes(raw, classes, name)
