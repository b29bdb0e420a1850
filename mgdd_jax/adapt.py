"""Adapting a (meta) generator to a target dataset: Alg. 2 of MGDD (App. A, Tab. 7).

One jitted step (:func:`make_adapt_step`) does Alg. 2 lines 8-12 for a sampled batch:

    X_s* = g_ω'(X_s, size)                       line 9
    θ*   ~ init(key)                             line 10, a fresh network every step
    L    = Eq. 1 on (f_θ*(X_s*), Y_s*) vs (f_θ*(X_t), Y_t)      line 11
    ω'  ← Adam(∇_ω' L)  (lr 1e-4, cosine to 0.1×)               line 12

and :func:`adapt` runs the loop: class-balanced real batches (line 7), the initial set
(line 8) either fixed (single-initialisation) or redrawn every step with a size from
``config.sizes`` (multi-initialisation, Sec. 4.1 / Tab. 5, which is what makes unseen sizes
work afterwards, Fig. 3). Labels come from the fixed-θ label model (Eq. 3, lines 1-4) or are
centred one-hot (the paper's default at IPC 1).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgdd_jax import data as data_lib
from mgdd_jax import krr, labels, nets
from mgdd_jax.generator import GeneratorConfig, apply_generator
from mgdd_jax.progress import Progress

INIT_MODES: tuple[str, ...] = ("single", "multi")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Hyper-parameters of Alg. 2 (defaults: Tab. 7, adaptation stage).

    Attributes:
      steps: adaptation steps T.
      learning_rate: Adam learning rate α.
      final_lr_fraction: cosine decay to this fraction of α (η = 0.1).
      b1, b2: Adam moments (0.9, 0.999).
      batch_size: real images per step n_t (class-balanced).
      reg: relative ridge of Eq. 1.
      init_mode: "single" (one fixed initial set) or "multi" (a new one every step).
      sizes: images per class of the synthetic sets adapted on. "single" uses ``sizes[0]``;
        "multi" draws one of them uniformly per step.
      label_mode: "auto" (one-hot at IPC 1, Eq. 3 otherwise), "analytic" or "onehot".
      feature: architecture of the random networks θ and θ*.
    """

    steps: int = 1000
    learning_rate: float = 1e-4
    final_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    batch_size: int = 1024
    reg: float = krr.DEFAULT_REG
    init_mode: str = "single"
    sizes: tuple[int, ...] = (10,)
    label_mode: str = "auto"
    feature: nets.ConvNetConfig = nets.ConvNetConfig(width=128, norm="instance")

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"adapt steps must be >= 0, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError("final_lr_fraction must be in [0, 1]")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.init_mode not in INIT_MODES:
            raise ValueError(f"init_mode must be one of {INIT_MODES}, got {self.init_mode!r}")
        if not self.sizes or any(int(s) < 1 for s in self.sizes):
            raise ValueError(f"sizes must be a non-empty list of IPCs >= 1, got {self.sizes}")
        labels.resolve_label_mode(self.label_mode, 1)
        if not self.reg > 0:
            raise ValueError(f"reg must be > 0, got {self.reg}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sizes"] = list(self.sizes)
        return d


def make_optimizer(config: AdaptConfig) -> optax.GradientTransformation:
    """Adam with cosine decay from α to ``final_lr_fraction·α`` over ``steps`` (Tab. 7)."""
    schedule = optax.cosine_decay_schedule(
        config.learning_rate, max(config.steps, 1), alpha=config.final_lr_fraction
    )
    return optax.adam(schedule, b1=config.b1, b2=config.b2)


def generator_krr_loss(
    params: Any,
    x_s: jax.Array,
    y_s: jax.Array,
    x_t: jax.Array,
    y_t: jax.Array,
    size: jax.Array,
    theta_key: chex.PRNGKey,
    *,
    generator: GeneratorConfig,
    feature: nets.ConvNetConfig,
    reg: float,
) -> jax.Array:
    """Eq. 1 of the generated set under a fresh random network (Alg. 1 l. 4-5, Alg. 2 l. 9-11).

    Args:
      params: generator parameters ω'.
      x_s: initial synthetic images ``(n_s, H, W, C)``.
      y_s: their labels ``(n_s, K)`` (Eq. 3 or centred one-hot).
      x_t: real images ``(n_t, H, W, C)``.
      y_t: real labels ``(n_t, K)``, centred one-hot.
      size: images per class of the synthetic set (size-embedding input).
      theta_key: key of θ*.
      generator, feature, reg: architecture and ridge (static).

    Returns:
      Scalar loss.
    """
    x_gen = apply_generator(params, x_s, size, generator)
    theta = nets.init_feature_params(theta_key, x_s.shape[1:], feature)
    f_s = nets.conv_features(theta, x_gen, feature)
    f_t = nets.conv_features(theta, x_t, feature)
    return krr.krr_loss(f_s, y_s, f_t, y_t, reg)


def init_adapt_state(params: Any, config: AdaptConfig) -> dict[str, Any]:
    """The loop state, a plain pytree: ``{"params", "opt_state", "step"}``.

    The parameters are copied: the step donates its state, and the caller's arrays (a meta
    generator reused for several runs, say) must survive it.
    """
    params = jax.tree.map(jnp.copy, params)
    return {
        "params": params,
        "opt_state": make_optimizer(config).init(params),
        "step": jnp.zeros((), jnp.int32),
    }


