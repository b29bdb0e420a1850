"""Host-side task sampling of Alg. 1 (lines 11-12): class subsets, real batches, initial sets.

One task is a class subset 𝒞 (``min_classes``..``max_classes`` classes), a class-balanced
real batch 𝒯 of ``num_real`` images, and T + 1 initial sets X_s (T inner steps and the
meta-test), each of its own size, drawn from 𝒯 or, with ``support="disjoint"``, from images
of the same classes outside 𝒯 (:func:`sample_task`).

**Varying sizes without recompiling.** Every size is padded to ``max_synthetic`` rows with
a 0/1 mask, and the label dimension to ``max_classes`` columns (a padded class has all-zero
targets). :func:`mgdd_jax.krr.krr_loss` with ``support_mask`` then equals the unpadded loss
exactly, so one compiled step serves every (classes, size) draw: the step compiles once.
The price is computing the generator on ``max_synthetic`` images every inner step; size
buckets would trade that for one compile per bucket and per-bucket scan shapes, which the
scan over inner steps (one shape for all T steps) excludes.

Task ``j`` of step ``i`` is a function of ``(key, i, j)`` only (:func:`step_inputs`), so a
resumed run continues the same stream and a process of a multi-host run can draw just its
own tasks (:func:`mgdd_jax.meta.sharding.process_tasks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import numpy as np

from mgdd_jax.meta.config import MetaConfig
from mgdd_jax.rng import numpy_rng


def check_source(labels: np.ndarray, num_classes: int, config: MetaConfig) -> None:
    """Refuse a source that cannot supply the tasks, before any work."""
    counts = np.bincount(labels, minlength=num_classes)
    if num_classes < config.min_classes:
        raise ValueError(
            f"the meta-training source has {num_classes} classes but min_classes="
            f"{config.min_classes}; lower meta.min_classes or use a source with more classes"
        )
    need = -(-config.num_real // min(config.min_classes, num_classes))
    if config.support == "disjoint":  # and at least one support per class outside 𝒯
        need += 1
    if counts.min() < need:
        raise ValueError(
            f"a task of {config.min_classes} classes and num_real={config.num_real} needs "
            f"{need} images per class, but the smallest class has {counts.min()}; lower "
            "meta.num_real or raise meta.min_classes"
        )


def sample_task(
    key: chex.PRNGKey, labels: np.ndarray, num_classes: int, config: MetaConfig
) -> dict[str, np.ndarray]:
    """One task: a class subset, a balanced real batch, and T+1 padded initial sets.

    Returns a dict of fixed-shape arrays (host side):
      ``t_idx`` ``(n_t,)`` indices of the real batch into the source;
      ``y_t`` ``(n_t, max_classes)`` centred one-hot over the task's classes (padded columns 0);
      ``s_idx`` ``(T+1, max_synthetic)`` rows of the support pool initialising each X_s: the
        real batch (``support="in_batch"``) or ``u_idx``'s images (``"disjoint"``);
      ``s_mask`` ``(T+1, max_synthetic)`` 1 for real rows, 0 for padding;
      ``ipc`` ``(T+1,)`` images per class of each synthetic set (size-embedding input);
      ``u_idx`` ``(max_synthetic,)`` (``"disjoint"`` only) indices into the source of the
        support pool: images of the task's classes that are not in the real batch.
    With ``fixed_init`` the T+1 rows of ``s_idx``, ``s_mask`` and ``ipc`` are one set.
    """
    rng = numpy_rng(key)
    cfg = config
    c = int(rng.integers(cfg.min_classes, min(cfg.max_classes, num_classes) + 1))
    classes = np.sort(rng.choice(num_classes, size=c, replace=False))
    per_class = np.full(c, cfg.num_real // c)
    per_class[rng.choice(c, size=cfg.num_real % c, replace=False)] += 1
    disjoint = cfg.support == "disjoint"
    cap = max(1, cfg.max_synthetic // c)  # supports per class the padded set can hold
    t_idx, pos, extra = [], [], []
    for j, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        if disjoint:  # the real batch and the support pool from one draw: never overlapping
            picked = rng.choice(members, size=min(len(members), per_class[j] + cap),
                                replace=False)
            t_idx.append(picked[: per_class[j]])
            extra.append(picked[per_class[j]:])
        else:
            t_idx.append(rng.choice(members, size=per_class[j], replace=False))
        pos.append(np.full(per_class[j], j))
    t_idx, pos = np.concatenate(t_idx), np.concatenate(pos)
    y_t = np.zeros((cfg.num_real, cfg.max_classes), np.float32)
    y_t[np.arange(cfg.num_real), pos] = 1.0
    y_t[:, :c] -= 1.0 / c

    lo = max(1, -(-cfg.min_synthetic // c))
    out: dict[str, np.ndarray] = {}
    if disjoint:
        avail = min(len(e) for e in extra)
        hi = max(lo, min(cap, avail))
        u_idx = np.zeros((cfg.max_synthetic,), np.int32)
        pool = np.concatenate([e[:avail] for e in extra])[: cfg.max_synthetic]
        u_idx[: len(pool)] = pool
        rows_of = [np.arange(j * avail, (j + 1) * avail) for j in range(c)]
        out["u_idx"] = u_idx
    else:
        rows_of = [np.flatnonzero(pos == j) for j in range(c)]
        hi = max(lo, min(cfg.max_synthetic // c, int(per_class.min())))
    s_idx = np.zeros((cfg.inner_steps + 1, cfg.max_synthetic), np.int32)
    s_mask = np.zeros((cfg.inner_steps + 1, cfg.max_synthetic), np.float32)
    ipcs = np.zeros((cfg.inner_steps + 1,), np.float32)
    for i in range(1 if cfg.fixed_init else cfg.inner_steps + 1):
        ipc = int(rng.integers(lo, hi + 1))
        chosen = np.concatenate([rng.choice(r, size=ipc, replace=False) for r in rows_of])
        chosen = chosen[: cfg.max_synthetic]
        s_idx[i, : len(chosen)] = chosen
        s_mask[i, : len(chosen)] = 1.0
        ipcs[i] = ipc
    if cfg.fixed_init:
        s_idx[1:], s_mask[1:], ipcs[1:] = s_idx[0], s_mask[0], ipcs[0]
    return {"t_idx": t_idx.astype(np.int32), "y_t": y_t, "s_idx": s_idx, "s_mask": s_mask,
            "ipc": ipcs, **out}


def sample_meta_batch(
    key: chex.PRNGKey, images: np.ndarray, labels: np.ndarray, num_classes: int,
    config: MetaConfig, tasks: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Tasks stacked on a leading axis, with their real images gathered (Alg. 1 l. 11-12).

    Task ``j`` of the meta-batch is drawn from ``fold_in(key, j)`` alone, so any subset of the
    ``tasks_per_step`` tasks can be drawn by itself: ``tasks`` lists the (global) indices to
    draw, in the order they are stacked (default: all, ``0..tasks_per_step-1``). A process of
    a multi-host run draws only its own devices' tasks
    (:func:`~mgdd_jax.meta.sharding.process_tasks`).
    """
    ids = range(config.tasks_per_step) if tasks is None else tasks
    if not len(ids) or not all(0 <= int(j) < config.tasks_per_step for j in ids):
        raise ValueError(f"tasks must be a non-empty subset of 0..{config.tasks_per_step - 1}, "
                         f"got {list(ids)}")
    tasks = [sample_task(jax.random.fold_in(key, int(j)), labels, num_classes, config)
             for j in ids]
    batch = {k: np.stack([t[k] for t in tasks]) for k in tasks[0]
             if k not in ("t_idx", "u_idx")}
    batch["x_t"] = np.stack([images[t["t_idx"]] for t in tasks])
    if "u_idx" in tasks[0]:  # support="disjoint": the support pool's images
        batch["x_u"] = np.stack([images[t["u_idx"]] for t in tasks])
    return batch


