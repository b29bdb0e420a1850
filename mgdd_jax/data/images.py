"""The ``images:DIR`` data source: your own images, one sub-folder per class.

Layout (one rule): if ``DIR`` holds a folder named ``train`` or ``test``, it must hold exactly
the two folders ``train/`` and ``test/``, each with the same class folders
(``DIR/train/<class>/...``, ``DIR/test/<class>/...``); otherwise every sub-folder of ``DIR``
is a class (``DIR/<class>/...``) and the test split is a seeded hold-out of ``test_fraction``
of every class (:func:`mgdd_jax.data.glyphs.split_per_class`, as for the glyph corpus).
A class folder may have sub-folders; every image under it belongs to the class. Names that
start with ``.`` (``.DS_Store``, ``.ipynb_checkpoints``) are skipped everywhere. Class names
are the folder names in sorted order (class ``i`` is the ``i``-th name); they travel with the
data as ``class_names`` (``Dataset.metadata()``, saved in every ``ipc*.npz``).

The name takes options after the folder, comma-separated ``KEY=VALUE`` as in
``glyphs:classes=C,per_class=N``::

    images:DIR[,size=N][,resize=crop|resize][,color=grey|rgb][,test_fraction=F][,seed=K][,flip=0|1]

* ``size=N``: every image becomes ``N x N`` (Pillow, bilinear, antialiased). ``resize=crop``
  (default) first cuts the largest centred square, ``resize=resize`` stretches the whole
  image. Without ``size`` all images must share one size.
* ``color=grey`` (1 channel, ITU-R 601 luma) or ``color=rgb`` (3 channels; alpha is dropped,
  grey is repeated). Without it all images must be grey or all colour.
* ``test_fraction=F`` (default 0.1) and ``seed=K`` (default 0): the hold-out split, only
  without a ``test/`` folder.
* ``flip=0|1`` (default 0): whether the evaluation networks see horizontal flips; it is read
  by :func:`mgdd_jax.data.settings.settings_for` and so ends up in the evaluation protocol
  saved with every set. Off by default: the loader cannot know whether a mirrored image is
  still of its class (it is not for digits, letters, signs).

Every problem with the tree is a :class:`ValueError` that names the files at fault and what to
do, raised before anything is written: the tree's layout is checked by listing it (nothing is
opened), then every file is decoded (in a thread pool) and the pixels are checked. The decoded
``uint8`` arrays are cached as one ``.npz`` in ``<cache>/images/`` (``$MGDD_JAX_CACHE`` or
``~/.cache/mgdd_jax``), keyed by the tree's file list, sizes and modification times and by the
decoding options (``size``, ``resize``, ``color``), so a second load lists the tree and reads
one file. The split is redone from the listing each time, so ``test_fraction`` and ``seed``
share the cache.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import re
import stat
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mgdd_jax.data import glyphs
from mgdd_jax.data.dataset import RawData
from mgdd_jax.data.errors import DatasetNotFoundError
from mgdd_jax.data.glyph_format import corpus_key
from mgdd_jax.data.preprocess import CACHE_ENV_VAR, resolve_cache_dir
from mgdd_jax.data.validation import MIN_IMAGE_HEIGHT
from mgdd_jax.outputs import atomic_path

if TYPE_CHECKING:
    import PIL.Image

logger = logging.getLogger(__name__)

PREFIX = "images:"
OPTION_KEYS = ("size", "resize", "color", "test_fraction", "seed", "flip")
# ``npz:PATH,flip=0|1``: the one option of the npz source (mgdd_jax.data.sources.load_npz).
NPZ_OPTION_KEYS = ("flip",)
RESIZE_MODES = ("crop", "resize")
COLOR_MODES = ("grey", "rgb")
DEFAULT_TEST_FRACTION = glyphs.TEST_FRACTION
DEFAULT_SEED = 0
DEFAULT_FLIP = False
SPLIT_DIRS = ("train", "test")
CACHE_SUBDIR = "images"
_CACHE_FORMAT = "mgdd_jax-images-v1"
_MAX_LISTED = 8  # paths shown per problem; the rest are counted
_CHUNK = 256  # files per thread-pool task
# Pillow modes of one grey channel; every other mode (P, RGB, RGBA, CMYK, ...) is colour.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"})
_WIDE_MODES = frozenset({"I", "F"})  # 32-bit pixels: no agreed range, refused
_OPTION_ITEM = re.compile(r"\s*[A-Za-z_]+\s*=.*")


# ------------------------------------------------------------------------------- the name
def split_options(spec: str, prefix: str, keys: Collection[str]) -> tuple[str, dict[str, str]]:
    """``"DIR,size=28,color=grey"`` -> ``("DIR", {"size": "28", "color": "grey"})``.

    The trailing comma-separated ``KEY=VALUE`` items are options; what comes before them is
    the path, which may itself hold commas. ``prefix`` (``"images:"``, ``"npz:"``) is only
    used in messages.

    Raises:
      ValueError: an option not in ``keys``, or one given twice.
    """
    parts = spec.split(",")
    n = len(parts)
    while n > 1 and _OPTION_ITEM.fullmatch(parts[n - 1]):
        n -= 1
    path = ",".join(parts[:n]).strip()
    options: dict[str, str] = {}
    for item in parts[n:]:
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in keys:
            raise ValueError(f"dataset {prefix + spec!r}: unknown option {key!r}; options are "
                             f"{', '.join(keys)} (e.g. {prefix}PATH,{keys[0]}=...)")
        if key in options:
            raise ValueError(f"dataset {prefix + spec!r}: option {key!r} is given twice")
        options[key] = value
    return path, options


def parse_flip(value: str, where: str) -> bool:
    """``"0"`` -> False, ``"1"`` -> True; anything else is a ValueError naming ``where``."""
    if value not in ("0", "1"):
        raise ValueError(f"{where}: flip={value!r} must be 0 (no horizontal flips in the "
                         "evaluation augmentations: digits, text, signs) or 1 (flips: photos "
                         "of objects, textures)")
    return value == "1"


def flip_option(name: str) -> bool | None:
    """The ``flip=`` option of an ``images:`` or ``npz:`` dataset name; None when not given
    (or for other sources). A ``#classes=`` suffix is ignored."""
    base = name.split("#classes=", 1)[0]
    for prefix, keys in ((PREFIX, OPTION_KEYS), ("npz:", NPZ_OPTION_KEYS)):
        if base.startswith(prefix):
            _, options = split_options(base[len(prefix):], prefix, keys)
            if "flip" in options:
                return parse_flip(options["flip"], f"dataset {base!r}")
    return None


