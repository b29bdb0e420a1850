r"""The mechanism check of issue 10: meta-train on Fashion-MNIST classes 0-4, adapt to 5-9.

    python -m experiments.meta_train --config=experiments/configs/meta_fmnist_split.py:reptile \
        --workdir=runs/split_reptile --config.max_seconds=1920
    python -m experiments.paper.adaptation_curve --dataset='fashion_mnist#classes=5-9' --ipc=10 \
        --meta_checkpoint=runs/split_reptile/checkpoints --at=0,50,100,200,1000 \
        --meta_at=0,50,100,200 --out=results/meta_studies/mechanism_fmnist_0-4_to_5-9_ipc10

A legitimate disjoint-class split (each side has its own train and test split): it separates
"the algorithm works" from "the source is wrong" (a source far from the target). It does not
replace a cross-dataset source for the shipped generator.

Variants (the argument after the colon), one switch each of ``mgdd_jax.meta.MetaConfig``, all
on the same validation bank (``val``), sized for the 2-core CPU:

* ``alg1``: Alg. 1 as written (second order, SGD inner steps at α = 1e-4, supports from the
  real batch, a new initial set and size per inner step): the recipe of the shipped generator.
* ``alg1_first``: the same, first order (what ``meta_glyphs.py:cpu`` runs): on this CPU the
  second-order variants take minutes to compile one step of 4 unrolled tasks.
* ``fomaml`` (default: best on the validation bank per meta step, README "Making the meta
  generator pay off"): first-order MAML with Adam inner steps at adaptation's α, supports
  from outside the real batch, one fixed initial set (as single-init adaptation uses the
  generator).
* ``maml``: the same, second order (differentiated through Adam).
* ``reptile``: the same inner loop, Reptile's meta-gradient ω - ω'.
* ``meta_sgd``: the same as ``fomaml`` with Meta-SGD's inner update (ω' ← ω' - α ⊙ g, a
  learned per-parameter α, starting at ``inner_lr`` = 0.15: there 5 inner steps move ω about
  as far as 5 Adam steps at 1e-4 do), first order.

The generator and feature networks are ``mgdd_jax/configs/distill.py``'s (cpu sizes), so
the checkpoint is a ``--meta_checkpoint`` for it.
"""

from __future__ import annotations

import ml_collections

from mgdd_jax.configs.meta import base_config

VARIANTS = ("fomaml", "reptile", "maml", "alg1", "alg1_first", "meta_sgd")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "fomaml"
    if variant not in VARIANTS:
        raise ValueError(f"unknown meta_fmnist_split variant {variant!r}; choose from "
                         f"{VARIANTS}")
    c = base_config("fashion_mnist#classes=0-4")
    c.max_seconds = 0
    c.log_every = 5
    c.checkpoint_every = 20
    c.meta.update(steps=400, inner_steps=5, min_classes=2, max_classes=5, num_real=250,
                  min_synthetic=5, max_synthetic=50, tasks_per_step=4, outer_lr=1e-3,
                  final_lr_fraction=0.1, inner_lr=1e-4, order="first", inner_opt="adam",
                  support="disjoint", fixed_init=True)
    c.val.update(tasks=4, steps=20, every=25, eval_draws=4)
    if variant == "reptile":
        c.meta.order = "reptile"
    elif variant == "meta_sgd":
        c.meta.update(inner_opt="meta_sgd", inner_lr=0.15)
    elif variant == "maml":
        c.meta.order = "second"
    elif variant in ("alg1", "alg1_first"):
        c.meta.update(order="second" if variant == "alg1" else "first", inner_opt="sgd",
                      support="in_batch", fixed_init=False, outer_lr=1e-4)
    return c
