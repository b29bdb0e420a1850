"""The sharded, jitted meta step of MGDD Alg. 1: per-task meta-gradients, averaged, one Adam step.

``step(state, batch, keys) -> (state, metrics)`` (:func:`make_meta_step`): every task of the
meta-batch gives its meta-gradient (:func:`mgdd_jax.meta.maml.task_meta_gradient`, Alg. 1
l. 10-18), their mean is taken and ω takes an Adam step (lr β, cosine; l. 19,
:func:`outer_optimizer`). The step logs ``meta_loss``, the first and last inner losses,
``inner_displacement`` (‖ω' - ω‖), ``grad_norm`` and, with several tasks,
``grad_agreement`` (:func:`gradient_agreement`, the mean pairwise cosine of the tasks'
meta-gradients).

**Devices.** Tasks are stacked on a leading axis that is sharded over a ``Mesh`` axis
``"tasks"``; parameters and optimiser state are replicated. Inside ``jax.shard_map`` each
device runs its own tasks and the meta-gradients are averaged with ``lax.pmean`` (an
explicit all-reduce; letting XLA partition the vmapped per-task conv gradients by itself
fails on grouped convolutions). D devices give the update of one device running the same D
tasks.

**Loops (``loop=`` of :func:`make_meta_step`).** ``"scan"``: the inner loop is a
``lax.scan`` (``unroll=config.scan_unroll``) and a device's tasks are ``vmap``-ped (one
graph whatever T and the task count; right for GPUs). ``"unrolled"``: the inner loop is
a Python loop (fully unrolled: no XLA while loop), and so are a device's tasks (each task's
convolutions keep their own, unbatched parameters: no vmap-batched kernels, which XLA turns
into grouped convolutions for several tasks per device). Same values (float round-off).
``"auto"`` (default) takes ``"unrolled"`` on CPU and ``"scan"`` elsewhere
(:func:`resolve_loop`, through :func:`mgdd_jax.backend.is_cpu`): XLA:CPU leaves a
convolution's kernel gradient inside a while-loop body in its raw, non-canonical form
(``dim_labels=f01b_i01o->01bf``) and runs it much slower than the same gradient outside a
loop (canonicalised to ``b01f_01io->b01f``), and every inner step's gradient is such a
kernel gradient. The price of unrolling is compile time growing faster than T times the
tasks per device.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mgdd_jax import backend, optim
from mgdd_jax.generator import GeneratorConfig
from mgdd_jax.meta.config import MetaConfig
from mgdd_jax.meta.maml import task_meta_gradient
from mgdd_jax.meta.meta_sgd import initial_inner_lr
from mgdd_jax.meta.sharding import check_mesh, replicate


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


LOOPS: tuple[str, ...] = ("auto", "unrolled", "scan")


def resolve_loop(loop: str, mesh: Mesh) -> str:
    """``"auto"`` -> ``"unrolled"`` on a CPU mesh, ``"scan"`` otherwise (module docstring)."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop != "auto":
        return loop
    return "unrolled" if backend.is_cpu(mesh.devices.flat[0].platform) else "scan"


def make_meta_step(gen_config: GeneratorConfig, config: MetaConfig, mesh: Mesh, *,
                   loop: str = "auto"):
    """Build the jitted meta step ``step(state, batch, keys) -> (state, metrics)``.

    ``batch`` is :func:`~mgdd_jax.meta.tasks.sample_meta_batch`'s output placed with
    :func:`~mgdd_jax.meta.sharding.shard_batch`; ``keys`` are ``(tasks_per_step, 2)`` uint32
    key data, one per task (host arrays with one process; placed with ``shard_batch`` too when
    the mesh spans processes). The state is replicated and donated; tasks are split over the
    mesh's ``"tasks"`` axis. The meta update (Alg. 1 l. 19) is :func:`outer_optimizer`'s.
    ``loop``: how the inner steps and a device's tasks are looped (:data:`LOOPS`, see the
    module docstring); the same update either way.
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
        mean = lambda x: jax.lax.pmean(jnp.mean(x, axis=0), "tasks")
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
