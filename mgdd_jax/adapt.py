"""Adapting a (meta) generator to a target dataset: Alg. 2 of MGDD (App. A, Tab. 7).

One jitted step (:func:`make_adapt_step`) does Alg. 2 lines 8-12 for a sampled batch:

    X_s* = g_ω'(X_s, ipc)                        line 9
    θ*   ~ init(key)                             line 10, a fresh network every step
    L    = Eq. 1 on (f_θ*(X_s*), Y_s*) vs (f_θ*(X_t), Y_t)      line 11
    ω'  ← Adam(∇_ω' L)  (lr 1e-4, cosine to 0.1×)               line 12

and :func:`adapt` runs the loop: class-balanced real batches (line 7), the initial set
(line 8) either fixed (single-initialisation) or redrawn every step with an IPC from
``config.ipcs`` (multi-initialisation, Sec. 4.1 / Tab. 5, which is what makes unseen sizes
work afterwards, Fig. 3). Labels come from the fixed-θ label model (Eq. 3, lines 1-4) or are
centred one-hot (the paper's default at IPC 1).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgdd_jax import data as data_lib
from mgdd_jax import krr, labels, nets, objective, optim, parameterisation
from mgdd_jax.generator import GeneratorConfig
from mgdd_jax.progress import Progress

INIT_MODES: tuple[str, ...] = ("single", "multi")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Hyper-parameters of Alg. 2 (Tab. 7, adaptation stage).

    No defaults here: the config files (``mgdd_jax/configs/distill.py``, ``adapt``
    subtree) are the single source, ``AdaptConfig(**config.adapt, feature=...)`` after
    :func:`resolve_ipcs` (see :func:`from_config`).

    Attributes:
      steps: adaptation steps T.
      learning_rate: Adam learning rate α.
      final_lr_fraction: cosine decay to this fraction of α (η = 0.1).
      b1, b2: Adam moments (0.9, 0.999).
      batch_size: real images per step n_t (class-balanced).
      reg: relative ridge of Eq. 1.
      init_mode: "single" (one fixed initial set) or "multi" (a new one every step).
      ipcs: images per class of the synthetic sets adapted on. "single" uses ``ipcs[0]``;
        "multi" draws one of them uniformly per step.
      label_mode: "auto" (one-hot at IPC 1, Eq. 3 otherwise), "analytic" or "onehot".
      ds_factor: down-sampled parameterisation (Tab. 6): the loss sees the generated set after
        storage at 1/ds_factor resolution and bilinear up-sampling; 1 = full resolution. The
        IPCs are images per class (a budget of k full images holds k·ds_factor² of them).
      objective: line 11's loss, a name in :data:`mgdd_jax.objective.OBJECTIVES` ("krr": Eq. 1;
        "dc", "dm": gradient / distribution matching, Tab. 3).
      log_every: record loss and gradient norm every this many steps.
      feature: architecture of the random networks θ and θ*.
    """

    steps: int
    learning_rate: float
    final_lr_fraction: float
    b1: float
    b2: float
    batch_size: int
    reg: float
    init_mode: str
    ipcs: tuple[int, ...]
    label_mode: str
    objective: str
    ds_factor: int
    log_every: int
    feature: nets.ConvNetConfig

    def __post_init__(self):
        object.__setattr__(self, "ipcs", tuple(int(k) for k in self.ipcs))
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
        if not self.ipcs or any(k < 1 for k in self.ipcs):
            raise ValueError(f"ipcs must be a non-empty list of IPCs >= 1, got {self.ipcs}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        labels.resolve_label_mode(self.label_mode, 1)
        objective.get_objective(self.objective)
        parameterisation.check_factor(self.ds_factor)
        if not self.reg > 0:
            raise ValueError(f"reg must be > 0, got {self.reg}")

    @classmethod
    def from_config(cls, adapt: Mapping[str, Any], feature: nets.ConvNetConfig,
                    requested_ipcs: Sequence[int]) -> AdaptConfig:
        """From the config's ``adapt`` subtree: ``ipcs=""`` means the requested IPCs, and
        ``init_mode="auto"`` single for one IPC, multi for several."""
        d = dict(adapt)
        text = d.pop("ipcs")
        ipcs = parse_ipcs(text, "config.adapt.ipcs") if text else tuple(requested_ipcs)
        if d["init_mode"] == "auto":
            d["init_mode"] = "single" if len(ipcs) == 1 else "multi"
        return cls(**d, ipcs=ipcs, feature=feature)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ipcs"] = list(self.ipcs)
        return d


def parse_ipcs(text: str | int | Sequence[int], flag: str = "ipc") -> tuple[int, ...]:
    """``"1,10,50"`` (or an int, or a sequence) -> sorted unique IPCs; refuses empty items."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        parts = [str(int(text))]
    elif isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = [str(p).strip() for p in text]
    if not parts or parts == [""]:
        raise ValueError(f"--{flag} is empty; give images per class, e.g. --{flag}=10 or "
                         f"--{flag}=1,10,50")
    if any(p == "" for p in parts):
        raise ValueError(f"--{flag}={text!r} has an empty item; give a comma list of integers "
                         "without empty entries, e.g. 1,10,50")
    try:
        ipcs = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--{flag}={text!r} must be a comma list of integers, e.g. 1,10,50"
                         ) from None
    if any(k < 1 for k in ipcs):
        raise ValueError(f"--{flag}={text!r}: every IPC must be >= 1")
    return tuple(sorted(set(ipcs)))


def make_optimizer(config: AdaptConfig) -> optax.GradientTransformation:
    """Alg. 2 line 12's optimiser: Adam, α cosine-decayed to ``final_lr_fraction·α`` (Tab. 7)."""
    return optim.adam_cosine(config.learning_rate, config.steps, config.final_lr_fraction,
                             config.b1, config.b2)


def init_adapt_state(params: Any, config: AdaptConfig) -> dict[str, Any]:
    """The loop state, a plain pytree: ``{"params", "opt_state", "step"}``.

    The parameters are copied: the step donates its state, and the caller's arrays (a meta
    generator reused for several runs, say) must survive it.
    """
    optimizer = make_optimizer(config)

    @jax.jit
    def init(params):
        params = jax.tree.map(jnp.copy, params)
        return {"params": params, "opt_state": optimizer.init(params),
                "step": jnp.zeros((), jnp.int32)}

    return init(params)


def _make_update(gen_config: GeneratorConfig, config: AdaptConfig, num_classes: int,
                 balanced: bool = False):
    """Alg. 2 lines 9-12 on given images:
    ``update(state, θ*-key, x_s, y_s, l_s, x_t, l_t, ipc)``. ``balanced``: the callers' sets
    are class-balanced, so the objective may take them in its fastest layout
    (:func:`mgdd_jax.objective.arrange_for`)."""
    optimizer = make_optimizer(config)
    loss_fn = functools.partial(objective.generator_loss, gen_config=gen_config,
                                feature=config.feature, reg=config.reg,
                                objective=config.objective, ds_factor=config.ds_factor)

    def update(state, theta_key, x_s, y_s, l_s, x_t, l_t, ipc):
        syn = objective.LabelledBatch(x_s, y_s, l_s)
        real = objective.LabelledBatch(x_t, krr.centred_onehot(l_t, num_classes), l_t)
        if balanced:
            syn, real = objective.arrange_for(config.objective, syn, real, num_classes)
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], syn, real, ipc, theta_key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return update


