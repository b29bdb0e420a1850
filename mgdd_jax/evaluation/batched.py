"""The batched trainer: all seeds (and same-shape sets) of an evaluation in one jitted call.

``G x S`` networks (G sets of one shape, S seeds each) train together, the steps between two
logging points in one device loop (:func:`_build_train_chunk`), batched with ``jax.vmap`` or
unrolled (:data:`SEED_MODES`); :func:`resolve_seeds` picks the mode for ``seeds="auto"``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mgdd_jax import backend as backend_lib
from mgdd_jax import nets
from mgdd_jax.evaluation import step as step_lib
from mgdd_jax.evaluation.protocol import EvalProtocol
from mgdd_jax.evaluation.step import ProgressArg
from mgdd_jax.progress import Progress

# How the networks of one call are batched (``seeds=`` of
# :func:`~mgdd_jax.evaluation.evaluate_synthetic`):
# "vmap": ``jax.vmap`` over sets and seeds (batched kernels; what GPUs want); "unrolled": one
# copy of the step per network, traced in a Python loop inside the same jitted loop body (no
# batched kernels: XLA:CPU turns vmap-batched convolution kernels into grouped convolutions,
# while independent per-network graphs run side by side on its cores); "loop": the per-seed
# reference loop, one jitted step per step (:func:`mgdd_jax.evaluation.trainer._train`);
# "auto": on CPU "unrolled" for the ConvNet (faster on XLA:CPU than the loop, and "vmap"
# slower than both) and "loop" for the unseen architectures of Tab. 4, "vmap" elsewhere.
# AlexNet, VGG11 and ResNet18 use flax's stock convolutions, whose kernel gradients XLA:CPU
# runs on a slow fallback path inside a loop body (``mgdd_jax.conv`` explains why; the
# ConvNet's convs avoid it): there the per-step loop, which jits one step outside any loop, is
# the faster one.
SEED_MODES: tuple[str, ...] = ("auto", "unrolled", "vmap", "loop")


def resolve_seeds(seeds: str, backend: str | None = None, network: str = "convnet") -> str:
    """``"auto"`` -> on CPU ``"unrolled"`` for the ConvNet and ``"loop"`` for the other
    ``network``s (:data:`SEED_MODES` says why); ``"vmap"`` on other backends (GPU, TPU)."""
    if seeds not in SEED_MODES:
        raise ValueError(f"seeds must be one of {SEED_MODES}, got {seeds!r}")
    if network not in nets.ARCHS:
        raise ValueError(f"network must be one of {nets.ARCHS}, got {network!r}")
    if seeds != "auto":
        return seeds
    if not backend_lib.is_cpu(backend):
        return "vmap"
    return "unrolled" if network == "convnet" else "loop"


@functools.lru_cache(maxsize=32)
def _build_init(
    arch: nets.ConvNetConfig, image_shape: tuple[int, ...]
) -> Callable[[jax.Array], tuple[dict[str, Any], jax.Array]]:
    """Jitted ``keys (M,) -> (variables with a leading M axis, train keys (M,))``: network ``m``
    is initialised from ``split(keys[m])[0]`` and trains with ``split(keys[m])[1]``, as
    :func:`~mgdd_jax.evaluation.trainer._train` does for one key."""

    def init(key):
        init_key, train_key = jax.random.split(key)
        return nets.init_feature_params(init_key, image_shape, arch), train_key

    return jax.jit(jax.vmap(init))


@functools.lru_cache(maxsize=32)
def _build_train_chunk(
    protocol: EvalProtocol, num_classes: int, n_syn: int, steps: int, mode: str,
    max_length: int,
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """Jitted ``chunk(states, keys, x, y, length) -> (states, {"loss", "learning_rate"})``.

    Trains ``G x S`` networks (G sets of one shape, S seeds each) for ``length <= max_length``
    steps in one device loop (``lax.fori_loop``; ``length`` is traced, so one compilation
    serves every chunk length), the state donated. ``states`` leaves have leading ``(G, S)``
    axes, ``keys`` is ``(G, S)`` train keys, ``x`` ``(G, n, H, W, C)``, ``y`` ``(G, n, C)``.
    Each network runs :func:`~mgdd_jax.evaluation.step.make_step` (``fold_in(its key,
    step)``), batched as ``mode`` ("vmap" or "unrolled", see :data:`SEED_MODES`). Returns each
    step's losses and learning rates, ``(max_length, G, S)``; rows ``>= length`` are NaN / 0
    (unused).
    """
    step_fn = step_lib.make_step(protocol, num_classes, n_syn, steps)
    if mode == "vmap":
        over_seeds = jax.vmap(step_fn, in_axes=(0, 0, None, None))
        multi_step = jax.vmap(over_seeds, in_axes=(0, 0, 0, 0))
    elif mode == "unrolled":

        def multi_step(states, keys, x, y):
            g_count, s_count = x.shape[0], keys.shape[1]
            outs = [
                step_fn(jax.tree.map(lambda a, g=g, s=s: a[g, s], states), keys[g, s], x[g], y[g])
                for g in range(g_count)
                for s in range(s_count)
            ]
            return jax.tree.map(
                lambda *leaves: jnp.stack(leaves).reshape(g_count, s_count, *leaves[0].shape),
                *outs,
            )
    else:
        raise ValueError(f"batched training mode must be 'vmap' or 'unrolled', got {mode!r}")

    def chunk(states, keys, x, y, length):
        chex.assert_rank(x, 5)
        chex.assert_shape(y, (x.shape[0], n_syn, num_classes))
        shape = (max_length, x.shape[0], keys.shape[1])
        logs = {
            "loss": jnp.full(shape, jnp.nan, jnp.float32),
            "learning_rate": jnp.zeros(shape, jnp.float32),
        }

        def body(i, carry):
            states, logs = carry
            states, metrics = multi_step(states, keys, x, y)
            logs = {k: logs[k].at[i].set(metrics[k].astype(jnp.float32)) for k in logs}
            return states, logs

        return jax.lax.fori_loop(0, length, body, (states, logs))

    return jax.jit(chunk, donate_argnums=0)


def _log_ends(steps: int) -> list[int]:
    """Steps after which the loss is logged (every ~10% and the last): the chunk ends."""
    log_every = max(1, steps // 10)
    return sorted(set(range(log_every, steps + 1, log_every)) | {steps})


def _train_batched(
    keys: list[chex.PRNGKey],
    x: jax.Array,
    y: jax.Array,
    num_classes: int,
    protocol: EvalProtocol,
    progress: ProgressArg,
    name: str,
    mode: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``G x S`` networks at once: ``keys`` is ``G * S`` keys (set-major), ``x`` ``(G, n,
    H, W, C)``, ``y`` ``(G, n, C)``; set ``g``'s network ``s`` uses ``keys[g * S + s]`` exactly
    as :func:`~mgdd_jax.evaluation.trainer._train` would use it (same init, same
    ``fold_in(train key, step)`` per step).

    Returns ``(variables, metrics)``: flax variables with a leading ``G * S`` axis (set-major),
    and ``{"steps", "batch_size", "final_losses", "loss_logs", "seconds"}`` with one entry per
    network in the last two. The losses reach the host once per chunk (every ~10% of the
    steps), all of the chunk's steps at once: a NaN / inf raises ValueError with its exact step.
    """
    g_count, n = int(x.shape[0]), int(x.shape[1])
    m_count = len(keys)
    if m_count % g_count:
        raise ValueError(f"{m_count} keys for {g_count} sets: not a whole number of seeds")
    s_count = m_count // g_count
    steps = protocol.steps_for(n)
    ends = _log_ends(steps)
    max_length = max(b - a for a, b in zip([0, *ends], ends))
    chunk_fn = _build_train_chunk(protocol, num_classes, n, steps, mode, max_length)
    init_fn = _build_init(protocol.arch(num_classes), tuple(int(d) for d in x.shape[2:]))
    report = progress if callable(progress) else None
    bar = Progress(name, steps) if progress is True else None

    start = time.perf_counter()
    variables, train_keys = init_fn(jnp.stack(keys))
    params = variables["params"]
    state: dict[str, Any] = {
        "params": params,
        "opt_state": jax.vmap(protocol.optimizer(steps).init)(params),
        "step": jnp.zeros((m_count,), jnp.int32),
    }
    if "batch_stats" in variables:
        state["batch_stats"] = variables["batch_stats"]
    state = jax.tree.map(lambda a: a.reshape(g_count, s_count, *a.shape[1:]), state)
    train_keys = train_keys.reshape(g_count, s_count, *train_keys.shape[1:])

    loss_logs: list[list[list[float]]] = [[] for _ in range(m_count)]
    done = 0
    first: tuple[int, float] | None = None  # (steps, time) at the end of the first chunk
    for end in ends:
        length = end - done
        state, logs = chunk_fn(state, train_keys, x, y, np.int32(length))
        logs = jax.device_get(logs)  # the host sync: the chunk's losses and learning rates
        losses = logs["loss"][:length].reshape(length, m_count)
        bad = ~np.isfinite(losses)
        if bad.any():
            i, m = (int(v[0]) for v in np.nonzero(bad))
            network = f" (network {m + 1} of {m_count})" if m_count > 1 else ""
            raise step_lib.nonfinite_loss_error(losses[i, m], done + i, steps, protocol, network)
        means = losses.astype(np.float64).mean(axis=0)
        for m in range(m_count):
            loss_logs[m].append([end, float(means[m])])
        now = time.perf_counter()
        if first is None:
            first = (end, now)
            rate = end / (now - start)  # includes compilation: a pessimistic first estimate
        else:
            rate = (end - first[0]) / (now - first[1]) if now > first[1] else float("nan")
        mean_loss = float(np.mean(means))
        learning_rate = float(logs["learning_rate"][length - 1].flat[0])
        if bar is not None:
            bar.update(end, {"loss": mean_loss, "lr": learning_rate})
        if report is not None:
            eta = (steps - end) / rate if rate > 0 else float("nan")
            report(
                {
                    "step": end,
                    "steps": steps,
                    "loss": mean_loss,
                    "learning_rate": learning_rate,
                    "steps_per_second": rate,
                    "eta_seconds": 0.0 if math.isnan(eta) else eta,
                }
            )
        done = end
    state = jax.tree.map(lambda a: a.reshape(m_count, *a.shape[2:]), state)
    out = {"params": state["params"]}
    if "batch_stats" in state:
        out["batch_stats"] = state["batch_stats"]
    return out, {
        "steps": steps,
        "batch_size": protocol.batch_for(n),
        "final_losses": [log[-1][1] for log in loss_logs],
        "loss_logs": loss_logs,
        "seconds": time.perf_counter() - start,
    }

