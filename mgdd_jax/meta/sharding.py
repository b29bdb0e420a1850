"""The meta step's devices and processes: the task mesh, and placing states and tasks on it.

Tasks are stacked on a leading axis sharded over the mesh axis ``"tasks"`` (:func:`task_mesh`);
the meta state is replicated (:func:`replicate`).

**Processes (multi-host).** The mesh may span several JAX processes (one per host). Task
``j`` of step ``i`` is a function of ``(key, i, j)`` only
(:func:`mgdd_jax.meta.tasks.step_inputs`), so each process draws just the tasks of its own
devices (:func:`process_tasks`) from the whole source, which every process loads, and
:func:`shard_batch` assembles the global batch from the processes' parts: P processes of D
devices give exactly the batch, and the update, of one process with P·D devices. The images
are not split between hosts, the tasks are: each host needs a copy of the source (a local
disk or a shared file system).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mgdd_jax.meta.config import MetaConfig


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place ``tree`` fully replicated on ``mesh`` (the meta state's sharding).

    On a mesh over several processes each process places its own copy, which must be the
    same everywhere (the meta state is: made from the run's key, or restored from one
    checkpoint); ``jax.device_put`` would check that with one all-gather per leaf.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(place, tree)


def task_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with axis ``"tasks"``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("tasks",))


def check_mesh(config: MetaConfig, mesh: Mesh) -> None:
    """Refuse a meta-batch that cannot be split evenly over the mesh's devices."""
    if config.tasks_per_step % mesh.size:
        raise ValueError(
            f"tasks_per_step={config.tasks_per_step} must be a multiple of the "
            f"{mesh.size} devices it is sharded over"
        )


def process_tasks(num_tasks: int, mesh: Mesh) -> np.ndarray:
    """The global indices of the tasks held by this process's devices of ``mesh``, ascending.

    Tasks are split over the mesh's ``"tasks"`` axis (contiguous blocks, one per device), so
    with one process this is ``0..num_tasks-1``, and with P processes on a mesh over
    ``jax.devices()`` (process by process), process ``r`` holds tasks ``r·num_tasks/P`` to
    ``(r+1)·num_tasks/P - 1``.
    """
    sharding = NamedSharding(mesh, PartitionSpec("tasks"))
    index = np.arange(num_tasks)
    blocks = sharding.addressable_devices_indices_map((num_tasks,)).values()
    return np.unique(np.concatenate([index[idx[0]] for idx in blocks]))


def shard_batch(batch: Any, mesh: Mesh, num_tasks: int | None = None) -> Any:
    """Place this process's tasks on the mesh as global arrays, tasks split over ``"tasks"``.

    ``batch`` is a pytree of host arrays whose leading axis holds the tasks
    :func:`process_tasks` names, in that order: with one process, the whole meta-batch (a
    :func:`~mgdd_jax.meta.tasks.sample_meta_batch` dict, or the ``(tasks, 2)`` task keys).
    ``num_tasks`` is the global meta-batch size (default: the leading axis, i.e. one process
    holds every task). Each process passes only its own tasks, and
    ``make_array_from_callback`` assembles the global arrays from them: no process samples,
    or holds, another process's tasks.
    """
    leaves = jax.tree.leaves(batch)
    local = leaves[0].shape[0]
    num_tasks = local if num_tasks is None else num_tasks
    mine = process_tasks(num_tasks, mesh)
    if any(np.shape(v)[0] != len(mine) for v in leaves):
        raise ValueError(f"this process holds tasks {mine.tolist()} of {num_tasks}; got "
                         f"leading axes {[np.shape(v)[0] for v in leaves]}")
    row = {int(t): r for r, t in enumerate(mine)}
    sharding = NamedSharding(mesh, PartitionSpec("tasks"))

    def place(v):
        def local_rows(idx):  # one of this process's devices: its block of global tasks
            return v[[row[int(t)] for t in np.arange(num_tasks)[idx[0]]]]
        return jax.make_array_from_callback((num_tasks, *np.shape(v)[1:]), sharding,
                                            local_rows)

    return jax.tree.map(lambda v: place(np.asarray(v)), batch)
