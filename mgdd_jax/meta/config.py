"""Meta-learning the generator: MGDD Alg. 1 (MAML), inner loop in ``jax.lax.scan``.

One meta step, for each task of the meta-batch:

* a class subset 𝒞 (``min_classes``..``max_classes`` classes) and a class-balanced real batch
  𝒯 of ``num_real`` images from the source (Alg. 1 lines 11-12);
* a fixed random network θ for the task; ``W_t`` of Eq. 3 solved once on 𝒯;
* ``inner_steps`` SGD steps on a copy ω' of the generator (lr α), each with its own initial
  set X_s drawn from 𝒯 at its own size, labels ``Y_s* = f_θ(X_s) W_t`` (Eq. 3), a fresh θ* and
  the Eq. 1 loss (lines 13-16);
* the meta-test loss at yet another size (line 17), differentiated through the whole inner
  loop (second order; ``order="first"`` stops the gradient through the inner gradients,
  ``order="reptile"`` takes ``ω - ω'`` as the meta-gradient);

then the meta-gradients of the tasks are averaged and ω takes an Adam step (lr β, cosine).

**Making adaptation short** (the choices beyond Alg. 1 as written, each one config switch):
``inner_opt="adam"`` adapts inside the inner loop with the update adaptation uses (Adam at
adaptation's learning rate, differentiated through), so the inner loop moves ω' as far as T
adaptation steps do, and every layer at once (SGD at α = 1e-4 moves a generator whose last
conv starts at zero ~1e-4 in total, which makes the meta-gradient blind to adaptation);
``support="disjoint"`` draws the initial images from outside the real batch, so the task is
not rewarded for copying its supports; ``fixed_init`` keeps one initial set through the inner
loop and the meta-test, as single-initialisation adaptation does; ``tasks_per_step`` averages
many tasks (the step logs ``grad_agreement``, the mean pairwise cosine of their
meta-gradients, and ``inner_displacement``, ‖ω' - ω‖). ``inner_opt="meta_sgd"`` (Meta-SGD,
Li et al. 2017) learns the inner update instead: ω' ← ω' - α ⊙ g with a per-parameter
rate α, initialised to ``inner_lr`` and meta-learned with ω by the same outer Adam (α is
the meta-learner's, kept in the state's ``opt_state``; the generator is ω alone).
:mod:`mgdd_jax.meta_val` scores a run on a fixed validation bank.

**Varying sizes without recompiling.** Every size is padded to ``max_synthetic`` rows with
a 0/1 mask, and the label dimension to ``max_classes`` columns (a padded class has all-zero
targets). :func:`mgdd_jax.krr.krr_loss` with ``support_mask`` then equals the unpadded loss
exactly, so one compiled step serves every (classes, size) draw: the step compiles once
(``tests/test_meta.py`` counts it). The price is computing the generator on ``max_synthetic``
images every inner step; size buckets would trade that for one compile per bucket and
per-bucket scan shapes, which the scan over inner steps (one shape for all T steps) excludes.

**Devices.** Tasks are stacked on a leading axis that is sharded over a ``Mesh`` axis
``"tasks"``; parameters and optimiser state are replicated. Inside ``jax.shard_map`` each
device runs its own tasks and the meta-gradients are averaged with ``lax.pmean`` (an
explicit all-reduce; letting XLA partition the vmapped per-task conv gradients by itself
fails on grouped convolutions). D devices give the update of one device running the same D
tasks (``tests/test_meta.py``).

**Processes (multi-host).** The mesh may span several JAX processes (one per host). Task
``j`` of step ``i`` is a function of ``(key, i, j)`` only (:func:`step_inputs`), so each
process draws just the tasks of its own devices (:func:`process_tasks`) from the whole
source, which every process loads, and :func:`shard_batch` assembles the global batch from
the processes' parts: P processes of D devices give exactly the batch, and the update, of
one process with P·D devices (``tests/test_multihost.py``). The images are not split
between hosts, the tasks are: each host needs a copy of the source (a local disk or a
shared file system).

**Loops (``loop=`` of :func:`make_meta_step`).** ``"scan"``: the inner loop is a
``lax.scan`` (``unroll=config.scan_unroll``) and a device's tasks are ``vmap``-ped (one
graph whatever T and the task count; right for GPUs). ``"unrolled"``: the inner loop is
a Python loop (fully unrolled: no XLA while loop), and so are a device's tasks (each task's
convolutions keep their own, unbatched parameters: no vmap-batched kernels, which XLA turns
into grouped convolutions for several tasks per device). Same values (float round-off).
``"auto"`` (default) takes ``"unrolled"`` on CPU and ``"scan"`` elsewhere: XLA:CPU leaves
a convolution's kernel gradient inside a while-loop body in its raw, non-canonical form
(``dim_labels=f01b_i01o->01bf``) and runs it 25-50x slower than the same gradient outside a
loop (canonicalised to ``b01f_01io->b01f``), and every inner step's gradient is such a
kernel gradient. ``python -m experiments.benchmarks.meta_step`` measures both; the price of
unrolling is compile time growing faster than T times the tasks per device: on the 2-core
CPU, the ``meta_sources`` recipe (4 tasks, first order) compiles in under a minute with
T = 5 and in about 10 minutes with T = 20. First order and Reptile run the inner loop
outside any differentiation (:func:`task_meta_gradient`), so only T forward-and-gradient
steps are compiled, not their linearisation.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mgdd_jax import krr, nets, objective, optim
from mgdd_jax.generator import GeneratorConfig
from mgdd_jax.rng import numpy_rng

ORDERS: tuple[str, ...] = ("second", "first", "reptile")
INNER_OPTS: tuple[str, ...] = ("sgd", "adam", "meta_sgd")
SUPPORTS: tuple[str, ...] = ("in_batch", "disjoint")
INITS: tuple[str, ...] = ("identity", "random")
# Adam's eps inside the square root of the inner update: without it the derivative of
# sqrt(v) at v = 0 (a parameter whose gradient is exactly 0, e.g. a bias before a norm) is
# inf·0 = NaN in second-order MAML. optax's documented switch for differentiating through Adam.
INNER_ADAM_EPS_ROOT = 1e-16


# What runs made before those fields existed did (MetaConfig.from_dict).
LEGACY_FIELDS: dict[str, Any] = {"inner_opt": "sgd", "inner_b1": 0.9, "inner_b2": 0.999,
                                 "support": "in_batch", "fixed_init": False}
# Fields added later, with the value that reproduces what runs made before them did (every
# stored MetaConfig lacking them is read with these).
ADDED_FIELDS: dict[str, Any] = {"start_weight": 0.0, "init": "identity"}


def with_added_fields(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored :meth:`MetaConfig.to_dict` (or a part of it) with every :data:`ADDED_FIELDS`
    it lacks at its "as before" value: the one reading of runs made before a field existed."""
    return {**ADDED_FIELDS, **stored}


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
      order: how the meta-gradient is formed (:data:`ORDERS`): ``"second"`` differentiates
        the meta-test loss through the whole inner loop (MAML); ``"first"`` stops the
        gradient through the inner gradients (first-order MAML: the meta-test gradient at
        ω'); ``"reptile"`` uses ``ω - ω'`` (Reptile; the meta-test loss is only logged).
      inner_opt: the inner update (:data:`INNER_OPTS`): ``"sgd"`` (ω' ← ω' - α g, Alg. 1
        l. 16), ``"adam"`` (Adam at α from a fresh state, differentiated through: the
        update adaptation makes, Alg. 2 l. 12, so α = adaptation's learning rate moves ω' as
        far per step as adaptation does) or ``"meta_sgd"`` (Meta-SGD: ω' ← ω' - α ⊙ g with
        a learned per-parameter α, ``inner_lr`` everywhere at meta step 0; order first or
        second).
      inner_b1, inner_b2: the inner Adam's moments (``inner_opt="adam"``).
      start_weight: λ ≥ 0, the weight of the meta-test loss at ω itself (before any inner
        step, same initial set and θ*) added to the meta objective: ``L(ω') + λ L(ω)``, so
        the meta generator is also scored where adaptation starts. 0: Alg. 1 as written.
        With ``order="reptile"`` only 0 (``ω - ω'`` is not the gradient of a loss to add to).
      init: ω at meta step 0 (:data:`INITS`): ``"identity"``, the fresh generator
        (:func:`mgdd_jax.generator.init_generator`: zero-initialised output conv, so every
        other layer's gradient is small at the start), or ``"random"``, every conv kernel
        drawn (:func:`mgdd_jax.generator.random_generator`, the paper's "w/o Meta" start).
        The validation bank's reference stays the identity either way.
      support: where each initial set's images come from (:data:`SUPPORTS`):
        ``"in_batch"`` rows of the task's real batch 𝒯 (Alg. 1 as written: on average some
        targets are the supports themselves), ``"disjoint"`` images of the same classes
        outside 𝒯.
      fixed_init: one initial set (one size) for every inner step and the meta-test, as
        single-initialisation adaptation uses the generator; False: a new set and size per
        step (Alg. 1, multi-initialisation).
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
    order: str
    inner_opt: str
    inner_b1: float
    inner_b2: float
    start_weight: float
    init: str
    support: str
    fixed_init: bool
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
        for field, allowed in (("order", ORDERS), ("inner_opt", INNER_OPTS),
                               ("support", SUPPORTS), ("init", INITS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"meta.{field} must be one of {allowed}, got "
                                 f"{getattr(self, field)!r}")
        if not self.start_weight >= 0:
            raise ValueError(f"meta.start_weight must be >= 0, got {self.start_weight}")
        if self.inner_opt == "meta_sgd" and self.order == "reptile":
            raise ValueError("meta.inner_opt 'meta_sgd' needs order 'first' or 'second': "
                             "Reptile's ω - ω' gives its learned inner rates no gradient; set "
                             "--config.meta.order=first or another --config.meta.inner_opt")
        if self.start_weight and self.order == "reptile":
            raise ValueError("meta.start_weight needs order 'first' or 'second': Reptile's "
                             "ω - ω' is not a loss gradient to add λ ∇L(ω) to; set "
                             "--config.meta.start_weight=0 or another --config.meta.order")
        if not (0 <= self.inner_b1 < 1 and 0 <= self.inner_b2 < 1):
            raise ValueError(f"inner Adam's b1 and b2 must be in [0, 1), got {self.inner_b1}, "
                             f"{self.inner_b2}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetaConfig:
        """From :meth:`to_dict`'s output, also as stored by checkpoints that predate the
        ``order``/``inner_opt``/``support``/``fixed_init`` fields (their runs were Alg. 1 as
        written: SGD inner steps, supports from the real batch, a new set per step)."""
        d = dict(d)
        d["feature"] = nets.ConvNetConfig(**d["feature"])
        if "first_order" in d:
            d["order"] = "first" if d.pop("first_order") else "second"
            for k, v in LEGACY_FIELDS.items():
                d.setdefault(k, v)
        return cls(**with_added_fields(d))

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
    a multi-host run draws only its own devices' tasks (:func:`process_tasks`).
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


# ------------------------------------------------------------------------------- the MAML loss
class MetaSGDState(NamedTuple):
    """The Meta-SGD inner update's state: the learned rates α and Σ g of the steps so far
    (first-order MAML's gradient for α is -∇L(ω') ⊙ Σ g)."""

    lr: Any
    grad_sum: Any


def meta_sgd(inner_lr: Any) -> optax.GradientTransformation:
    """Meta-SGD's inner update (Li et al. 2017): ``-α ⊙ g`` with per-parameter rates
    ``inner_lr`` (a tree like the parameters). Differentiable in ``inner_lr``."""

    def init(params):
        return MetaSGDState(lr=inner_lr, grad_sum=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        updates = jax.tree.map(lambda a, g: -a * g, state.lr, grads)
        return updates, MetaSGDState(state.lr, jax.tree.map(jnp.add, state.grad_sum, grads))

    return optax.GradientTransformation(init, update)


def initial_inner_lr(params: Any, config: MetaConfig) -> Any:
    """Meta-SGD's α at meta step 0: ``config.inner_lr`` for every parameter."""
    return jax.tree.map(lambda a: jnp.full_like(a, config.inner_lr), params)


def inner_optimizer(config: MetaConfig, inner_lr: Any = None) -> optax.GradientTransformation:
    """The inner update of Alg. 1 l. 16: SGD at α, Adam at α, or Meta-SGD with the learned
    per-parameter rates ``inner_lr`` (``config.inner_opt``).

    All are optax transforms, differentiable in their inputs, so second-order MAML
    differentiates through Adam's normalisation too (with :data:`INNER_ADAM_EPS_ROOT`).
    """
    if (inner_lr is not None) != (config.inner_opt == "meta_sgd"):
        raise ValueError("inner_lr (the learned rates) is needed by inner_opt 'meta_sgd' "
                         f"and only by it; inner_opt is {config.inner_opt!r}")
    if config.inner_opt == "meta_sgd":
        return meta_sgd(inner_lr)
    if config.inner_opt == "adam":
        return optax.adam(config.inner_lr, b1=config.inner_b1, b2=config.inner_b2,
                          eps_root=INNER_ADAM_EPS_ROOT)
    return optax.sgd(config.inner_lr)


def task_meta_loss(
    params: Any,
    task: dict[str, jax.Array],
    key: chex.PRNGKey,
    *,
    gen_config: GeneratorConfig,
    config: MetaConfig,
    unroll: int | bool | None = None,
    inner_lr: Any = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Alg. 1 lines 10-17 for one task: ``(meta objective, aux)``.

    The meta objective is the meta-test loss L(ω') plus ``config.start_weight`` × the same
    loss at ω (the start of adaptation). ``aux`` holds ``"inner"`` (the T inner losses),
    ``"adapted"`` (ω' after the inner loop) and ``"meta_test"`` (L(ω')). ``unroll``: of the
    inner ``lax.scan`` (``None``: ``config.scan_unroll``); ``True``: a Python loop instead,
    so no XLA while loop (see the module docstring's *Loops*). It changes speed and compile
    time only.

    Each inner step and the meta-test use the one generator objective
    (:func:`mgdd_jax.objective.generator_krr_loss`, masked to the padded set's real rows) with
    Eq. 3 labels (:func:`mgdd_jax.objective.eq3_labels`); the initial sets come from the
    task's support pool (its real batch, or images outside it with ``support="disjoint"``).
    The inner update is :func:`inner_optimizer`'s from a fresh state (``inner_lr``: Meta-SGD's
    learned rates, with ``inner_opt="meta_sgd"`` only). Differentiable in ``params`` (and
    ``inner_lr``) through the whole inner loop; ``order="first"`` or ``"reptile"`` stop the
    gradient through the inner gradients.
    """
    loss_at, keys = _task_objective(task, key, gen_config=gen_config, config=config)
    adapted, inner_losses, _ = _inner_loop(params, loss_at, keys[:-1], config, unroll,
                                           inner_lr)
    meta_test = functools.partial(loss_at, i=config.inner_steps, k=keys[-1])
    test_loss = meta_test(adapted)
    objective_value = test_loss
    if config.start_weight:
        objective_value = objective_value + _start_term(params, meta_test, config)
    return objective_value, {"inner": inner_losses, "adapted": adapted, "meta_test": test_loss}


def _start_term(params: Any, meta_test: Callable[[Any], jax.Array],
                config: MetaConfig) -> jax.Array:
    """λ L(ω): ``config.start_weight`` × the meta-test loss at the start of adaptation. The
    one place the start is scored: in the meta objective (:func:`task_meta_loss`) and, as its
    gradient, by first-order MAML (:func:`task_meta_gradient`)."""
    return config.start_weight * meta_test(params)


def _task_objective(
    task: dict[str, jax.Array], key: chex.PRNGKey, *, gen_config: GeneratorConfig,
    config: MetaConfig,
) -> tuple[Callable[[Any, jax.Array, chex.PRNGKey], jax.Array], jax.Array]:
    """One task's ``loss_at(params, i, key)`` (GetTrainingLoss, Alg. 1 lines 1-7, on the
    i-th initial set) and the T + 1 step keys (T inner steps, then the meta-test)."""
    cfg = config
    feature = cfg.feature
    task = jax.tree.map(jnp.asarray, task)
    x_t, y_t = task["x_t"], task["y_t"]
    pool = task.get("x_u", x_t)
    k_theta, k_steps = jax.random.split(key)
    theta = nets.init_feature_params(k_theta, x_t.shape[1:], feature)
    w_t = krr.target_weights(nets.conv_features(theta, x_t, feature), y_t, cfg.reg)  # Eq. 3

    def loss_at(p, i, k):
        x_s = pool[task["s_idx"][i]]
        y_s = objective.eq3_labels(theta, w_t, x_s, feature)
        return objective.generator_krr_loss(
            p, x_s, y_s, x_t, y_t, task["ipc"][i], k, gen_config=gen_config, feature=feature,
            reg=cfg.reg, support_mask=task["s_mask"][i])

    return loss_at, jax.random.split(k_steps, cfg.inner_steps + 1)


def _inner_loop(
    params: Any, loss_at: Callable[[Any, jax.Array, chex.PRNGKey], jax.Array],
    keys: jax.Array, config: MetaConfig, unroll: int | bool | None, inner_lr: Any = None,
) -> tuple[Any, jax.Array, Any]:
    """Alg. 1 lines 11-17: ``(ω', the T inner losses, the inner optimiser's last state)`` from
    a fresh :func:`inner_optimizer` state; the inner gradients are stopped unless
    ``config.order == "second"``."""
    cfg = config
    opt = inner_optimizer(cfg, inner_lr)

    def inner(carry, inputs):
        p, opt_state = carry
        i, k = inputs
        loss, g = jax.value_and_grad(loss_at)(p, i, k)
        if cfg.order != "second":
            g = jax.lax.stop_gradient(g)
        updates, opt_state = opt.update(g, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    carry = (params, opt.init(params))
    if unroll is True:  # a Python loop: no XLA while loop for any T (scan's T=1 keeps one)
        losses = []
        for i in range(cfg.inner_steps):
            carry, loss = inner(carry, (i, keys[i]))
            losses.append(loss)
        return carry[0], jnp.stack(losses), carry[1]
    carry, inner_losses = jax.lax.scan(
        inner, carry, (jnp.arange(cfg.inner_steps), keys),
        unroll=cfg.scan_unroll if unroll is None else unroll)
    return carry[0], inner_losses, carry[1]


def task_meta_gradient(
    params: Any, task: dict[str, jax.Array], key: chex.PRNGKey, *,
    gen_config: GeneratorConfig, config: MetaConfig, unroll: int | bool | None = None,
    inner_lr: Any = None,
) -> tuple[jax.Array, jax.Array, Any, jax.Array]:
    """One task's ``(meta-test loss, inner losses, meta-gradient, ‖ω' - ω‖)`` (Alg. 1 l. 18).

    The meta-gradient is ∇_ω of the meta objective (``order="second"``: through the inner
    loop; ``"first"``: first-order MAML) or Reptile's ``ω - ω'`` (``"reptile"``; the outer
    Adam then moves ω towards ω'). With ``config.start_weight`` = λ > 0 it includes
    λ ∇_ω L(ω) (the meta-test loss at the start). The returned loss is L(ω') in every case.
    With ``inner_opt="meta_sgd"`` (``inner_lr`` = the learned rates α) the meta-gradient is
    the pair ``(∇_ω, ∇_α)``; first order takes ∇_α = -∇L(ω') ⊙ Σ_t g_t, the derivative of
    L(ω - α ⊙ Σ g_t) with the inner gradients held fixed. Arguments as :func:`task_meta_loss`.
    """
    learned_lr = config.inner_opt == "meta_sgd"
    if config.order == "second":
        def loss_fn(p, lr):
            return task_meta_loss(p, task, key, gen_config=gen_config, config=config,
                                  unroll=unroll, inner_lr=lr)

        (_, aux), grads = jax.value_and_grad(loss_fn, argnums=(0, 1) if learned_lr else 0,
                                             has_aux=True)(params, inner_lr)
        loss, adapted, inner_losses = aux["meta_test"], aux["adapted"], aux["inner"]
    else:
        # First order and Reptile need no derivative through the inner loop, so it runs
        # outside any differentiation: no linearisation of T inner steps to build, store or
        # compile (with T = 20 unrolled on the CPU, that graph took minutes to compile).
        loss_at, keys = _task_objective(task, key, gen_config=gen_config, config=config)
        adapted, inner_losses, inner_state = _inner_loop(params, loss_at, keys[:-1], config,
                                                         unroll, inner_lr)
        meta_test = functools.partial(loss_at, i=config.inner_steps, k=keys[-1])
        if config.order == "reptile":
            loss = meta_test(adapted)
            grads = jax.tree.map(jnp.subtract, params, adapted)
        else:  # FOMAML: ∇ at ω', applied to ω (dω'/dω taken as the identity)
            loss, grads = jax.value_and_grad(meta_test)(adapted)
            lr_grads = (jax.tree.map(lambda g, s: -g * s, grads, inner_state.grad_sum)
                        if learned_lr else None)
            if config.start_weight:  # + λ ∇L(ω): the start is scored too
                grads = jax.tree.map(jnp.add, grads, jax.grad(_start_term)(
                    params, meta_test, config))
            if learned_lr:
                grads = (grads, lr_grads)
    moved = optax.tree.norm(jax.tree.map(jnp.subtract, adapted, params))
    return loss, inner_losses, grads, moved


def outer_optimizer(config: MetaConfig) -> optax.GradientTransformation:
    """The meta update of Alg. 1 l. 19: Adam, β with cosine decay to ``η·β`` over ``steps``."""
    return optim.adam_cosine(config.outer_lr, config.steps, config.final_lr_fraction,
                             config.b1, config.b2)


def init_meta_state(params: Any, config: MetaConfig, mesh: Mesh) -> dict[str, Any]:
    """``{"params", "opt_state", "step"}``, replicated over ``mesh``.

    The parameters are copied (the step donates its state), and the state is placed with the
    step's output sharding from the start, so the second step does not recompile. With
    ``inner_opt="meta_sgd"`` the ``opt_state`` is ``{"outer", "inner_lr"}``: the outer Adam
    over (ω, α) and Meta-SGD's learned rates α (:func:`initial_inner_lr`), so a checkpoint
    holds them and the generator stays ω alone.
    """
    params = jax.tree.map(jnp.copy, params)
    outer = outer_optimizer(config)
    if config.inner_opt == "meta_sgd":
        inner_lr = initial_inner_lr(params, config)
        opt_state = {"outer": outer.init((params, inner_lr)), "inner_lr": inner_lr}
    else:
        opt_state = outer.init(params)
    state = {"params": params, "opt_state": opt_state,
             "step": jnp.zeros((), jnp.int32)}
    return replicate(state, mesh)


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


LOOPS: tuple[str, ...] = ("auto", "unrolled", "scan")


def resolve_loop(loop: str, mesh: Mesh) -> str:
    """``"auto"`` -> ``"unrolled"`` on a CPU mesh, ``"scan"`` otherwise (module docstring)."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop != "auto":
        return loop
    return "unrolled" if mesh.devices.flat[0].platform == "cpu" else "scan"


def make_meta_step(gen_config: GeneratorConfig, config: MetaConfig, mesh: Mesh, *,
                   loop: str = "auto"):
    """Build the jitted meta step ``step(state, batch, keys) -> (state, metrics)``.

    ``batch`` is :func:`sample_meta_batch`'s output placed with :func:`shard_batch`;
    ``keys`` are ``(tasks_per_step, 2)`` uint32 key data, one per task (host arrays with one
    process; placed with :func:`shard_batch` too when the mesh spans processes). The state is
    replicated and donated; tasks are split over the mesh's ``"tasks"`` axis. The meta update
    (Alg. 1 l. 19) is :func:`outer_optimizer`'s. ``loop``: how the inner steps and a device's
    tasks are looped (:data:`LOOPS`, see the module docstring); the same update either way.
    """
    check_mesh(config, mesh)
    loop = resolve_loop(loop, mesh)
    local_tasks = config.tasks_per_step // mesh.size
    optimizer = outer_optimizer(config)
    grad_fn = functools.partial(task_meta_gradient, gen_config=gen_config, config=config,
                                unroll=True if loop == "unrolled" else None)
    replicated = NamedSharding(mesh, PartitionSpec())
    by_task = NamedSharding(mesh, PartitionSpec("tasks"))

    learned_lr = config.inner_opt == "meta_sgd"

    def local_grads(learned, batch, keys):
        # Runs on each device with its own tasks; the mean over devices is an explicit pmean.
        # The replicated params are marked device-varying first: otherwise shard_map's
        # implicit cast to varying would be transposed into a psum inside the gradient, so each
        # device's "local" gradient would already be summed over devices.
        learned = jax.tree.map(lambda a: jax.lax.pcast(a, "tasks", to="varying"), learned)
        params, inner_lr = learned if learned_lr else (learned, None)

        def per_task(task, key_data):
            return grad_fn(params, task, jax.random.wrap_key_data(key_data),
                           inner_lr=inner_lr)

        if loop == "scan":
            losses, inner, grads, moved = jax.vmap(per_task)(batch, keys)
        else:  # one unbatched graph per task (no vmap-batched, i.e. grouped, convolutions)
            outs = [per_task({k: v[i] for k, v in batch.items()}, keys[i])
                    for i in range(local_tasks)]
            losses, inner, grads, moved = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        mean = lambda x: jax.lax.pmean(jnp.mean(x, axis=0), "tasks")  # noqa: E731
        metrics = {"meta_loss": mean(losses), "inner_loss_first": mean(inner[:, 0]),
                   "inner_loss_last": mean(inner[:, -1]), "inner_displacement": mean(moved)}
        if config.tasks_per_step > 1:  # of the generator's meta-gradients (ω, not α)
            metrics["grad_agreement"] = gradient_agreement(
                grads[0] if learned_lr else grads, config.tasks_per_step)
        return jax.tree.map(mean, grads), metrics

    sharded_grads = jax.shard_map(
        local_grads, mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec("tasks"), PartitionSpec("tasks")),
        out_specs=(PartitionSpec(), PartitionSpec()))

    def step(state, batch, keys):
        if learned_lr:  # Meta-SGD: ω and its inner rates α take one outer Adam step together
            learned = (state["params"], state["opt_state"]["inner_lr"])
            outer_state = state["opt_state"]["outer"]
        else:
            learned, outer_state = state["params"], state["opt_state"]
        grads, metrics = sharded_grads(learned, batch, keys)
        updates, outer_state = optimizer.update(grads, outer_state, learned)
        learned = optax.apply_updates(learned, updates)
        if learned_lr:
            params, opt_state = learned[0], {"outer": outer_state, "inner_lr": learned[1]}
            rates = jax.tree.leaves(learned[1])
            metrics["inner_lr_mean"] = (sum(jnp.sum(a) for a in rates)
                                        / sum(a.size for a in rates))
            metrics["grad_norm"] = optax.tree.norm(grads[0])
        else:
            params, opt_state = learned, outer_state
            metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    return jax.jit(step, in_shardings=(replicated, by_task, by_task),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def gradient_agreement(grads: Any, num_tasks: int, axis_name: str | None = "tasks"
                       ) -> jax.Array:
    """Mean pairwise cosine of the per-task meta-gradients of one step.

    ``grads``: this device's per-task gradients (leading axis = its tasks); the sum over
    devices is a ``psum`` over ``axis_name`` (None: all tasks are here). With unit vectors u_i,
    ``‖Σ u_i‖² = n + Σ_{i≠j} cos_ij``, so the mean over the n(n-1) ordered pairs needs only
    the sum. Near 0: the tasks pull in unrelated directions (a noisy meta-gradient).
    """
    leaves = jax.tree.leaves(grads)
    sq = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in leaves)
    inv = 1.0 / jnp.maximum(jnp.sqrt(sq), 1e-30)
    summed = [jnp.tensordot(inv, g, axes=1) for g in leaves]
    if axis_name is not None:
        summed = [jax.lax.psum(u, axis_name) for u in summed]
    total = sum(jnp.sum(u ** 2) for u in summed)
    return (total - num_tasks) / (num_tasks * (num_tasks - 1))


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
    :func:`sample_meta_batch` dict, or the ``(tasks, 2)`` task keys). ``num_tasks`` is the
    global meta-batch size (default: the leading axis, i.e. one process holds every task).
    Each process passes only its own tasks, and ``make_array_from_callback`` assembles the
    global arrays from them: no process samples, or holds, another process's tasks.
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


def task_keys(key: chex.PRNGKey, n: int) -> np.ndarray:
    """``(n, 2)`` uint32 key data for the tasks of one step."""
    return np.asarray(jax.random.key_data(jax.random.split(key, n)))


# ------------------------------------------------------------------------------- host sampling
def step_inputs(
    key: chex.PRNGKey, step: int, images: np.ndarray, labels: np.ndarray, num_classes: int,
    config: MetaConfig, tasks: Sequence[int] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Step ``step``'s ``(meta-batch, task keys)``, both drawn from ``fold_in(key, step)``.

    A function of ``(key, step)`` only, so a resumed run continues the same stream and a
    prefetched stream (:class:`Prefetcher`) is the direct one. ``tasks``: the global task
    indices to draw (default all; a multi-host process passes :func:`process_tasks`); task
    ``j``'s images and key are the same whichever subset it is drawn with, so P processes
    drawing their own tasks give exactly the batch of one process drawing all of them.
    """
    k_batch, k_tasks = jax.random.split(jax.random.fold_in(key, step))
    keys = task_keys(k_tasks, config.tasks_per_step)
    return (sample_meta_batch(k_batch, images, labels, num_classes, config, tasks),
            keys if tasks is None else keys[np.asarray(tasks, int)])


_DONE = object()


class Prefetcher:
    """Steps ``start..end-1``'s inputs, produced by a background thread ahead of their use.

    Iterating yields ``(step, produce(step))`` in order, the same values as calling
    ``produce`` directly (it must be a function of ``step``: :func:`step_inputs`, optionally
    followed by the device placement). The thread works at most ``depth`` steps ahead, so
    step i+1's tasks are sampled (and placed) while step i runs on the device. An exception
    in ``produce`` is raised by the iteration that would have received that step. Use as a
    context manager (or call :meth:`close`): leaving the block, normally or by an exception,
    stops and joins the thread.
    """

    def __init__(self, produce: Callable[[int], Any], start: int, end: int, *, depth: int = 1):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._produce, self._start, self._end = produce, start, end
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meta-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for step in range(self._start, self._end):
                if self._stop.is_set() or not self._put((step, self._produce(step), None)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            self._put((None, None, e))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            step, value, error = item
            if error is not None:
                raise error
            yield step, value

    @property
    def alive(self) -> bool:
        """Whether the producer thread is still running."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the producer and wait for it (it finishes the step it is producing)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetcher:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