@dataclasses.dataclass(frozen=True)
class ImageFolderSpec:
    """What an ``images:`` name asks for (module docstring); ``color`` None: as stored."""

    root: str
    size: int | None = None
    resize: str = "crop"
    color: str | None = None
    test_fraction: float | None = None  # None: DEFAULT_TEST_FRACTION (hold-out only)
    seed: int | None = None  # None: DEFAULT_SEED (hold-out only)
    flip: bool = DEFAULT_FLIP

    def decoding(self) -> str:
        """The options that change decoded pixels (part of the cache key)."""
        return f"size={self.size},resize={self.resize if self.size else '-'},color={self.color}"


def parse_spec(spec: str) -> ImageFolderSpec:
    """``"DIR,size=28,color=grey"`` -> :class:`ImageFolderSpec`; ValueError on a bad option."""
    root, options = split_options(spec, PREFIX, OPTION_KEYS)
    where = f"dataset {PREFIX + spec!r}"
    if not root:
        raise ValueError(f"{where}: 'images:' needs a folder, e.g. 'images:/data/my_images' "
                         "(one sub-folder of images per class)")
    values: dict = {"root": root}
    if "size" in options:
        text = options["size"]
        if not re.fullmatch(r"\d+", text) or int(text) < MIN_IMAGE_HEIGHT:
            raise ValueError(f"{where}: size={text!r} must be an integer >= {MIN_IMAGE_HEIGHT} "
                             "(the side of the square images, in pixels)")
        values["size"] = int(text)
    if "resize" in options:
        if options["resize"] not in RESIZE_MODES:
            raise ValueError(f"{where}: resize={options['resize']!r} must be crop (centre "
                             "square, then scale) or resize (scale the whole image)")
        if "size" not in options:
            raise ValueError(f"{where}: resize= needs size=N (the side to resize to)")
        values["resize"] = options["resize"]
    if "color" in options:
        color = {"gray": "grey"}.get(options["color"], options["color"])
        if color not in COLOR_MODES:
            raise ValueError(f"{where}: color={options['color']!r} must be grey (1 channel) "
                             "or rgb (3 channels)")
        values["color"] = color
    if "test_fraction" in options:
        try:
            fraction = float(options["test_fraction"])
        except ValueError:
            fraction = float("nan")
        if not 0 < fraction < 1:
            raise ValueError(f"{where}: test_fraction={options['test_fraction']!r} must be a "
                             "number strictly between 0 and 1, e.g. 0.1")
        values["test_fraction"] = fraction
    if "seed" in options:
        if not re.fullmatch(r"\d+", options["seed"]):
            raise ValueError(f"{where}: seed={options['seed']!r} must be an integer >= 0")
        values["seed"] = int(options["seed"])
    if "flip" in options:
        values["flip"] = parse_flip(options["flip"], where)
    return ImageFolderSpec(**values)


