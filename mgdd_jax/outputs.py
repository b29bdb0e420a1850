"""Writing results: atomic JSON / npz / PNG files, an early writability check, image grids.

Every writer goes through :func:`atomic_path`: the file is written under a temporary name in
the same folder and renamed over the target when complete, so an interrupted run never leaves
a half-written artefact that looks valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The caller writes the complete file at the yielded path (a ``.tmp-*`` file in
    ``path``'s folder, which is created if needed; ``suffix`` is appended to its
    name). When the ``with`` block ends normally, the temporary file's contents are
    flushed to disk (``os.fsync``), it gets the permissions of a normally created
    file (``0o666 & ~umask``; ``mkstemp`` makes ``0o600``) and is renamed over
    ``path`` with ``os.replace``. If the block raises, the temporary file is
    deleted and ``path`` is left as it was. The one atomic writer of the project:
    result files, the ZCA cache and the glyph corpus all go through it.

    Raises:
      OSError: if the folder cannot be created or the file cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # the contents reach the disk before the rename
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str, payload: Any) -> None:
    """Atomically write ``payload`` as indented JSON."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")


def write_text(path: str, text: str) -> None:
    """Atomically write ``text`` (UTF-8), e.g. a Markdown table."""
    with atomic_path(path, ".txt") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line (flushed; a torn last line is skipped by :func:`read_jsonl`)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")
        f.flush()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def write_npz(path: str, **arrays: Any) -> None:
    """Atomically write a compressed ``.npz``."""
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def check_writable_dir(path: str) -> str:
    """Create ``path`` if needed and prove it is writable, before any work starts.

    Raises:
      ValueError: naming the directory and what to do.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out={path} exists and is a file; choose a directory path.")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(
            f"output directory {path} is not writable ({e.strerror}); choose another --out "
            "or fix its permissions."
        ) from e
    return path


def image_grid(images: np.ndarray, per_row: int) -> np.ndarray:
    """Tile ``(n, H, W, C)`` images into one ``(rows*H, per_row*W, C)`` array (1-px gaps)."""
    n, h, w, c = images.shape
    rows = -(-n // per_row)
    grid = np.ones((rows * (h + 1) - 1, per_row * (w + 1) - 1, c), images.dtype)
    for i in range(n):
        r, col = divmod(i, per_row)
        grid[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = images[i]
    return grid


def _to_display(x: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (ZCA-whitened images have no natural range)."""
    x = np.asarray(x, np.float32)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    return (x - lo) / np.maximum(hi - lo, 1e-8)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str) -> None:
    """Atomically save a matplotlib figure as PNG and close it."""
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)


def finish_line_plot(fig: Any, ax: Any, path: str, *, xlabel: str, ylabel: str,
                     title: str = "") -> None:
    """Label, legend and grid a line plot, then :func:`save_figure` it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def save_before_after_png(
    path: str,
    before: np.ndarray,
    after: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    max_per_class: int = 10,
    title: str = "",
) -> None:
    """Initial vs generated images side by side (MGDD Fig. 6), one row per class."""
    plt = pyplot()
    classes = sorted(set(int(c) for c in labels))
    picks = [np.flatnonzero(labels == c)[:max_per_class] for c in classes]
    k = max(len(p) for p in picks)

    def panel(x):
        x = _to_display(x)
        rows = []
        for p in picks:
            row = x[p]
            if len(p) < k:
                row = np.concatenate([row, np.ones((k - len(p), *x.shape[1:]), x.dtype)])
            rows.append(row)
        return image_grid(np.concatenate(rows), k)

    fig, axes = plt.subplots(1, 2, figsize=(2 + 0.5 * k * 2, 1 + 0.5 * len(classes)))
    for ax, x, name in zip(axes, (before, after), ("initial (real)", "generated")):
        img = panel(x)
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray",
                  interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    h = before.shape[1] + 1
    axes[0].set_yticks([h * i + h / 2 for i in range(len(classes))])
    axes[0].set_yticklabels([class_names[c] if c < len(class_names) else str(c)
                             for c in classes], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def check_resumable_out(path: str, flag: str = "--out") -> str:
    """Check, before any work, a directory that a resumable run fills file by file (and may
    already hold its earlier results): refuse a file; the nearest existing directory on the
    way to ``path`` must be writable (``path`` is made when the first file is written).

    Returns:
      The absolute path.

    Raises:
      ValueError: naming the path and what to do.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}={path} exists and is a file; choose a directory path.")
    parent = path
    while not os.path.isdir(parent):
        if os.path.exists(parent):
            raise ValueError(f"{flag}={path} cannot be made: {parent} is a file; choose "
                             "another path.")
        parent = os.path.dirname(parent)
    check_writable_dir(parent)
    return path


def check_output_dir(path: str, *, overwrite: bool = False, flag: str = "--out") -> str:
    """Check, before any work, that a run's results can later be moved into ``path``.

    ``path`` itself is not created (:func:`atomic_dir` puts it in place at the end). A ``path``
    that already holds files is refused unless ``overwrite``.

    Raises:
      ValueError: naming the directory and what to do.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}={path} exists and is a file; choose a directory path.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise ValueError(f"{flag}={path} already holds results; choose a new {flag} or pass "
                         "--overwrite to replace them.")
    parent = os.path.dirname(path)
    try:
        check_writable_dir(parent)
    except ValueError as e:
        raise ValueError(f"output directory {path} is not writable (cannot write into its "
                         f"parent {parent}); choose another {flag} or fix its permissions."
                         ) from e
    if os.path.isdir(path):
        check_writable_dir(path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    Results appear all at once or not at all: on an exception the temporary directory is
    removed and ``path`` is left as it was (an earlier result there survives).
    """
    import shutil

    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
            os.replace(path, os.path.join(old, name))
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
