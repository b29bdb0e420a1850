r"""How long an ``images:DIR`` folder takes to load: the first (decoding) and the cached load.

    python -m experiments.benchmarks.image_folder --out=results/benchmarks/image_folder_cpu.json

Builds a 60,000-image tree from Fashion-MNIST's train split (28x28 grey PNGs, one folder per
class: ``TREE/<class>/<index>.png``) under a temporary folder, or under ``--tree`` (kept, and
reused when it already holds the images). Then, with an empty cache folder
(``$MGDD_JAX_CACHE``), times the first ``images:TREE`` load (list, decode in a thread pool,
write the cache, split), and the cached load (list, read one ``.npz``, split): median of
``--repeats``. For scale, it also times the IDX source (``fashion_mnist``) on the same images.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from absl import app, flags
from PIL import Image

from experiments import cli
from experiments.benchmarks.common import machine_info
from mgdd_jax import outputs
from mgdd_jax.data import images, preprocess, sources

_OUT = flags.DEFINE_string("out", "results/benchmarks/image_folder_cpu.json", "JSON output path.")
_TREE = flags.DEFINE_string("tree", "", "Where to build (or find) the tree; '' = a temporary "
                            "folder, deleted afterwards.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the "
                                "Debian package's).")
_NUM = flags.DEFINE_integer("num_images", 60_000, "Images in the tree (the first of the train "
                            "split).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed cached loads (the median is reported).")


def class_folder(name: str) -> str:
    """``"T-shirt/top"`` -> ``"T-shirt_top"``: a class name as one folder name."""
    return name.replace("/", "_")


def build_tree(tree: Path, x: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> float:
    """Writes ``x[i]`` as ``tree/<class>/<i:05d>.png``; returns the seconds it took."""
    t0 = time.perf_counter()
    for name in names:
        (tree / class_folder(name)).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        Image.fromarray(x[i]).save(tree / class_folder(names[y[i]]) / f"{i:05d}.png")

    with concurrent.futures.ThreadPoolExecutor(images.default_workers()) as pool:
        list(pool.map(write, range(len(x)), chunksize=256))
    return time.perf_counter() - t0


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv):
    del argv
    cli.quiet_library_logs()
    raw = sources.load_fashion_mnist("", _DATA_DIR.value)
    n = _NUM.value
    x, y = raw.x_train[:n], raw.y_train[:n]
    scratch = Path(tempfile.mkdtemp(prefix="mgdd-image-folder-"))
    tree = Path(_TREE.value).expanduser() if _TREE.value else scratch / "tree"
    try:
        existing = sum(len(files) for _, _, files in os.walk(tree)) if tree.is_dir() else 0
        build_s = None
        if existing != n:
            if existing:
                sys.exit(f"{tree} holds {existing} files, not {n}: pass an empty --tree")
            build_s = build_tree(tree, x, y, raw.class_names)
            print(f"wrote {n} PNGs to {tree} in {build_s:.1f} s")
        os.environ[preprocess.CACHE_ENV_VAR] = str(scratch / "cache")  # empty: a real first load
        name = f"images:{tree}"
        first_s, first = _timed(lambda: sources.load_raw(name))
        scan_s, _ = _timed(lambda: images.scan_tree(tree))
        cached = [_timed(lambda: sources.load_raw(name)) for _ in range(_REPEATS.value)]
        for _, again in cached:
            assert np.array_equal(again.x_train, first.x_train)
        cached_s = [t for t, _ in cached]
        idx_s = [_timed(lambda: sources.load_fashion_mnist("", _DATA_DIR.value))[0]
                 for _ in range(_REPEATS.value)]
        cache_files = list((scratch / "cache" / images.CACHE_SUBDIR).glob("*.npz"))
        result = {
            "command": "python -m experiments.benchmarks.image_folder " + " ".join(
                f"--{k}={v}" for k, v in (("out", _OUT.value), ("tree", _TREE.value),
                                          ("num_images", n), ("repeats", _REPEATS.value))
                if v not in ("", None)),
            "machine": machine_info(),
            "pillow": PIL.__version__,
            "tree": {"images": n, "format": "PNG, 28x28, mode L", "classes": len(raw.class_names),
                     "layout": "TREE/<class>/<index>.png (test split: seeded 10% hold-out)",
                     "build_s": build_s,
                     "note": "the files are in the OS page cache (just written or listed)"},
            "decode_workers": images.default_workers(),
            "listing_s": scan_s,
            "first_load_s": first_s,
            "cached_load_s": {"median_s": statistics.median(cached_s), "min_s": min(cached_s),
                              "max_s": max(cached_s), "repeats": len(cached_s)},
            "cache_file_bytes": sum(f.stat().st_size for f in cache_files),
            "idx_source_load_s": statistics.median(idx_s),
            "shapes": {"train": list(first.x_train.shape), "test": list(first.x_test.shape)},
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    outputs.write_json(_OUT.value, result)
    print(f"first load {first_s:.2f} s, cached load {result['cached_load_s']['median_s']:.2f} s "
          f"(median of {len(cached_s)}), listing alone {scan_s:.2f} s; wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