# ---------------------------------------------------------------------------- the listing
@dataclasses.dataclass(frozen=True)
class ImageTree:
    """A checked listing of an image folder (nothing opened yet).

    Attributes:
      root: the folder.
      class_names: sorted class folder names.
      files: every image's path, train split first, each class's in sorted path order.
      labels: ``(len(files),)`` int32 class ids.
      is_test: ``(len(files),)`` bool, True for files under ``test/`` (all False without it).
      explicit_test: whether the tree has ``train/`` and ``test/`` folders.
      signature: ``(relative path, size, mtime_ns)`` per file, the cache key's part.
    """

    root: Path
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray
    is_test: np.ndarray
    explicit_test: bool
    signature: tuple[tuple[str, int, int], ...]


def _listing(paths: Sequence[object], limit: int = _MAX_LISTED) -> str:
    shown = "\n    ".join(str(p) for p in paths[:limit])
    more = f"\n    ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"\n    {shown}{more}"


def _pil():
    """Pillow's ``Image`` and ``ImageOps``, imported on first use (loading any other dataset,
    or importing :mod:`mgdd_jax.data`, does not import Pillow)."""
    from PIL import Image, ImageOps

    return Image, ImageOps


def _image_suffixes() -> frozenset[str]:
    """File suffixes Pillow can open (``.png``, ``.jpg``, ``.webp``, ...)."""
    Image, _ = _pil()
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop: reported by the walk
        return False