def make_adapt_step(
    generator: GeneratorConfig, config: AdaptConfig, num_classes: int
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """Build the jitted Alg. 2 step ``step(state, key, label_model, batch) -> (state, metrics)``.

    ``batch`` holds ``x_t`` (n_t images), ``l_t`` (their int labels), ``x_s`` (initial
    synthetic images), ``l_s`` (their int labels) and ``size`` (IPC, float scalar);
    ``onehot`` (static) picks centred one-hot synthetic labels instead of Eq. 3. The step
    compiles once per (n_s, onehot) pair; the state is donated.
    """
    optimizer = make_optimizer(config)
    feature = config.feature

    @functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("onehot",))
    def step(state, key, label_model, batch, *, onehot: bool):
        y_t = krr.centred_onehot(batch["l_t"], num_classes)
        if onehot:
            y_s = krr.centred_onehot(batch["l_s"], num_classes)
        else:
            y_s = labels.synthetic_labels(label_model, batch["x_s"], feature)
        loss_fn = functools.partial(
            generator_krr_loss, generator=generator, feature=feature, reg=config.reg
        )
        loss, grads = jax.value_and_grad(loss_fn)(
            state["params"], batch["x_s"], y_s, batch["x_t"], y_t, batch["size"], key
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step


@dataclasses.dataclass
class AdaptResult:
    """What :func:`adapt` returns.

    Attributes:
      params: adapted generator parameters ω'.
      history: ``[{"step", "loss", "grad_norm"}]`` at logging steps.
      seconds: wall time of the loop (compile included).
      seconds_per_step: mean wall time of a step after the first (compile excluded).
      single_init: ``(x, labels)`` of the fixed initial set in single mode, else None.
    """

    params: Any
    history: list[dict[str, float]]
    seconds: float
    seconds_per_step: float
    single_init: tuple[np.ndarray, np.ndarray] | None


def adapt(
    key: chex.PRNGKey,
    params: Any,
    dataset: data_lib.Dataset,
    label_model: labels.LabelModel,
    generator: GeneratorConfig,
    config: AdaptConfig,
    *,
    progress: bool = True,
    log_every: int = 10,
    callback: Callable[[int, Any], None] | None = None,
    callback_steps: Sequence[int] = (),
) -> AdaptResult:
    """Alg. 2: adapt ``params`` (a meta or fresh generator) to ``dataset`` for ``config.steps``.

    Args:
      key: PRNG key; step ``i`` uses ``fold_in(key, i)``, so a run is reproducible.
      params: initial generator parameters ω.
      dataset: the preprocessed target dataset.
      label_model: fixed θ and ``W_t`` (:func:`labels.fit_label_model`).
      generator: generator architecture.
      config: hyper-parameters.
      progress: print a progress line with loss and ETA.
      log_every: record loss and grad norm into the history every this many steps.
      callback: called as ``callback(step, params)`` after the steps in ``callback_steps``
        (e.g. to evaluate snapshots, Fig. 4).
      callback_steps: see ``callback``; 0 means before the first step.

    Returns:
      An :class:`AdaptResult`.
    """
    c = dataset.num_classes
    for s in config.sizes:
        data_lib.check_per_class(dataset, int(s), what="IPC")
    data_lib.check_per_class(
        dataset, -(-config.batch_size // c), what="real batch per class (batch_size / classes)"
    )
    index = data_lib.ClassIndex.from_labels(dataset.y_train, c)
    init_key, loop_key = jax.random.split(key)

    single_init = None
    if config.init_mode == "single":
        ipc = int(config.sizes[0])
        idx = np.asarray(data_lib.class_balanced_indices(init_key, index, ipc))
        single_init = (dataset.x_train[idx], dataset.y_train[idx])

    step_fn = make_adapt_step(generator, config, c)
    state = init_adapt_state(params, config)
    bar = Progress("adapt", config.steps, enabled=progress)
    history: list[dict[str, float]] = []
    # Multi-init: the size of every step, drawn up front (one host transfer, not one per step).
    size_ids = np.asarray(
        jax.random.randint(jax.random.fold_in(init_key, 1), (config.steps,), 0, len(config.sizes))
    )
    t_first = 0.0
    callback_steps = set(int(s) for s in callback_steps)
    if callback is not None and 0 in callback_steps:
        callback(0, params)
    t_start = time.perf_counter()
    for i in range(config.steps):
        t0 = time.perf_counter()
        k_batch, k_init, k_theta = jax.random.split(jax.random.fold_in(loop_key, i), 3)
        t_idx = np.asarray(data_lib.balanced_batch_indices(k_batch, index, config.batch_size))
        if single_init is not None:
            ipc = int(config.sizes[0])
            x_s, l_s = single_init
        else:
            ipc = int(config.sizes[size_ids[i]])
            s_idx = np.asarray(data_lib.class_balanced_indices(k_init, index, ipc))
            x_s, l_s = dataset.x_train[s_idx], dataset.y_train[s_idx]
        batch = {
            "x_t": dataset.x_train[t_idx],
            "l_t": dataset.y_train[t_idx],
            "x_s": x_s,
            "l_s": l_s,
            "size": np.float32(ipc),
        }
        onehot = labels.resolve_label_mode(config.label_mode, ipc) == "onehot"
        state, metrics = step_fn(state, k_theta, label_model, batch, onehot=onehot)
        done = i + 1
        if done % log_every == 0 or done == config.steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(
                    f"adaptation loss is {m['loss']} at step {done}; lower the learning rate "
                    f"(now {config.learning_rate}) or raise reg (now {config.reg})."
                )
            history.append({"step": done, **m})
        bar.update(done, metrics)
        if callback is not None and done in callback_steps:
            callback(done, state["params"])
        if i == 0:
            jax.block_until_ready(state["params"])
            t_first = time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    bar.close()
    if config.steps > 1:
        per_step = (seconds - t_first) / (config.steps - 1)
    else:
        per_step = seconds
    return AdaptResult(
        params=state["params"],
        history=history,
        seconds=seconds,
        seconds_per_step=per_step,
        single_init=single_init,
    )
