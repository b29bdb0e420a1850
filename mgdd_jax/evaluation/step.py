"""The training step of one evaluation network, shared by the per-seed and batched trainers.

The loss is FRePo's ``mean_squared_loss`` on the stored (soft) labels; each step draws a
batch of ``min(n_syn, batch_size)`` images without replacement and augments it
(:func:`mgdd_jax.augment.make_augment`), with ``fold_in(key, step)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from mgdd_jax import augment as augment_lib
from mgdd_jax import nets
from mgdd_jax.evaluation.protocol import EvalProtocol

# What ``progress=`` takes: ``None`` / ``False`` silent, ``True`` a progress line, or a callable
# that gets a dict about every 10% of the steps.
ProgressArg = bool | Callable[[dict[str, Any]], None] | None


def mse_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """FRePo's ``mean_squared_loss``: ``0.5 * sum_c (logits - targets)^2``, mean over the batch."""
    chex.assert_equal_shape([logits, targets])
    return jnp.mean(0.5 * jnp.sum(jnp.square(logits - targets), axis=-1))


def make_step(
    protocol: EvalProtocol, num_classes: int, n_syn: int, steps: int
) -> Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]:
    """The pure training step ``(state, key, x_syn, y_syn) -> (state, {"loss", "learning_rate"})``
    of one network; step ``t = state["step"]`` uses ``fold_in(key, t)``. Shared by the
    per-step loop (:func:`mgdd_jax.evaluation.trainer._build_train_step`) and the batched chunk
    (:func:`mgdd_jax.evaluation.batched._build_train_chunk`), so both compute the same thing."""
    config = protocol.arch(num_classes)
    model = nets.build_model(config)
    tx = protocol.optimizer(steps)
    schedule = protocol.schedule(steps)
    augment_fn = augment_lib.make_augment(protocol.augment)
    batch = protocol.batch_for(n_syn)
    has_bn = config.norm == "batch"

    def step_fn(state, key, x_syn, y_syn):
        chex.assert_rank(x_syn, 4)
        chex.assert_shape(y_syn, (n_syn, num_classes))
        step = state["step"]
        batch_key, aug_key = jax.random.split(jax.random.fold_in(key, step))
        if batch == n_syn:
            x, y = x_syn, y_syn
        else:
            idx = jax.random.choice(batch_key, n_syn, (batch,), replace=False)
            x, y = x_syn[idx], y_syn[idx]
        x = augment_fn(aug_key, x)

        def loss_fn(params):
            variables = {"params": params}
            if has_bn:
                variables["batch_stats"] = state["batch_stats"]
                (_, logits), updates = model.apply(
                    variables, x, train=True, mutable=["batch_stats"]
                )
                return mse_loss(logits, y), updates["batch_stats"]
            _, logits = model.apply(variables, x, train=True)
            return mse_loss(logits, y), None

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": step + 1,
        }
        if has_bn:
            new_state["batch_stats"] = batch_stats
        return new_state, {"loss": loss, "learning_rate": schedule(step)}

    return step_fn


def nonfinite_loss_error(
    value: float, step: int, steps: int, protocol: EvalProtocol, network: str = ""
) -> ValueError:
    """The error for a NaN / inf training loss at ``step`` (0-based) of ``steps``."""
    return ValueError(
        f"non-finite training loss ({value}) at step {step} of {steps}{network}; check the "
        f"scale of x_syn / y_syn and the learning rate ({protocol.learning_rate})."
    )