def _visible(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


class _Scan:
    """Walks the class folders, collecting files and every problem it meets."""

    def __init__(self):
        self.suffixes = _image_suffixes()
        self.problems: dict[str, list[str]] = {}

    def problem(self, kind: str, what: object) -> None:
        self.problems.setdefault(kind, []).append(str(what))

    def entry_kind(self, entry: os.DirEntry) -> tuple[str, os.stat_result | None]:
        """``"dir"``, ``"file"`` or ``"bad"`` (a loop, a broken link, a socket, ...)."""
        try:
            st = entry.stat()  # follows symbolic links
        except OSError as e:
            if entry.is_symlink():
                self.problem("links", f"{entry.path} -> {os.readlink(entry.path)} "
                                      f"({e.strerror})")
            else:
                self.problem("unreadable", f"{entry.path} ({e.strerror})")
            return "bad", None
        if stat.S_ISDIR(st.st_mode):
            return "dir", st
        if stat.S_ISREG(st.st_mode):
            return "file", st
        self.problem("special", entry.path)
        return "bad", None

    def loop(self, entry: os.DirEntry) -> None:
        target = os.readlink(entry.path) if entry.is_symlink() else "itself"
        self.problem("links", f"{entry.path} -> {target} (a folder that contains this link: "
                              "a loop)")

    def case_clashes(self, names: Sequence[str], folder: Path) -> None:
        seen: dict[str, str] = {}
        for name in names:
            other = seen.setdefault(name.casefold(), name)
            if other != name:
                self.problem("case", f"{folder / other} and {folder / name}")

    def walk(self, folder: str, ancestors: frozenset, out: list) -> None:
        """Appends ``(path, size, mtime_ns)`` of every file under ``folder``."""
        try:
            entries = _visible(folder)
        except OSError as e:
            self.problem("unreadable", f"{folder} ({e.strerror})")
            return
        self.case_clashes([e.name for e in entries], Path(folder))
        for entry in entries:
            kind, st = self.entry_kind(entry)
            if kind == "dir":
                if (st.st_dev, st.st_ino) in ancestors:
                    self.loop(entry)
                    continue
                self.walk(entry.path, ancestors | {(st.st_dev, st.st_ino)}, out)
            elif kind == "file":
                if os.path.splitext(entry.name)[1].lower() in self.suffixes:
                    out.append((entry.path, st.st_size, st.st_mtime_ns))
                else:
                    self.problem("not_images", entry.path)

    def split(self, split_root: Path, ancestors: frozenset) -> dict[str, list]:
        """``{class name: files}`` of one split's folder."""
        classes: dict[str, list] = {}
        try:
            entries = _visible(split_root)
        except OSError as e:
            self.problem("unreadable", f"{split_root} ({e.strerror})")
            return classes
        self.case_clashes([e.name for e in entries], split_root)
        for entry in entries:
            kind, st = self.entry_kind(entry)
            if kind == "file":
                self.problem("loose", entry.path)
            elif kind == "dir":
                if (st.st_dev, st.st_ino) in ancestors:
                    self.loop(entry)
                    continue
                files: list = []
                self.walk(entry.path, ancestors | {(st.st_dev, st.st_ino)}, files)
                if not files:
                    self.problem("empty", entry.path)
                classes[entry.name] = files
        return classes


_PROBLEMS = {  # kind -> (what is wrong, what to do); in this order in the message
    "loose": ("files outside any class folder",
              "move each into the folder of its class (DIR/<class>/) or delete it"),
    "empty": ("class folders without images", "put images in them or delete them"),
    "not_images": ("files that are not images (by their suffix)",
                   "delete or move them; images need a suffix Pillow opens (.png, .jpg, ...)"),
    "links": ("symbolic links that cannot be followed (loops or broken links)",
              "remove or fix them"),
    "special": ("entries that are neither files nor folders", "remove them"),
    "unreadable": ("entries that cannot be listed or read", "fix their permissions"),
    "case": (("names that differ only by case (one name on macOS and Windows; ambiguous "
              "class names)"), "rename one of each pair"),
}


def _raise_problems(root: Path, problems: dict[str, list[str]], table: dict,
                    done: str) -> None:
    if not problems:
        return
    lines = [f"image folder {root} cannot be used ({done}):"]
    for kind, (what, todo) in table.items():
        if kind in problems:
            lines.append(f"  {what} ({len(problems[kind])}); {todo}:{_listing(problems[kind])}")
    raise ValueError("\n".join(lines))


def scan_tree(root: str | os.PathLike) -> ImageTree:
    """Lists and checks an image folder (module docstring); nothing is opened or written.

    Raises:
      DatasetNotFoundError: ``root`` is not a folder.
      ValueError: naming every file at fault: files outside class folders, empty class
        folders, non-image files, looping or broken links, names differing only by case, a
        ``train``/``test`` layout that is incomplete or has other entries, test classes that
        differ from the train classes, fewer than two classes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder not found: {root}" + (" (it is a file)" if root.exists() else "")
            + ". 'images:DIR' needs a folder with one sub-folder of images per class "
            "(DIR/<class>/<image>.png), or DIR/train/<class>/... and DIR/test/<class>/...")
    scan = _Scan()
    root_st = root.stat()
    try:
        top = _visible(root)
    except OSError as e:
        raise ValueError(f"image folder {root} cannot be listed ({e.strerror}); fix its "
                         "permissions") from e
    top_dirs = {e.name for e in top if e.name in SPLIT_DIRS and _is_dir(e)}
    explicit = bool(top_dirs)
    if explicit:
        others = sorted(e.path for e in top if e.name not in SPLIT_DIRS)
        missing = [s for s in SPLIT_DIRS if s not in top_dirs]
        if others or missing:
            raise ValueError(
                f"image folder {root} has a {' and a '.join(sorted(top_dirs))} folder, so it "
                "must hold exactly the folders train/ and test/, each with one folder per "
                "class (without train/ and test/, every sub-folder is a class and the test "
                "split is a hold-out, test_fraction=F; no class can be called 'train' or "
                "'test')"
                + (f"; {'/ and '.join(missing)}/ is missing" if missing else "")
                + (f"; move these into train/ (or test/), or delete them:{_listing(others)}"
                   if others else ""))
    splits = {s: root / s for s in SPLIT_DIRS} if explicit else {"train": root}
    ancestors = frozenset({(root_st.st_dev, root_st.st_ino)})
    found = {}
    for split, folder in splits.items():
        st = folder.stat()
        found[split] = scan.split(folder, ancestors | {(st.st_dev, st.st_ino)})
    _raise_problems(root, scan.problems, _PROBLEMS, "nothing was opened or written")
    class_names = tuple(sorted(found["train"]))
    if explicit:
        test_names = tuple(sorted(found["test"]))
        if test_names != class_names:
            only_train = sorted(set(class_names) - set(test_names))
            only_test = sorted(set(test_names) - set(class_names))
            raise ValueError(
                f"image folder {root}: train/ and test/ must have the same class folders"
                + (f"; only in train/: {only_train}" if only_train else "")
                + (f"; only in test/: {only_test}" if only_test else "")
                + ". Add the missing folders (with images) or remove the extra ones.")
    if len(class_names) < 2:
        raise ValueError(
            f"image folder {root} has {len(class_names)} class folder(s) "
            f"{list(class_names)} in {splits['train']}: classification needs at least two. "
            "Put each class's images in its own sub-folder (DIR/<class>/<image>.png).")
    files, labels, is_test, signature = [], [], [], []
    skip = len(os.path.join(root, ""))  # scandir's paths all start with root + "/"
    for split in splits:
        for c, name in enumerate(class_names):
            for path, size, mtime in found[split][name]:
                files.append(path)
                labels.append(c)
                is_test.append(split == "test")
                signature.append((path[skip:].replace(os.sep, "/"), size, mtime))
    return ImageTree(root=root, class_names=class_names, files=tuple(files),
                     labels=np.asarray(labels, np.int32), is_test=np.asarray(is_test, bool),
                     explicit_test=explicit, signature=tuple(signature))


# ---------------------------------------------------------------------------- decoding
@dataclasses.dataclass(frozen=True)
class _Decoded:
    pixels: np.ndarray | None  # uint8 (H, W) grey or (H, W, 3) colour
    kind: str  # "grey" or "rgb": the file's own
    error: str | None = None


def _to_8bit(img: PIL.Image.Image, color: str) -> PIL.Image.Image:
    """An ``L`` (grey) or ``RGB`` image; 16-bit grey is scaled to 8 bits."""
    Image, _ = _pil()
    if img.mode.startswith("I;16"):
        wide = np.asarray(img, np.uint32)
        img = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    mode = "L" if color == "grey" else "RGB"
    return img if img.mode == mode else img.convert(mode)


def decode_image(path: str | os.PathLike, spec: ImageFolderSpec) -> _Decoded:
    """Decodes one file to uint8 pixels with ``spec``'s size and colour options."""
    Image, ImageOps = _pil()
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here
            kind = "grey" if img.mode in _GREY_MODES or img.mode in _WIDE_MODES else "rgb"
            if img.mode in _WIDE_MODES:
                return _Decoded(None, kind, f"32-bit pixels (mode {img.mode}), whose range is "
                                "unknown: save it with 8 or 16 bits per channel")
            if "exif" in img.info or img.format == "TIFF":  # camera JPEGs: upright as shown
                img = ImageOps.exif_transpose(img)
            img = _to_8bit(img, spec.color or kind)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        # Pillow's ways of saying "not a readable image": unidentified, truncated, corrupt.
        return _Decoded(None, "?", f"{type(e).__name__}: {e}")
    if spec.size is not None and img.size != (spec.size, spec.size):
        w, h = img.size
        box = None
        if spec.resize == "crop":
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side,
                   (h - side) // 2 + side)
        img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR, box=box)
    return _Decoded(np.asarray(img), kind)


