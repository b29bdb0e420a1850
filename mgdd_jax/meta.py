"""Meta-learning the generator: MGDD Alg. 1 (MAML), inner loop in ``jax.lax.scan``.

One meta step, for each task of the meta-batch:

* a class subset 𝒞 (``min_classes``..``max_classes`` classes) and a class-balanced real batch
  𝒯 of ``num_real`` images from the source (Alg. 1 lines 11-12);
* a fixed random network θ for the task; ``W_t`` of Eq. 3 solved once on 𝒯;
* ``inner_steps`` SGD steps on a copy ω' of the generator (lr α), each with its own initial
  set X_s drawn from 𝒯 at its own size, labels ``Y_s* = f_θ(X_s) W_t`` (Eq. 3), a fresh θ* and
  the Eq. 1 loss (lines 13-16);
* the meta-test loss at yet another size (line 17), differentiated through the whole inner
  loop (second order; ``first_order=True`` stops the gradient through the inner gradients);

then the meta-gradients of the tasks are averaged and ω takes an Adam step (lr β, cosine).

**Varying sizes without recompiling.** Every size is padded to ``max_synthetic`` rows with
a 0/1 mask, and the label dimension to ``max_classes`` columns (a padded class has all-zero
targets). :func:`mgdd_jax.krr.krr_loss` with ``support_mask`` then equals the unpadded loss
exactly, so one compiled step serves every (classes, size) draw: the step compiles once
(``tests/test_meta.py`` counts it). The price is computing the generator on ``max_synthetic``
images every inner step; size buckets would trade that for one compile per bucket and
per-bucket scan shapes, which the scan over inner steps (one shape for all T steps) excludes.

**Devices.** Tasks are stacked on a leading axis that is sharded over a ``Mesh`` axis
``"tasks"``; parameters and optimiser state are replicated. Inside ``jax.shard_map`` each
device vmaps over its own tasks and the meta-gradients are averaged with ``lax.pmean`` (an
explicit all-reduce; letting XLA partition the vmapped per-task conv gradients by itself
fails on grouped convolutions). D devices give the update of one device running the same D
tasks (``tests/test_meta.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mgdd_jax import krr, nets, objective, optim
from mgdd_jax.generator import GeneratorConfig
from mgdd_jax.rng import numpy_rng


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Hyper-parameters of Alg. 1 (the paper's Tab. 7, meta-learning stage).

    Every field is required: the values live in the config files only
    (``experiments/configs/meta_glyphs.py``; the paper's recipe in ``meta_imagenet.py``), and
    :func:`from_config` builds this from their ``meta`` and ``feature`` subtrees.

    Attributes:
      steps: meta-testing iterations T' (outer steps; also the cosine schedule's length).
      inner_steps: meta-training steps T per task.
      inner_lr: α, SGD learning rate of the inner loop.
      outer_lr: β, Adam learning rate of the meta update.
      final_lr_fraction: η, the cosine schedule's final fraction of β.
      b1, b2: Adam moments.
      min_classes, max_classes: the class subset's size range.
      num_real: n_t, real images per task.
      min_synthetic, max_synthetic: synthetic-set size range (all classes together).
      first_order: drop second-order terms (stop-gradient through the inner gradients).
      reg: relative ridge of Eq. 1 and Eq. 3.
      feature: architecture of θ and θ*.
      tasks_per_step: tasks in one meta-batch (sharded over devices; a multiple of them).
      scan_unroll: ``unroll`` of the inner ``lax.scan`` (speed/compile-time trade-off only).
    """

    steps: int
    inner_steps: int
    inner_lr: float
    outer_lr: float
    final_lr_fraction: float
    b1: float
    b2: float
    min_classes: int
    max_classes: int
    num_real: int
    min_synthetic: int
    max_synthetic: int
    first_order: bool
    reg: float
    feature: nets.ConvNetConfig
    tasks_per_step: int
    scan_unroll: int

    def __post_init__(self):
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if not 1 <= self.min_classes <= self.max_classes:
            raise ValueError(
                f"need 1 <= min_classes <= max_classes, got {self.min_classes}, "
                f"{self.max_classes}"
            )
        if not 1 <= self.min_synthetic <= self.max_synthetic:
            raise ValueError("need 1 <= min_synthetic <= max_synthetic")
        if self.num_real < self.max_classes:
            raise ValueError(
                f"num_real={self.num_real} cannot give every one of max_classes="
                f"{self.max_classes} classes an image"
            )
        if self.tasks_per_step < 1 or self.steps < 1:
            raise ValueError("tasks_per_step and steps must be >= 1")
        if not (self.inner_lr > 0 and self.outer_lr > 0 and self.reg > 0):
            raise ValueError("inner_lr, outer_lr and reg must be > 0")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"Adam's b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.scan_unroll < 1:
            raise ValueError(f"scan_unroll must be >= 1, got {self.scan_unroll}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetaConfig:
        d = dict(d)
        d["feature"] = nets.ConvNetConfig(**d["feature"])
        return cls(**d)

    @classmethod
    def from_config(cls, meta: Mapping[str, Any], feature: Mapping[str, Any]) -> MetaConfig:
        """From a config's ``meta`` and ``feature`` subtrees (``config.meta``, ``config.feature``
        of ``experiments/configs/meta_glyphs.py``); any mapping with those keys works.

        Raises:
          ValueError: a missing or unknown field (naming it), or an invalid value.
        """
        names = [f.name for f in dataclasses.fields(cls) if f.name != "feature"]
        missing = [k for k in names if k not in meta]
        unknown = sorted(set(meta.keys()) - set(names))
        if missing or unknown:
            raise ValueError(
                f"the meta config subtree must hold exactly the MetaConfig fields; missing "
                f"{missing}, unknown {unknown}")
        try:
            feat = nets.ConvNetConfig(**feature)
        except TypeError as e:
            raise ValueError(f"bad feature config: {e}") from e
        return cls(**{k: meta[k] for k in names}, feature=feat)


# ------------------------------------------------------------------------------- task sampling
def check_source(labels: np.ndarray, num_classes: int, config: MetaConfig) -> None:
    """Refuse a source that cannot supply the tasks, before any work."""
    counts = np.bincount(labels, minlength=num_classes)
    if num_classes < config.min_classes:
        raise ValueError(
            f"the meta-training source has {num_classes} classes but min_classes="
            f"{config.min_classes}; lower meta.min_classes or use a source with more classes"
        )
    need = -(-config.num_real // min(config.min_classes, num_classes))
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
      ``s_idx`` ``(T+1, max_synthetic)`` rows of the real batch initialising each X_s;
      ``s_mask`` ``(T+1, max_synthetic)`` 1 for real rows, 0 for padding;
      ``ipc`` ``(T+1,)`` images per class of each synthetic set (size-embedding input).
    """
    rng = numpy_rng(key)
    cfg = config
    c = int(rng.integers(cfg.min_classes, min(cfg.max_classes, num_classes) + 1))
    classes = np.sort(rng.choice(num_classes, size=c, replace=False))
    per_class = np.full(c, cfg.num_real // c)
    per_class[rng.choice(c, size=cfg.num_real % c, replace=False)] += 1
    t_idx, pos = [], []
    for j, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        t_idx.append(rng.choice(members, size=per_class[j], replace=False))
        pos.append(np.full(per_class[j], j))
    t_idx, pos = np.concatenate(t_idx), np.concatenate(pos)
    y_t = np.zeros((cfg.num_real, cfg.max_classes), np.float32)
    y_t[np.arange(cfg.num_real), pos] = 1.0
    y_t[:, :c] -= 1.0 / c

    rows_of = [np.flatnonzero(pos == j) for j in range(c)]
    lo = max(1, -(-cfg.min_synthetic // c))
    hi = max(lo, min(cfg.max_synthetic // c, int(per_class.min())))
    s_idx = np.zeros((cfg.inner_steps + 1, cfg.max_synthetic), np.int32)
    s_mask = np.zeros((cfg.inner_steps + 1, cfg.max_synthetic), np.float32)
    ipcs = np.zeros((cfg.inner_steps + 1,), np.float32)
    for i in range(cfg.inner_steps + 1):
        ipc = int(rng.integers(lo, hi + 1))
        chosen = np.concatenate([rng.choice(r, size=ipc, replace=False) for r in rows_of])
        chosen = chosen[: cfg.max_synthetic]
        s_idx[i, : len(chosen)] = chosen
        s_mask[i, : len(chosen)] = 1.0
        ipcs[i] = ipc
    return {"t_idx": t_idx.astype(np.int32), "y_t": y_t, "s_idx": s_idx, "s_mask": s_mask,
            "ipc": ipcs}


def sample_meta_batch(
    key: chex.PRNGKey, images: np.ndarray, labels: np.ndarray, num_classes: int,
    config: MetaConfig,
) -> dict[str, np.ndarray]:
    """``tasks_per_step`` tasks stacked on a leading axis, with their real images gathered."""
    tasks = [sample_task(jax.random.fold_in(key, i), labels, num_classes, config)
             for i in range(config.tasks_per_step)]
    batch = {k: np.stack([t[k] for t in tasks]) for k in tasks[0] if k != "t_idx"}
    batch["x_t"] = np.stack([images[t["t_idx"]] for t in tasks])
    return batch


# ------------------------------------------------------------------------------- the MAML loss
def task_meta_loss(
    params: Any,
    task: dict[str, jax.Array],
    key: chex.PRNGKey,
    *,
    gen_config: GeneratorConfig,
    config: MetaConfig,
) -> tuple[jax.Array, jax.Array]:
    """Alg. 1 lines 10-17 for one task: ``(meta-test loss, inner losses (T,))``.

    Each inner step and the meta-test use the one generator objective
    (:func:`mgdd_jax.objective.generator_krr_loss`, masked to the padded set's real rows) with
    Eq. 3 labels (:func:`mgdd_jax.objective.eq3_labels`). Differentiable in ``params`` through
    the whole inner loop (second order unless ``config.first_order``).
    """
    cfg = config
    feature = cfg.feature
    task = jax.tree.map(jnp.asarray, task)
    x_t, y_t = task["x_t"], task["y_t"]
    k_theta, k_steps = jax.random.split(key)
    theta = nets.init_feature_params(k_theta, x_t.shape[1:], feature)
    w_t = krr.target_weights(nets.conv_features(theta, x_t, feature), y_t, cfg.reg)  # Eq. 3

    def loss_at(p, i, k):  # GetTrainingLoss (Alg. 1 lines 1-7) for the i-th initial set
        x_s = x_t[task["s_idx"][i]]
        y_s = objective.eq3_labels(theta, w_t, x_s, feature)
        return objective.generator_krr_loss(
            p, x_s, y_s, x_t, y_t, task["ipc"][i], k, gen_config=gen_config, feature=feature,
            reg=cfg.reg, support_mask=task["s_mask"][i])

    keys = jax.random.split(k_steps, cfg.inner_steps + 1)

    def inner(p, inputs):
        i, k = inputs
        loss, g = jax.value_and_grad(loss_at)(p, i, k)
        if cfg.first_order:
            g = jax.lax.stop_gradient(g)
        return jax.tree.map(lambda a, b: a - cfg.inner_lr * b, p, g), loss

    adapted, inner_losses = jax.lax.scan(
        inner, params, (jnp.arange(cfg.inner_steps), keys[:-1]), unroll=cfg.scan_unroll)
    return loss_at(adapted, cfg.inner_steps, keys[-1]), inner_losses


def init_meta_state(params: Any, config: MetaConfig, mesh: Mesh) -> dict[str, Any]:
    """``{"params", "opt_state", "step"}``, replicated over ``mesh``.

    The parameters are copied (the step donates its state), and the state is placed with the
    step's output sharding from the start, so the second step does not recompile.
    """
    params = jax.tree.map(jnp.copy, params)
    opt_state = optim.adam_cosine(config.outer_lr, config.steps, config.final_lr_fraction,
                                  config.b1, config.b2).init(params)
    state = {"params": params, "opt_state": opt_state,
             "step": jnp.zeros((), jnp.int32)}
    return replicate(state, mesh)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place ``tree`` fully replicated on ``mesh`` (the meta state's sharding)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


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


def make_meta_step(gen_config: GeneratorConfig, config: MetaConfig, mesh: Mesh):
    """Build the jitted meta step ``step(state, batch, keys) -> (state, metrics)``.

    ``batch`` is :func:`sample_meta_batch`'s output placed with :func:`shard_batch`;
    ``keys`` are ``(tasks_per_step, 2)`` uint32 key data, one per task. The state is
    replicated and donated; tasks are split over the mesh's ``"tasks"`` axis. The meta update
    (Alg. 1 l. 19) is Adam, β with cosine decay to ``η·β`` over ``steps``
    (:func:`mgdd_jax.optim.adam_cosine`).
    """
    check_mesh(config, mesh)
    optimizer = optim.adam_cosine(config.outer_lr, config.steps, config.final_lr_fraction,
                                  config.b1, config.b2)
    loss_fn = functools.partial(task_meta_loss, gen_config=gen_config, config=config)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    replicated = NamedSharding(mesh, PartitionSpec())
    by_task = NamedSharding(mesh, PartitionSpec("tasks"))

    def local_grads(params, batch, keys):
        # Runs on each device with its own tasks; the mean over devices is an explicit pmean.
        # The replicated params are marked device-varying first: otherwise shard_map's
        # implicit cast to varying would be transposed into a psum inside the gradient, so each
        # device's "local" gradient would already be summed over devices.
        params = jax.tree.map(lambda a: jax.lax.pcast(a, "tasks", to="varying"), params)

        def per_task(task, key_data):
            (loss, inner), grads = grad_fn(params, task, jax.random.wrap_key_data(key_data))
            return loss, inner, grads

        losses, inner, grads = jax.vmap(per_task)(batch, keys)
        mean = lambda x: jax.lax.pmean(jnp.mean(x, axis=0), "tasks")  # noqa: E731
        metrics = {"meta_loss": mean(losses), "inner_loss_first": mean(inner[:, 0]),
                   "inner_loss_last": mean(inner[:, -1])}
        return jax.tree.map(mean, grads), metrics

    sharded_grads = jax.shard_map(
        local_grads, mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec("tasks"), PartitionSpec("tasks")),
        out_specs=(PartitionSpec(), PartitionSpec()))

    def step(state, batch, keys):
        grads, metrics = sharded_grads(state["params"], batch, keys)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {**metrics, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, in_shardings=(replicated, by_task, by_task),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a host meta-batch on the mesh, tasks split over ``"tasks"``.

    Uses ``make_array_from_callback``, so on several hosts each process materialises only its
    own devices' tasks (every process samples the same batch from the same key).
    """
    sharding = NamedSharding(mesh, PartitionSpec("tasks"))
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in batch.items()}


def task_keys(key: chex.PRNGKey, n: int) -> np.ndarray:
    """``(n, 2)`` uint32 key data for the tasks of one step."""
    return np.asarray(jax.random.key_data(jax.random.split(key, n)))
