"""Class-balanced sampling of dataset indices (jit-able).

A :class:`ClassIndex` lists the indices of every class in a padded table, built
once on the host. Sampling draws uniform noise over the table, pushes padding
slots to ``+inf`` and takes the ``per_class`` smallest entries per row: a
uniformly random subset without replacement within each class, with static
output shapes so everything can be traced by :func:`jax.jit`.
"""

from __future__ import annotations

import functools
import numbers

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np

from mgdd_jax.data.dataset import Dataset


@flax.struct.dataclass
class ClassIndex:
    """Dataset indices grouped by class (a pytree; pass it to jitted functions).

    Attributes:
      table: ``(C, max_count)`` int32; row ``c`` lists the indices of class ``c``
        in ascending order, padded by cycling through them again (so every entry
        is a valid index of that class; rows of empty classes are padded with 0).
      counts: ``(C,)`` int32 number of examples per class.
    """

    table: jax.Array
    counts: jax.Array

    @property
    def num_classes(self) -> int:
        """``C`` (static)."""
        return self.table.shape[0]

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_classes: int) -> ClassIndex:
        """Builds the index on the host from ``(N,)`` integer labels in ``[0, num_classes)``."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
            )
        counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
        max_count = max(int(counts.max(initial=0)), 1)
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        table = np.zeros((num_classes, max_count), np.int32)
        for c in range(num_classes):
            if counts[c]:
                members = order[starts[c] : starts[c] + counts[c]]
                table[c] = members[np.arange(max_count) % counts[c]]
        return cls(table=jnp.asarray(table), counts=jnp.asarray(counts, jnp.int32))


def _classes_or_all(class_index: ClassIndex, classes: jax.Array | None) -> jax.Array:
    if classes is None:
        return jnp.arange(class_index.num_classes, dtype=jnp.int32)
    classes = jnp.asarray(classes)
    chex.assert_rank(classes, 1)
    chex.assert_type(classes, int)
    return classes.astype(jnp.int32)


def _check_class_index(class_index: ClassIndex) -> None:
    chex.assert_rank([class_index.table, class_index.counts], [2, 1])
    chex.assert_type([class_index.table, class_index.counts], [jnp.int32, jnp.int32])
    chex.assert_axis_dimension(class_index.counts, 0, class_index.table.shape[0])


@functools.partial(jax.jit, static_argnames=("per_class",))
def class_balanced_indices(
    key: chex.PRNGKey,
    class_index: ClassIndex,
    per_class: int,
    classes: jax.Array | None = None,
) -> jax.Array:
    """Draws ``per_class`` distinct indices uniformly from each class.

    Args:
      key: PRNG key.
      class_index: from :meth:`ClassIndex.from_labels`.
      per_class: examples per class (static).
      classes: ``(k,)`` class ids to sample from, in output order (default:
        all classes ``0..C-1``).

    Returns:
      ``(k * per_class,)`` int32 indices, grouped by class in the order of
      ``classes``; within a class, a uniformly random subset in random order.
      If ``per_class`` exceeds a class's count (not checkable under tracing;
      call :func:`check_per_class` first), that class's surplus slots repeat
      some of its members.
    """
    _check_class_index(class_index)
    max_count = class_index.table.shape[1]
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1, got {per_class!r}")
    if per_class > max_count:
        raise ValueError(
            f"per_class={per_class} is larger than the largest class ({max_count} examples)"
        )
    classes = _classes_or_all(class_index, classes)
    rows = class_index.table[classes]
    counts = class_index.counts[classes]
    noise = jax.random.uniform(key, rows.shape)
    valid = jnp.arange(max_count)[None, :] < counts[:, None]
    noise = jnp.where(valid, noise, jnp.inf)
    # Stable argsort: padding slots (+inf ties) come last, in table order.
    order = jnp.argsort(noise, axis=1)[:, :per_class]
    return jnp.take_along_axis(rows, order, axis=1).reshape(-1)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def balanced_batch_indices(
    key: chex.PRNGKey,
    class_index: ClassIndex,
    batch_size: int,
    classes: jax.Array | None = None,
) -> jax.Array:
    """A class-balanced minibatch of indices.

    With ``k`` classes, each class gets ``batch_size // k`` examples and the
    remainder ``r = batch_size % k`` goes one each to ``r`` distinct classes
    chosen uniformly at random. No index repeats within a batch (as long as
    the classes are large enough; see :func:`check_per_class`).

    Args:
      key: PRNG key.
      class_index: from :meth:`ClassIndex.from_labels`.
      batch_size: number of indices (static), >= 1.
      classes: ``(k,)`` class ids to draw from (default: all classes).

    Returns:
      ``(batch_size,)`` int32 indices: first ``batch_size // k`` per class,
      grouped in the order of ``classes``, then the ``r`` extra ones.
    """
    _check_class_index(class_index)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    classes = _classes_or_all(class_index, classes)
    k = classes.shape[0]
    base, remainder = divmod(batch_size, k)
    if remainder == 0:
        return class_balanced_indices(key, class_index, base, classes)
    key_draw, key_pick = jax.random.split(key)
    # Draw one more than needed per class so the extras are distinct from the rest.
    draws = class_balanced_indices(key_draw, class_index, base + 1, classes).reshape(k, base + 1)
    extra_rows = jax.random.permutation(key_pick, k)[:remainder]
    main = draws[:, :base].reshape(-1)
    return jnp.concatenate([main, draws[extra_rows, base]])


def _counts_and_names(
    source: ClassIndex | Dataset | np.ndarray,
    class_names: tuple[str, ...] | None,
    num_classes: int | None,
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    if isinstance(source, Dataset):
        counts = np.bincount(source.y_train, minlength=source.num_classes)
        return counts, class_names or source.class_names
    if isinstance(source, ClassIndex):
        return np.asarray(source.counts), class_names
    labels = np.asarray(source)
    if (
        labels.ndim != 1
        or not np.issubdtype(labels.dtype, np.integer)
        or (labels.size and labels.min() < 0)
    ):
        raise ValueError("labels must be a 1-D array of non-negative integers")
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(labels.max(initial=-1)) + 1
    return np.bincount(labels, minlength=num_classes), class_names


def check_per_class(
    class_index_or_labels: ClassIndex | Dataset | np.ndarray,
    per_class: int,
    *,
    what: str = "IPC",
    class_names: tuple[str, ...] | None = None,
    num_classes: int | None = None,
) -> None:
    """Host-side check that ``per_class`` examples can be drawn from every class.

    Call it before any sampling work, so that a too-large IPC fails at once
    with an actionable message instead of silently repeating images.

    Args:
      class_index_or_labels: a :class:`ClassIndex`, a :class:`Dataset` (its
        train labels and class names are used) or ``(N,)`` integer labels.
      per_class: the requested number per class.
      what: what ``per_class`` is called in messages (``"IPC"``, ``"batch per class"``).
      class_names: names for messages (default: the dataset's, else none).
      num_classes: for raw labels, the class count (default ``max(label) + 1``
        or ``len(class_names)``).

    Raises:
      ValueError: if ``per_class < 1`` or larger than the smallest class.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral):
        raise ValueError(f"{what} must be an integer >= 1, got {per_class!r}")
    if per_class < 1:
        raise ValueError(f"{what} must be >= 1, got {what}={per_class}")
    counts, names = _counts_and_names(class_index_or_labels, class_names, num_classes)
    if counts.size == 0:
        raise ValueError(f"cannot draw {what}={per_class} per class: there are no classes")
    smallest = int(np.argmin(counts))
    count = int(counts[smallest])
    if per_class <= count:
        return
    label = f"class {smallest}" + (f" ({names[smallest]!r})" if names else "")
    if count == 0:
        raise ValueError(
            f"{what}={per_class} cannot be drawn: {label} has no train images; "
            "remove the class or fix the labels"
        )
    raise ValueError(
        f"{what}={per_class} is larger than {label} has ({count} train images); "
        f"choose {what} <= {count}"
    )


def sample_initial_set(
    key: chex.PRNGKey, dataset: Dataset, ipc: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced real train images, e.g. to initialise a synthetic set.

    Args:
      key: PRNG key.
      dataset: the (preprocessed) dataset.
      ipc: images per class.

    Returns:
      ``(x, y)``: ``(C * ipc, H, W, C_img)`` float32 images grouped by class
      (class 0 first) and their ``(C * ipc,)`` int32 labels.
    """
    check_per_class(dataset, ipc, what="IPC")
    class_index = ClassIndex.from_labels(dataset.y_train, dataset.num_classes)
    indices = np.asarray(class_balanced_indices(key, class_index, ipc))
    return dataset.x_train[indices], dataset.y_train[indices]