def default_workers() -> int:
    """Threads for decoding: Pillow decodes with the GIL released."""
    return min(32, (os.cpu_count() or 1) + 4)


def decode_tree(tree: ImageTree, spec: ImageFolderSpec, workers: int | None = None) -> np.ndarray:
    """Every file of ``tree`` decoded in a thread pool; checked, then stacked.

    Returns:
      ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` uint8, in ``tree.files`` order.

    Raises:
      ValueError: naming every unreadable file, the grey and colour files when they are mixed
        without ``color=``, and the files of each size when sizes are mixed without ``size=``.
    """
    files = list(tree.files)
    chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]

    def run(chunk: list[str]) -> list[_Decoded]:
        return [decode_image(f, spec) for f in chunk]

    with concurrent.futures.ThreadPoolExecutor(workers or default_workers()) as pool:
        decoded = [d for part in pool.map(run, chunks) for d in part]
    problems: dict[str, list[str]] = {}
    bad = [f"{f} ({d.error})" for f, d in zip(files, decoded) if d.error is not None]
    if bad:
        problems["unreadable"] = bad
    if spec.color is None:
        by_kind = _group(files, decoded, lambda d: d.kind)
        if len(by_kind) > 1:
            problems["colour"] = [f"{kind}: {len(fs)} files, e.g. {', '.join(fs[:3])}"
                                  for kind, fs in sorted(by_kind.items())]
    if spec.size is None:
        by_size = _group(files, decoded, lambda d: "x".join(map(str, d.pixels.shape[1::-1])))
        if len(by_size) > 1:
            most_first = sorted(by_size.items(), key=lambda kv: -len(kv[1]))
            problems["sizes"] = [f"{size} (width x height): {len(fs)} files, e.g. "
                                 f"{', '.join(fs[:3])}" for size, fs in most_first]
    _raise_problems(tree.root, problems, _PIXEL_PROBLEMS, "nothing was written")
    return np.stack([d.pixels for d in decoded])


