"""Baselines and MGDD in one harness: every method returns synthetic sets the same way.

A *method* is a function ``method(key, dataset, ipc, snapshot_steps, config) -> Iterator[Snapshot]``
registered in :data:`METHODS` under its name:

* ``key``: the method's PRNG key (every draw of the method comes from it);
* ``dataset``: a preprocessed :class:`mgdd_jax.data.Dataset` (the same for all methods);
* ``ipc``: images per class of the synthetic set;
* ``snapshot_steps``: strictly increasing optimisation step counts at which the method
  yields its current set (``0``: the set before any optimisation), checked by
  :func:`check_snapshot_steps`; a method without optimisation steps (``random``) yields one
  snapshot at step 0 whatever is asked;
* ``config``: the benchmark config (``mgdd_jax/configs/benchmark.py``), read-only; each
  method reads its own subtree (``frepo``, ``pixel``) and the shared ones (``generator``,
  ``feature``, ``adapt``, ``labels``, ``meta_checkpoint``).

Each :class:`Snapshot` carries the set (``(n, H, W, C)`` float32 images, ``(n, C)`` float32
regression targets: soft labels, or centred one-hot) and the method's own cumulative wall time up
to that snapshot, with the evaluation (and the copy of the snapshot to the host) excluded, so
accuracy against time comes out of one run.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import chex
import numpy as np

from mgdd_jax import data


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One method's synthetic set after ``steps`` optimisation steps.

    Attributes:
      steps: optimisation steps taken (0: the initial set).
      seconds: the method's cumulative wall time up to this snapshot (set-up, label solve,
        optimisation, generation), evaluation excluded.
      x: ``(n, H, W, C)`` float32 images, preprocessed like the dataset.
      y: ``(n, C)`` float32 targets (soft labels or centred one-hot).
      timing: the parts of ``seconds`` the method can name (e.g. ``label_solve_s``,
        ``distill_s``, ``generation_s``).
    """

    steps: int
    seconds: float
    x: np.ndarray
    y: np.ndarray
    timing: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        chex.assert_rank(self.x, 4)
        chex.assert_rank(self.y, 2)
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"snapshot has {self.x.shape[0]} images and {self.y.shape[0]} labels")
        if self.x.dtype != np.float32 or self.y.dtype != np.float32:
            raise ValueError(f"snapshot arrays must be float32, got {self.x.dtype}, {self.y.dtype}")


MethodFn = Callable[[chex.PRNGKey, data.Dataset, int, Sequence[int], Any], Iterator[Snapshot]]

METHODS: dict[str, MethodFn] = {}


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add ``fn`` to :data:`METHODS` under ``name`` (once)."""
    def deco(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = fn
        return fn
    return deco


def check_snapshot_steps(snapshot_steps: Sequence[int]) -> tuple[int, ...]:
    """The snapshot steps of a method call, checked: every method's one rule.

    Args:
      snapshot_steps: a non-empty sequence of integers (``int`` or NumPy integers, not
        ``bool``, not strings or floats, even integral ones), each >= 0 (0: the initial set),
        strictly increasing (sorted, no repeats).

    Returns:
      The steps as a tuple of Python ints.

    Raises:
      ValueError: naming what is wrong, before any work.
    """
    steps = tuple(snapshot_steps)
    if not steps:
        raise ValueError("snapshot_steps is empty; ask for at least one step, e.g. (0, 1000)")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"snapshot_steps must be integers >= 0, got {steps}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"snapshot_steps must be strictly increasing, got {steps}; sort them "
                         "and drop repeats")
    return tuple(int(s) for s in steps)


def run_method(name: str, key: chex.PRNGKey, dataset: data.Dataset, ipc: int,
               snapshot_steps: Sequence[int], config: Any) -> list[Snapshot]:
    """All snapshots of method ``name`` (a key of :data:`METHODS`), in step order."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return list(METHODS[name](key, dataset, ipc, snapshot_steps, config))


# Importing the method modules registers them.
from mgdd_jax.baselines import generators  # noqa: E402,F401
from mgdd_jax.baselines import frepo  # noqa: E402,F401
from mgdd_jax.baselines import pixel  # noqa: E402,F401
