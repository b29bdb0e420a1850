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
adaptation steps do, and every layer at once (SGD at a small α barely moves a generator
whose last conv starts at zero, which leaves the meta-gradient blind to adaptation);
``support="disjoint"`` draws the initial images from outside the real batch, so the task is
not rewarded for copying its supports; ``fixed_init`` keeps one initial set through the inner
loop and the meta-test, as single-initialisation adaptation does; ``tasks_per_step`` averages
many tasks (the step logs ``grad_agreement``, the mean pairwise cosine of their
meta-gradients, and ``inner_displacement``, ‖ω' - ω‖). ``inner_opt="meta_sgd"`` (Meta-SGD,
Li et al. 2017) learns the inner update instead: ω' ← ω' - α ⊙ g with a per-parameter
rate α, initialised to ``inner_lr`` and meta-learned with ω by the same outer Adam (α is
the meta-learner's, kept in the state's ``opt_state``; the generator is ω alone).
:mod:`mgdd_jax.meta_val` scores a run on a fixed validation bank.

The package, one job per module (this one re-exports their public names, so
``from mgdd_jax import meta; meta.make_meta_step(...)`` is the usual spelling):

* :mod:`~mgdd_jax.meta.config`: :class:`MetaConfig` and the reading of stored ones;
* :mod:`~mgdd_jax.meta.tasks`: host-side task sampling (lines 11-12), padded to fixed shapes;
* :mod:`~mgdd_jax.meta.meta_sgd`: Meta-SGD's learned inner update;
* :mod:`~mgdd_jax.meta.maml`: one task's inner loop, meta-test loss and meta-gradient
  (lines 10-18);
* :mod:`~mgdd_jax.meta.sharding`: the task mesh, and placing states and tasks on it (also
  over several processes);
* :mod:`~mgdd_jax.meta.step`: the sharded, jitted meta step (line 19) and its loop choice;
* :mod:`~mgdd_jax.meta.prefetch`: the thread that samples step i+1 while step i runs.
"""

from mgdd_jax.meta.config import (
    ADDED_FIELDS,
    INITS,
    INNER_OPTS,
    LEGACY_FIELDS,
    ORDERS,
    SUPPORTS,
    MetaConfig,
    with_added_fields,
)
from mgdd_jax.meta.maml import (
    INNER_ADAM_EPS_ROOT,
    inner_optimizer,
    task_meta_gradient,
    task_meta_loss,
)
from mgdd_jax.meta.meta_sgd import MetaSGDState, initial_inner_lr
from mgdd_jax.meta.prefetch import Prefetcher
from mgdd_jax.meta.sharding import (
    check_mesh,
    process_tasks,
    replicate,
    shard_batch,
    task_mesh,
)
from mgdd_jax.meta.step import (
    LOOPS,
    gradient_agreement,
    init_meta_state,
    make_meta_step,
    outer_optimizer,
    resolve_loop,
)
from mgdd_jax.meta.tasks import (
    check_source,
    sample_meta_batch,
    sample_task,
    step_inputs,
    task_keys,
)

__all__ = [
    "ADDED_FIELDS",
    "INITS",
    "INNER_ADAM_EPS_ROOT",
    "INNER_OPTS",
    "LEGACY_FIELDS",
    "LOOPS",
    "ORDERS",
    "SUPPORTS",
    "MetaConfig",
    "MetaSGDState",
    "Prefetcher",
    "check_mesh",
    "check_source",
    "gradient_agreement",
    "init_meta_state",
    "initial_inner_lr",
    "inner_optimizer",
    "make_meta_step",
    "outer_optimizer",
    "process_tasks",
    "replicate",
    "resolve_loop",
    "sample_meta_batch",
    "sample_task",
    "shard_batch",
    "step_inputs",
    "task_keys",
    "task_mesh",
    "task_meta_gradient",
    "task_meta_loss",
    "with_added_fields",
]