def task_keys(key: chex.PRNGKey, n: int) -> np.ndarray:
    """``(n, 2)`` uint32 key data for the tasks of one step."""
    return np.asarray(jax.random.key_data(jax.random.split(key, n)))


def step_inputs(
    key: chex.PRNGKey, step: int, images: np.ndarray, labels: np.ndarray, num_classes: int,
    config: MetaConfig, tasks: Sequence[int] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Step ``step``'s ``(meta-batch, task keys)``, both drawn from ``fold_in(key, step)``.

    A function of ``(key, step)`` only, so a resumed run continues the same stream and a
    prefetched stream (:class:`~mgdd_jax.meta.prefetch.Prefetcher`) is the direct one.
    ``tasks``: the global task indices to draw (default all; a multi-host process passes
    :func:`~mgdd_jax.meta.sharding.process_tasks`); task ``j``'s images and key are the same
    whichever subset it is drawn with, so P processes drawing their own tasks give exactly
    the batch of one process drawing all of them.
    """
    k_batch, k_tasks = jax.random.split(jax.random.fold_in(key, step))
    keys = task_keys(k_tasks, config.tasks_per_step)
    return (sample_meta_batch(k_batch, images, labels, num_classes, config, tasks),
            keys if tasks is None else keys[np.asarray(tasks, int)])
