"""``pixel``: the synthetic images learned directly, with one of the registry's objectives — the
pixel-space baseline of "MGDD w DC / w DM" (MGDD Tab. 3).

With ``config.adapt.objective = "dm"`` this is distribution matching (Zhao & Bilen, WACV 2023,
``main_DM.py``): images initialised from class-balanced real ones, labels fixed (centred one-hot
of the class), every step a fresh random ConvNet θ* and a class-balanced real batch, the loss of
:func:`mgdd_jax.objective.dm_objective`, SGD with momentum 0.5 at learning rate 1.0 on the
pixels. With ``"dc"`` it is gradient matching (Zhao et al., ICLR 2021, ``main.py``: lr 0.1,
momentum 0.5) on random networks.

Deviations, the same for "MGDD w X" (it uses the same objective function), so the comparison
stays like for like: the real batch is the shared ``config.adapt.batch_size`` (class-balanced)
instead of DM's 256 and DC's 256 per class; no differentiable siamese augmentation; for DC no
inner training of the network between matches (DC's outer/inner loop trains the network on the
synthetic set; here θ* is fresh every step, as in DM and in MGDD's KRR loop). The learning rate
is ``config.pixel.learning_rate`` or, when 0, the objective's published one
(:data:`PUBLISHED_LR`).

The loop is one jitted ``lax.scan`` chunk per snapshot interval with the state donated; step t
draws its real batch and θ* from ``fold_in(loop_key, t)``, sampled and gathered on the device.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgdd_jax import adapt as adapt_lib
from mgdd_jax import job as job_lib
from mgdd_jax import krr, nets, objective
from mgdd_jax import data as data_lib
from mgdd_jax.baselines import Snapshot, check_snapshot_steps, register

# Learning rates of the pixels in the objectives' own codes (SGD, momentum 0.5).
PUBLISHED_LR: dict[str, float] = {"dm": 1.0, "dc": 0.1}


def pixel_learning_rate(name: str, learning_rate: float) -> float:
    """``learning_rate`` if > 0, else the objective's published one; refuses KRR (FRePo is
    the KRR pixel-space method) and unknown objectives."""
    objective.get_objective(name)
    if not math.isfinite(learning_rate):
        raise ValueError(f"config.pixel.learning_rate must be finite, got {learning_rate}")
    if learning_rate < 0:
        raise ValueError(f"config.pixel.learning_rate must be >= 0 (0: the objective's "
                         f"published one), got {learning_rate}")
    if learning_rate > 0:
        return float(learning_rate)
    if name not in PUBLISHED_LR:
        raise ValueError(f"method 'pixel' has no published learning rate for objective "
                         f"{name!r}; set config.pixel.learning_rate, or use the 'frepo' method "
                         "for KRR in pixel space")
    return PUBLISHED_LR[name]


@functools.lru_cache(maxsize=8)
def make_chunk(*, name: str, feature: nets.ConvNetConfig, reg: float, num_classes: int,
               batch_size: int, learning_rate: float, momentum: float
               ) -> Callable[..., dict[str, Any]]:
    """``chunk(state, loop_key, train, *, length) -> state``: ``length`` pixel steps in one
    ``lax.scan`` (state ``{"x", "labels", "opt_state", "step", "bad_step"}`` donated; ``train``
    is ``{"x", "y", "index"}`` on the device)."""
    optimizer = optax.sgd(learning_rate, momentum=momentum)
    fn = objective.get_objective(name)

    @functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("length",))
    def chunk(state, loop_key, train, *, length: int):
        def body(state, _):
            k_batch, k_theta = jax.random.split(jax.random.fold_in(loop_key, state["step"]))
            rows = data_lib.balanced_batch_indices(k_batch, train["index"], batch_size)
            l_t = train["y"][rows]
            real = objective.LabelledBatch(train["x"][rows], krr.centred_onehot(l_t, num_classes),
                                           l_t)
            y_s = krr.centred_onehot(state["labels"], num_classes)

            def loss_fn(x):  # both sides class-balanced: the objective's fastest layout
                syn, real_ = objective.arrange_for(
                    name, objective.LabelledBatch(x, y_s, state["labels"]), real, num_classes)
                return fn(syn, real_, k_theta, feature=feature, reg=reg)

            loss, g = jax.value_and_grad(loss_fn)(state["x"])
            updates, opt_state = optimizer.update(g, state["opt_state"], state["x"])
            step = state["step"] + 1
            bad = jnp.where((state["bad_step"] < 0) & ~jnp.isfinite(loss), step,
                            state["bad_step"])
            return {"x": optax.apply_updates(state["x"], updates), "labels": state["labels"],
                    "opt_state": opt_state, "step": step, "bad_step": bad}, None

        state, _ = jax.lax.scan(body, state, None, length=length)
        return state

    return chunk


@register("pixel")
def pixel(key: chex.PRNGKey, dataset: data_lib.Dataset, ipc: int,
          snapshot_steps: Sequence[int], config: Any) -> Iterator[Snapshot]:
    """Pixel-space distillation with ``config.adapt.objective`` (module docstring).

    Args:
      key: PRNG key; the initial set is the generator methods' (``job_keys(key)["adapt"]``),
        so ``pixel`` and "MGDD w X" start from the same real images.
      dataset: the preprocessed dataset.
      ipc: images per class.
      snapshot_steps: strictly increasing step counts to yield at (0: the initial set).
      config: the benchmark config; reads ``adapt.objective``, ``adapt.batch_size``,
        ``adapt.reg``, ``feature`` and ``pixel``.

    Returns:
      An iterator of :class:`Snapshot` (images, centred one-hot labels, cumulative seconds).

    Raises:
      ValueError: at the call, before any work, for a bad IPC, snapshot list, batch size or
        learning rate.
      NonFiniteLossError: while iterating, if the loss became NaN/inf (names the step).
    """
    steps = check_snapshot_steps(snapshot_steps)
    name = str(config.adapt.objective)
    lr = pixel_learning_rate(name, float(config.pixel.learning_rate))
    momentum = float(config.pixel.momentum)
    if not 0 <= momentum < 1:
        raise ValueError(f"config.pixel.momentum must be in [0, 1), got {momentum}")
    data_lib.check_per_class(dataset, ipc, what="IPC")
    c = dataset.num_classes
    batch_size = int(config.adapt.batch_size)
    data_lib.check_per_class(dataset, -(-batch_size // c),
                             what="real batch per class (adapt.batch_size / classes)")
    feature = nets.ConvNetConfig(**config.feature, num_classes=c)
    return _run(key, dataset, int(ipc), steps, name, feature, float(config.adapt.reg),
                batch_size, lr, momentum)


def _run(key, dataset, ipc, steps, name, feature, reg, batch_size, lr, momentum
         ) -> Iterator[Snapshot]:
    t_resume = time.perf_counter()
    seconds = 0.0
    c = dataset.num_classes
    x0, l0 = adapt_lib.single_init_set(job_lib.job_keys(key)["adapt"], dataset, ipc)
    loop_key = jax.random.fold_in(key, 2)
    with jax.transfer_guard("allow"):
        train = jax.device_put({"x": dataset.x_train, "y": dataset.y_train,
                                "index": data_lib.ClassIndex.from_labels(dataset.y_train, c)})
        x = jnp.asarray(x0, jnp.float32)
        state = {"x": x, "labels": jnp.asarray(l0, jnp.int32),
                 "opt_state": optax.sgd(lr, momentum=momentum).init(x),
                 "step": jnp.zeros((), jnp.int32), "bad_step": jnp.full((), -1, jnp.int32)}
    chunk = make_chunk(name=name, feature=feature, reg=reg, num_classes=c,
                       batch_size=batch_size, learning_rate=lr, momentum=momentum)
    gaps = [b - a for a, b in zip((0, *steps), steps) if b > a]
    length = functools.reduce(math.gcd, gaps, 0)  # one compiled chunk length
    y = np.asarray(krr.centred_onehot(jnp.asarray(l0), c), np.float32)
    done = 0
    for target in steps:
        while done < target:
            state = chunk(state, loop_key, train, length=length)
            done += length
        jax.block_until_ready(state)
        bad = int(state["bad_step"])
        seconds += time.perf_counter() - t_resume
        if bad >= 0:
            raise adapt_lib.NonFiniteLossError(
                f"pixel {name} loss became non-finite at step {bad} (ipc={ipc}); lower "
                f"config.pixel.learning_rate (now {lr}).")
        x = np.array(state["x"], dtype=np.float32, copy=True)
        yield Snapshot(steps=target, seconds=seconds, x=x, y=y, timing={"distill_s": seconds})
        t_resume = time.perf_counter()
