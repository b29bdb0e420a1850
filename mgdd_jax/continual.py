"""Class-incremental continual learning with a synthetic buffer (MGDD Sec. 4.4, Fig. 5).

The classes arrive in tasks (Fashion-MNIST: 5 tasks of 2 classes). At each task the learner
distils the new classes into ``ipc`` synthetic images per class and adds them to a buffer; a
network trained from scratch on the whole buffer is tested on every class seen so far. How
each task's set is made (:data:`MODES`):

* ``meta``: adapt from the meta generator at every task (Alg. 2, ``config.meta_checkpoint``);
* ``previous``: adapt from the previous task's adapted generator (the first task from the meta
  generator);
* ``first``: adapt only on the first task, then generate the later tasks' sets with that
  generator without adapting (their own Eq. 3 label models still solved);
* ``frepo``: FRePo on each task (the buffer baseline of Fig. 5).

Every task uses the same preprocessing (fitted once on the whole training set, as a stream of
one dataset would), and labels of a task live in its own ``k``-class space; in the buffer they
are mapped to the global classes (:func:`to_global_targets`): the centred one-hot part
``onehot_k − 1/k`` becomes ``onehot_C − 1/C`` and Eq. 3's soft deviation from it is kept on the
task's columns.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import chex
import jax
import numpy as np

from mgdd_jax import api, baselines, checkpoint, data, evaluation
from mgdd_jax import job as job_lib

MODES: tuple[str, ...] = ("meta", "previous", "first", "frepo")


def split_tasks(num_classes: int, num_tasks: int) -> tuple[tuple[int, ...], ...]:
    """Classes ``0..C-1`` in order, cut into ``num_tasks`` equal contiguous tasks."""
    if num_tasks < 1 or num_classes % num_tasks:
        raise ValueError(f"num_tasks={num_tasks} must be >= 1 and divide the {num_classes} "
                         "classes into equal tasks (Fashion-MNIST: 5 tasks of 2, 2 of 5)")
    k = num_classes // num_tasks
    return tuple(tuple(range(t * k, (t + 1) * k)) for t in range(num_tasks))


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in str(text).split(","))
    bad = [m for m in modes if m not in MODES]
    if not modes or bad or len(set(modes)) != len(modes):
        raise ValueError(f"--config.modes={text!r} must be a comma list of distinct modes from "
                         f"{MODES}")
    return modes


def task_dataset(ds: data.Dataset, classes: tuple[int, ...]) -> data.Dataset:
    """The rows of ``classes``, labels remapped to ``0..k-1`` in that order, same
    preprocessing (no refit: the stream shares one)."""
    remap = np.full(ds.num_classes, -1, np.int32)
    remap[list(classes)] = np.arange(len(classes), dtype=np.int32)
    tr, te = np.isin(ds.y_train, classes), np.isin(ds.y_test, classes)
    return data.Dataset(
        name=f"{ds.name}#classes={','.join(map(str, classes))}",
        x_train=ds.x_train[tr], y_train=remap[ds.y_train[tr]],
        x_test=ds.x_test[te], y_test=remap[ds.y_test[te]], num_classes=len(classes),
        class_names=tuple(ds.class_names[c] for c in classes), preprocessing=ds.preprocessing)


def to_global_targets(y_task: chex.Array, classes: tuple[int, ...],
                      num_classes: int) -> np.ndarray:
    """``(n, k)`` targets of a task (centred one-hot ``onehot_k − 1/k`` plus any soft part)
    -> ``(n, C)``: ``onehot_C − 1/C`` plus the same soft part on the task's columns."""
    y = np.asarray(y_task, np.float32)
    chex.assert_shape(y, (None, len(classes)))
    out = np.full((y.shape[0], num_classes), -1.0 / num_classes, np.float32)
    out[:, list(classes)] = y + 1.0 / len(classes) - 1.0 / num_classes
    return out


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """One mode's stream: per task, the accuracy on all classes seen so far."""

    mode: str
    tasks: list[dict[str, Any]]


def run_stream(key: chex.PRNGKey, ds: data.Dataset, tasks: tuple[tuple[int, ...], ...],
               ipc: int, mode: str, fit: job_lib.FitConfig, config: Any,
               protocol: evaluation.EvalProtocol, workdir: str,
               say: Callable[[str], None] = lambda m: None) -> StreamResult:
    """Fig. 5 for one mode: distil each task into ``ipc`` per class, grow the buffer, train a
    network on it from scratch and test on every seen class.

    Args:
      key: the stream's key (task t: ``fold_in(key, t)``; evaluation: ``fold_in(key, 1000+t)``).
      ds: the whole preprocessed dataset.
      tasks: class groups in arrival order (:func:`split_tasks`).
      ipc: buffer images per class.
      mode: one of :data:`MODES`.
      fit: the unbound :class:`job_lib.FitConfig` (its ``meta_checkpoint`` is the meta generator).
      config: the config (FRePo's settings for ``mode="frepo"``).
      protocol: the evaluation protocol.
      workdir: where each task's adapted generator is saved (``task{t}/generator``).
      say: progress messages.
    """
    c = ds.num_classes
    buffer_x: list[np.ndarray] = []
    buffer_y: list[np.ndarray] = []
    previous = first = fit.meta_checkpoint
    rows = []
    for t, classes in enumerate(tasks):
        tds = task_dataset(ds, classes)
        k_task = jax.random.fold_in(key, t)
        if mode == "frepo":
            snap = baselines.run_method("frepo", k_task, tds, ipc, (fit.adapt.steps,), config)[-1]
            x, y, seconds = snap.x, snap.y, snap.seconds
        else:
            start = {"meta": fit.meta_checkpoint, "previous": previous,
                     "first": fit.meta_checkpoint if t == 0 else first}[mode]
            steps = fit.adapt.steps if (mode != "first" or t == 0) else 0
            task_fit = dataclasses.replace(
                fit, meta_checkpoint=start,
                adapt=dataclasses.replace(fit.adapt, steps=steps)).bind(tds)
            distiller = api.fit_dataset(tds, task_fit, k_task, progress=False)
            x, y = distiller.generate(ipc)
            seconds = (distiller.info["timing"]["label_solve_s"]
                       + distiller.info["timing"]["adaptation_s"])
            path = os.path.join(workdir, f"task{t}", "generator")
            checkpoint.save_generator(path, steps, distiller.params, distiller.gen_config,
                                      {"kind": "adapted", "task": t, "classes": list(classes),
                                       "mode": mode}, max_to_keep=1)
            previous = path
            if t == 0:
                first = path
        buffer_x.append(np.asarray(x, np.float32))
        buffer_y.append(to_global_targets(y, classes, c))
        seen = [k for group in tasks[: t + 1] for k in group]
        te = np.isin(ds.y_test, seen)
        res = evaluation.evaluate_synthetic(
            jax.random.fold_in(key, 1000 + t), np.concatenate(buffer_x), np.concatenate(buffer_y),
            ds.x_test[te], ds.y_test[te], protocol, num_classes=c, progress=False)
        rows.append({"task": t, "classes": list(classes), "seen_classes": len(seen),
                     "buffer_size": int(sum(len(b) for b in buffer_x)),
                     "distill_seconds": float(seconds), "acc_mean": res["mean"],
                     "acc_std": res["std"], "per_seed": res["per_seed"]})
        say(f"{mode}: task {t} (classes {list(classes)}): {100 * res['mean']:.2f} ± "
            f"{100 * res['std']:.2f}% on {len(seen)} classes")
    return StreamResult(mode, rows)
