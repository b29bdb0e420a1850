"""The per-seed trainer: one network trained on a synthetic set, one jitted step per step.

:func:`train_on_synthetic` is the public entry point for one seed; with ``seeds="loop"`` it
runs :func:`_train`, the per-seed reference loop, otherwise the batched trainer
(:mod:`mgdd_jax.evaluation.batched`) with a single network.
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

from mgdd_jax import nets
from mgdd_jax.evaluation import batched, inputs
from mgdd_jax.evaluation import protocol as protocol_lib
from mgdd_jax.evaluation import step as step_lib
from mgdd_jax.evaluation.protocol import EvalProtocol
from mgdd_jax.evaluation.step import ProgressArg
from mgdd_jax.progress import Progress


@functools.lru_cache(maxsize=32)
def _build_train_step(
    protocol: EvalProtocol, num_classes: int, n_syn: int, steps: int
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """One jitted step for this protocol and set size (the cache key); donates the state.

    The per-seed reference loop (``seeds="loop"``, :func:`_train`)."""
    return jax.jit(step_lib.make_step(protocol, num_classes, n_syn, steps), donate_argnums=0)


def train_on_synthetic(
    key: chex.PRNGKey,
    x_syn: chex.Array,
    y_syn: chex.Array,
    protocol: EvalProtocol | str = "frepo",
    *,
    num_classes: int | None = None,
    progress: ProgressArg = None,
    seeds: str = "auto",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one fresh ConvNet on ``(x_syn, y_syn)`` with ``protocol`` (one seed).

    Args:
      key: PRNG key: network init, batch sampling and augmentation (``fold_in(key, step)``).
      x_syn: ``(n, H, W, C)`` float images.
      y_syn: ``(n, C)`` soft labels (regression targets, e.g. Eq. 3 labels) or ``(n,)`` class
        ids (-> centred one-hot).
      protocol: an :class:`EvalProtocol` or a key of :data:`~mgdd_jax.evaluation.PROTOCOLS`.
      num_classes: only for integer ``y_syn`` (default ``max + 1``).
      progress: ``None`` / ``False`` silent; ``True`` shows a
        :class:`~mgdd_jax.progress.Progress` line on stderr; a callable gets a dict (``step,
        steps, loss, learning_rate, steps_per_second, eta_seconds``) about every 10% of the
        steps.
      seeds: ``"loop"`` runs the per-step reference loop (one jitted step per step); any other
        mode of :data:`~mgdd_jax.evaluation.SEED_MODES` (default ``"auto"``) runs the steps in
        device-side chunks (:func:`~mgdd_jax.evaluation.batched._build_train_chunk`). Same
        result either way (float tolerance).

    Returns:
      ``(variables, metrics)``: flax variables for :func:`~mgdd_jax.evaluation.accuracy`, and
      ``{"steps", "batch_size", "final_loss", "loss_log": [[step, mean loss since last log],
      ...], "seconds"}``.

    Raises:
      ValueError: bad input, or a non-finite loss (with the step at which it appeared).

    Chunked (default): the steps between two logging points (every ~10%) run in one jitted
    device loop that donates the state ``{"params", "opt_state", "step"}`` (+
    ``"batch_stats"`` for batch norm) and returns every step's loss; the host checks them for
    NaN / inf after each chunk and raises with the first bad step's number. ``"loop"``: the
    step function is jitted once per (protocol, classes, set size) and dispatched once per
    step; the losses of the steps since the last logging point reach the host together at the
    next one, where a NaN / inf raises with the first bad step's number.
    """
    protocol = protocol_lib.resolve_protocol(protocol)
    mode = batched.resolve_seeds(seeds, network=protocol.network)
    x, y, c = inputs.check_syn(x_syn, y_syn, num_classes)
    x_dev = jnp.asarray(x, jnp.float32)
    if mode == "loop":
        return _train(key, x_dev, y, c, protocol, progress)
    variables, metrics = batched._train_batched(
        [key], x_dev[None], y[None], c, protocol, progress, "eval", mode
    )
    return jax.tree.map(lambda a: a[0], variables), {
        "steps": metrics["steps"],
        "batch_size": metrics["batch_size"],
        "final_loss": metrics["final_losses"][0],
        "loss_log": metrics["loss_logs"][0],
        "seconds": metrics["seconds"],
    }


def _train(
    key: chex.PRNGKey,
    x: jax.Array,
    y: jax.Array,
    num_classes: int,
    protocol: EvalProtocol,
    progress: ProgressArg,
    name: str = "eval",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-seed reference loop: the network is initialised from ``split(key)[0]`` and step
    ``t`` uses ``fold_in(split(key)[1], t)``; returns what :func:`train_on_synthetic` does.

    The loss is summed on the device and, with the period's per-step losses, copied to the
    host once per logging point (every ~10% of the steps and the last)."""
    n = x.shape[0]
    steps = protocol.steps_for(n)
    config = protocol.arch(num_classes)
    step_fn = _build_train_step(protocol, num_classes, n, steps)
    report = progress if callable(progress) else None

    init_key, train_key = jax.random.split(key)
    variables = nets.init_feature_params(init_key, x.shape[1:], config)
    params = variables["params"]
    state: dict[str, Any] = {
        "params": params,
        "opt_state": protocol.optimizer(steps).init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    if "batch_stats" in variables:
        state["batch_stats"] = variables["batch_stats"]

    log_every = max(1, steps // 10)
    loss_log: list[list[float]] = []
    loss_sum = jnp.zeros((), jnp.float32)
    window: list[jax.Array] = []  # the losses since the last log, still on the device
    start = time.perf_counter()
    first_step_done: float | None = None
    metrics: dict[str, jax.Array] = {}
    bar = Progress(name, steps) if progress is True else None

    for step in range(steps):
        state, metrics = step_fn(state, train_key, x, y)
        window.append(metrics["loss"])
        loss_sum = loss_sum + metrics["loss"]
        if step == 0:
            jax.block_until_ready(metrics["loss"])
            first_step_done = time.perf_counter()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            # The losses reach the host here only, all of the period's at once.
            losses, total = jax.device_get((window, loss_sum))
            losses = np.stack(losses)
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                i = int(bad[0])
                raise step_lib.nonfinite_loss_error(
                    float(losses[i]), step + 1 - len(losses) + i, steps, protocol
                )
            mean_loss = float(total) / len(losses)
            loss_log.append([step + 1, mean_loss])
            loss_sum, window = jnp.zeros((), jnp.float32), []
            if bar is not None:
                bar.update(step + 1, {"loss": mean_loss, "lr": metrics["learning_rate"]})
            if report is not None:
                now = time.perf_counter()
                done = step  # steps after the first (compiling) one
                rate = done / (now - first_step_done) if done > 0 else float("nan")
                eta = (steps - step - 1) / rate if done > 0 else float("nan")
                report(
                    {
                        "step": step + 1,
                        "steps": steps,
                        "loss": mean_loss,
                        "learning_rate": float(metrics["learning_rate"]),
                        "steps_per_second": rate,
                        "eta_seconds": 0.0 if math.isnan(eta) else eta,
                    }
                )
    out = {"params": state["params"]}
    if "batch_stats" in state:
        out["batch_stats"] = state["batch_stats"]
    return out, {
        "steps": steps,
        "batch_size": protocol.batch_for(n),
        "final_loss": loss_log[-1][1],
        "loss_log": loss_log,
        "seconds": time.perf_counter() - start,
    }

