"""Meta-SGD (Li et al. 2017): the inner update ω' ← ω' - α ⊙ g with learned per-parameter rates.

With ``inner_opt="meta_sgd"`` the rates α start at ``inner_lr`` everywhere
(:func:`initial_inner_lr`) and are meta-learned with ω by the same outer Adam; they are the
meta-learner's (kept in the meta state's ``opt_state``), and the generator is ω alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mgdd_jax.meta.config import MetaConfig


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