def _synthetic_labels(label_model, x_s, l_s, num_classes, feature, onehot: bool):
    if onehot:
        return krr.centred_onehot(l_s, num_classes)
    return labels.synthetic_labels(label_model, x_s, feature)


def make_adapt_step(
    gen_config: GeneratorConfig, config: AdaptConfig, num_classes: int
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """Build the jitted Alg. 2 step ``step(state, key, label_model, batch) -> (state, metrics)``
    on a given batch (for tests and benchmarks; :func:`adapt` samples on the device instead).

    ``batch`` holds ``x_t`` (n_t images), ``l_t`` (their int labels), ``x_s`` (initial
    synthetic images), ``l_s`` (their int labels) and ``ipc`` (float scalar);
    ``onehot`` (static) picks centred one-hot synthetic labels instead of Eq. 3. The step
    compiles once per (n_s, onehot) pair; the state is donated. The batch may be of any class
    make-up: it reaches the objective flat (the device loop, whose batches are class-balanced,
    may group it for the objective, :func:`mgdd_jax.objective.arrange_for`).
    """
    update = _make_update(gen_config, config, num_classes)

    @functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("onehot",))
    def step(state, key, label_model, batch, *, onehot: bool):
        y_s = _synthetic_labels(label_model, batch["x_s"], batch["l_s"], num_classes,
                                config.feature, onehot)
        return update(state, key, batch["x_s"], y_s, batch["l_s"], batch["x_t"], batch["l_t"],
                      batch["ipc"])

    return step