def _group(files: list[str], decoded: list[_Decoded], key) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for f, d in zip(files, decoded):
        if d.pixels is not None:
            groups.setdefault(key(d), []).append(f)
    return groups


_PIXEL_PROBLEMS = {
    "unreadable": ("files Pillow cannot read (corrupt, truncated or not images)",
                   "re-export or delete them"),
    "colour": ("kinds of images, grey and colour mixed",
               "pass color=grey or color=rgb (e.g. images:DIR,color=rgb) to convert them all"),
    "sizes": ("image sizes",
              ("pass size=N (e.g. images:DIR,size=32; resize=crop cuts the centred square "
               "first, resize=resize stretches) or resize the files")),
}


# ------------------------------------------------------------------------------- the cache
def cache_key(tree: ImageTree, spec: ImageFolderSpec) -> str:
    """Hex digest of the decoded arrays' identity: file list, sizes, mtimes, decoding options."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{_CACHE_FORMAT}\0{spec.decoding()}\0".encode())
    for rel, size, mtime in tree.signature:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def cache_path(tree: ImageTree, spec: ImageFolderSpec) -> Path:
    """Where the decoded arrays of ``tree`` with ``spec``'s options are (or would be) cached."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tree.root.name).strip("._")[:48] or "images"
    return resolve_cache_dir() / CACHE_SUBDIR / f"{safe}-{cache_key(tree, spec)}.npz"


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            x = f["x"]
    except (OSError, ValueError, EOFError, KeyError) as e:
        logger.warning("ignoring unreadable image cache file %s (%s); decoding again", path, e)
        return None
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[0] != n:
        logger.warning("ignoring invalid image cache file %s; decoding again", path)
        return None
    return x


def load_pixels(tree: ImageTree, spec: ImageFolderSpec, workers: int | None = None) -> np.ndarray:
    """:func:`decode_tree` through the on-disk cache (an unwritable cache only warns)."""
    path = cache_path(tree, spec)
    cached = _read_cache(path, len(tree.files))
    if cached is not None:
        logger.info("image cache hit: %s", path)
        return cached
    x = decode_tree(tree, spec, workers)
    try:
        with atomic_path(os.fspath(path), ".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, x=x)  # uncompressed: the cached load is one read
        logger.info("decoded images cached at %s", path)
    except OSError as e:
        logger.warning("could not write the image cache file %s (%s); continuing without "
                       "caching. Set %s to a writable folder.", path, e, CACHE_ENV_VAR)
    return x


# ------------------------------------------------------------------------------ the source
def load_images(spec: str, data_dir: str | None) -> RawData:
    """The ``images:DIR,...`` source (module docstring): train/test uint8 arrays and classes.

    A relative ``DIR`` is resolved against ``data_dir`` when one is given.
    """
    parsed = parse_spec(spec)
    root = Path(parsed.root).expanduser()
    if not root.is_absolute() and data_dir is not None:
        root = Path(data_dir).expanduser() / root
    tree = scan_tree(root)
    if tree.explicit_test and (parsed.test_fraction is not None or parsed.seed is not None):
        raise ValueError(f"dataset {PREFIX + spec!r}: {root} has a test/ folder, which is the "
                         "test split; test_fraction= and seed= choose a hold-out split and "
                         "apply only without one: drop them")
    x = load_pixels(tree, parsed)
    if tree.explicit_test:
        train, test = np.flatnonzero(~tree.is_test), np.flatnonzero(tree.is_test)
    else:
        fraction = DEFAULT_TEST_FRACTION if parsed.test_fraction is None else parsed.test_fraction
        seed = DEFAULT_SEED if parsed.seed is None else parsed.seed
        train, test = glyphs.split_per_class(corpus_key(seed), tree.labels, fraction)
    return RawData(x_train=x[train], y_train=tree.labels[train], x_test=x[test],
                   y_test=tree.labels[test], num_classes=len(tree.class_names),
                   class_names=tree.class_names)
