"""The MAML loss of one task and its meta-gradient (MGDD Alg. 1 lines 10-18).

For one task (:mod:`mgdd_jax.meta.tasks`):

* a fixed random network θ; ``W_t`` of Eq. 3 solved once on the real batch 𝒯;
* ``inner_steps`` updates of a copy ω' of the generator (:func:`inner_optimizer`: SGD at α,
  Alg. 1 l. 16, or Adam, or Meta-SGD), each on its own initial set X_s with labels
  ``Y_s* = f_θ(X_s) W_t`` (Eq. 3), a fresh θ* and the Eq. 1 loss (lines 13-16);
* the meta-test loss on yet another set (line 17), plus ``start_weight`` × the same loss at
  ω (:func:`task_meta_loss`);
* its meta-gradient (line 18, :func:`task_meta_gradient`): differentiated through the whole
  inner loop (``order="second"``), first-order MAML (``"first"``: the inner gradients are
  stopped) or Reptile's ``ω - ω'`` (``"reptile"``).

First order and Reptile run the inner loop outside any differentiation, so only T
forward-and-gradient steps are compiled, not their linearisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from mgdd_jax import krr, nets, objective
from mgdd_jax.generator import GeneratorConfig
from mgdd_jax.meta.config import MetaConfig
from mgdd_jax.meta.meta_sgd import meta_sgd

# Adam's eps inside the square root of the inner update: without it the derivative of
# sqrt(v) at v = 0 (a parameter whose gradient is exactly 0, e.g. a bias before a norm) is
# inf·0 = NaN in second-order MAML. optax's documented switch for differentiating through Adam.
INNER_ADAM_EPS_ROOT = 1e-16


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
    so no XLA while loop (see *Loops* in :mod:`mgdd_jax.meta.step`). It changes speed and compile
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
        # compile.
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