def make_adapt_chunk(
    gen_config: GeneratorConfig, config: AdaptConfig, num_classes: int
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """Build the device-resident loop: ``chunk(state, loop_key, label_model, train, init, *,
    length, ipc, onehot) -> (state, last metrics)`` runs ``length`` Alg. 2 steps in one
    ``lax.scan``, with no host work in between.

    Step ``t = state["step"]`` uses ``fold_in(loop_key, t)`` split into (real batch, initial
    set, θ*) keys. ``train`` is ``{"x", "y", "index"}`` on the device (all training images,
    labels and their :class:`~mgdd_jax.data.ClassIndex`); the class-balanced real batch
    (line 7) is sampled and gathered inside. ``init`` is the fixed ``(x_s, l_s)`` of
    single initialisation, or None to draw a new initial set of ``ipc`` per class every
    step (multi-initialisation). The state is donated; the metrics of the chunk's last step
    are returned (fetched by the caller only when it logs).
    """
    update = _make_update(gen_config, config, num_classes, balanced=True)  # sampled so below
    feature = config.feature

    @functools.partial(jax.jit, donate_argnums=(0,),
                       static_argnames=("length", "ipc", "onehot"))
    def chunk(state, loop_key, label_model, train, init, *, length: int, ipc: int,
              onehot: bool):
        fixed = None
        if init is not None:  # Eq. 3 labels of a fixed set: once, not every step
            fixed = (init[0], _synthetic_labels(label_model, init[0], init[1], num_classes,
                                                feature, onehot), init[1])

        def body(state, _):
            k_batch, k_init, k_theta = jax.random.split(
                jax.random.fold_in(loop_key, state["step"]), 3)
            t_idx = data_lib.balanced_batch_indices(k_batch, train["index"], config.batch_size)
            if fixed is None:
                s_idx = data_lib.class_balanced_indices(k_init, train["index"], ipc)
                x_s, l_s = train["x"][s_idx], train["y"][s_idx]
                y_s = _synthetic_labels(label_model, x_s, l_s, num_classes, feature, onehot)
            else:
                x_s, y_s, l_s = fixed
            return update(state, k_theta, x_s, y_s, l_s, train["x"][t_idx], train["y"][t_idx],
                          jnp.float32(ipc))

        state, metrics = jax.lax.scan(body, state, None, length=length)
        return state, jax.tree.map(lambda v: v[-1], metrics)

    return chunk


def _chunks(steps: int, log_every: int, stops: set[int]) -> list[int]:
    """Ends of the scan chunks: every logging step, every callback step and the last one."""
    ends = set(range(log_every, steps + 1, log_every)) | {s for s in stops if 0 < s <= steps}
    return sorted(ends | ({steps} if steps else set()))


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


def single_init_set(
    key: chex.PRNGKey, dataset: data_lib.Dataset, ipc: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed initial set that :func:`adapt` with ``key`` uses in single mode (Alg. 2 l. 8).

    Exposed so that callers can see (or evaluate) it before adapting, e.g. at step 0 of Fig. 4.
    """
    return data_lib.sample_initial_set(jax.random.split(key)[0], dataset, int(ipc))


def check_adapt_inputs(dataset: data_lib.Dataset, config: AdaptConfig) -> None:
    """Refuse IPCs or a real batch the dataset's smallest class cannot supply, and a
    ``ds_factor`` that does not divide the images."""
    parameterisation.check_factor(config.ds_factor, dataset.image_shape)
    for k in config.ipcs:
        data_lib.check_per_class(dataset, k, what="IPC")
    data_lib.check_per_class(
        dataset, -(-config.batch_size // dataset.num_classes),
        what="real batch per class (adapt.batch_size / classes)")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message says at which step and what to change."""


def adapt(
    key: chex.PRNGKey,
    params: Any,
    dataset: data_lib.Dataset,
    label_model: labels.LabelModel,
    gen_config: GeneratorConfig,
    config: AdaptConfig,
    *,
    progress: bool = True,
    callback: Callable[[int, Any], None] | None = None,
    callback_steps: Sequence[int] = (),
) -> AdaptResult:
    """Alg. 2: adapt ``params`` (a meta or fresh generator) to ``dataset`` for ``config.steps``.

    Args:
      key: PRNG key; step ``i`` uses ``fold_in(key, i)``, so a run is reproducible.
      params: initial generator parameters ω (not modified).
      dataset: the preprocessed target dataset.
      label_model: fixed θ and ``W_t`` (:func:`labels.fit_label_model`).
      gen_config: generator architecture.
      config: hyper-parameters.
      progress: print a progress line with loss and ETA.
      callback: called as ``callback(step, params)`` after the steps in ``callback_steps``
        (e.g. to evaluate snapshots, Fig. 4).
      callback_steps: see ``callback``; 0 means before the first step.

    Returns:
      An :class:`AdaptResult`.

    Raises:
      NonFiniteLossError: the loss became NaN/inf (checked at every logging step).
    """
    c = dataset.num_classes
    check_adapt_inputs(dataset, config)
    init_key, loop_key = jax.random.split(key)
    # One-time setup: explicit uploads of the training set and its class index. Nothing
    # crosses between host and device inside the loop (tests run it under
    # jax.transfer_guard("disallow")); metrics are fetched only at logging steps.
    with jax.transfer_guard("allow"):
        index = data_lib.ClassIndex.from_labels(dataset.y_train, c)
        train = jax.device_put({"x": dataset.x_train, "y": dataset.y_train, "index": index})
        single_init = None
        if config.init_mode == "single":
            single_init = single_init_set(key, dataset, config.ipcs[0])
            init_dev = jax.device_put(single_init)
        # Multi-init: the IPC of every step, drawn up front (one transfer, not one per step).
        ipc_ids = np.asarray(jax.random.randint(jax.random.fold_in(init_key, 1),
                                                (config.steps,), 0, len(config.ipcs)))
        state = init_adapt_state(params, config)
    chunk_fn = make_adapt_chunk(gen_config, config, c)
    bar = Progress("adapt", config.steps, enabled=progress)
    history: list[dict[str, float]] = []
    callback_steps = set(int(s) for s in callback_steps)
    if callback is not None and 0 in callback_steps:
        callback(0, params)
    if single_init is not None:  # single-init: scan chunks between logging/callback steps
        ends = _chunks(config.steps, config.log_every, callback_steps)
    else:  # multi-init: one dispatch per step (its IPC sets the shapes), still no host sync
        ends = list(range(1, config.steps + 1))
    t_start = time.perf_counter()
    t_first, first_len, done = 0.0, 0, 0
    for end in ends:
        if single_init is not None:
            ipc, init = config.ipcs[0], init_dev
        else:
            ipc, init = config.ipcs[int(ipc_ids[done])], None
        onehot = labels.resolve_label_mode(config.label_mode, ipc) == "onehot"
        state, metrics = chunk_fn(state, loop_key, label_model, train, init,
                                  length=end - done, ipc=ipc, onehot=onehot)
        first = done == 0
        done = end
        if done % config.log_every == 0 or done == config.steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(m["loss"]):
                bar.close()
                raise NonFiniteLossError(
                    f"adaptation loss is {m['loss']} at step {done}; lower the learning rate "
                    f"(now {config.learning_rate}) or raise reg (now {config.reg})."
                )
            history.append({"step": done, **m})
        bar.update(done, metrics)
        if callback is not None and done in callback_steps:
            callback(done, state["params"])
        if first:
            jax.block_until_ready(state["params"])
            t_first, first_len = time.perf_counter() - t_start, done
    jax.block_until_ready(state["params"])
    seconds = time.perf_counter() - t_start
    bar.close()
    rest = config.steps - first_len
    per_step = (seconds - t_first) / rest if rest > 0 else seconds / max(config.steps, 1)
    return AdaptResult(
        params=state["params"],
        history=history,
        seconds=seconds,
        seconds_per_step=per_step,
        single_init=single_init,
    )
