r"""Config of the baselines (:mod:`mgdd_jax.baselines`) and their benchmark.

    python -m experiments.paper.benchmark --config=mgdd_jax/configs/benchmark.py:cpu
    python -m experiments.paper.benchmark --config=mgdd_jax/configs/benchmark.py:paper
    python -m experiments.paper.benchmark --config=mgdd_jax/configs/benchmark.py:smoke \
        --config.out=/tmp/bench_smoke                                             # seconds

Variants: ``cpu`` (the distill ``cpu`` sizes and evaluation protocol), ``paper`` (the distill
``paper`` sizes: width-128 feature networks, n_t = 1024, FRePo's width-128 evaluation),
``smoke`` (tiny, for tests). The shared subtrees (``generator``, ``feature``, ``labels``,
``adapt``, ``eval``) are the distill config's of the same size, so every method sees the
same data, feature networks, real batch size and evaluation; ``meta_checkpoint`` (the
``mgdd`` method's start) is the shipped v2 meta generator (the distill default start, fresh,
is the ``identity`` method); ``frepo`` holds
FRePo's own settings (``mgdd_jax/baselines/frepo.py`` says where each was read).
"""

from __future__ import annotations

import ml_collections

from mgdd_jax.configs import distill as distill_config

VARIANTS = {"cpu": "cpu", "paper": "paper", "smoke": "smoke"}


def frepo_config(size: str) -> ml_collections.ConfigDict:
    """FRePo's settings, as its code sets them (``mgdd_jax/baselines/frepo.py`` says where each
    was read: ``lib/datadistillation/frepo.py``, ``script/distill.py`` of yongchaoz/FRePo).

    The real batch n_t is the shared ``adapt.batch_size`` and the pool networks are the shared
    ``feature`` ConvNet, so that every method sees the same batch and feature networks.
    """
    c = ml_collections.ConfigDict({
        # Synthetic images and labels: LAMB (optax defaults, as FRePo's create_proto_state).
        "learning_rate": 3e-4,
        "final_lr_fraction": 0.1,  # cosine decay to 0.1x over the run
        "decay_steps": 0,  # 0: over the run (the last requested snapshot step)
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-6,
        "weight_decay": 0.0,
        "learn_labels": True,  # FRePo's ProtoHolder(learn_label=True)
        # KRR ridge, relative: lam = reg * trace(K_ss) / n_s (FRePo's nfr default, 1e-6).
        "reg": 1e-6,
        "flip": "auto",  # mirrored support copies: "auto" (colour, flip-safe data), "on", "off"
        # Online model pool (proto_train_and_evaluate).
        "pool_size": 10,  # num_nn_state
        "max_online_updates": 100,  # re-initialised when drawn with more updates than this
        "online_learning_rate": 3e-4,  # Adam, constant; one step per outer step, sampled model
        "online_batch_size": 1000,  # synthetic images per online step (eval_batch_size)
    })
    if size == "smoke":
        c.update(pool_size=2, max_online_updates=3, online_batch_size=16)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown benchmark variant {variant!r}; choose from {sorted(VARIANTS)}")
    c = distill_config.get_config(VARIANTS[variant])
    c.variant = variant
    c.methods = "random,frepo,scratch,identity,mgdd"
    c.ipc = "1,10,50"
    c.snapshot_steps = "0,50,100,200,500,1000"
    c.long = False  # also a snapshot at 2000 steps
    c.out = ""  # default: the launcher's results/paper/<dataset>/ (benchmark.json, tables, PNGs)
    c.frepo = frepo_config(variant)
    if variant != "smoke":  # the smoke generator (width 4) cannot load it
        c.meta_checkpoint = distill_config.SHIPPED_META_CHECKPOINT
    # Method "pixel": the images learned directly with adapt.objective (SGD with momentum, as
    # DM's and DC's codes); learning_rate 0 = the objective's published one (dm 1.0, dc 0.1).
    c.pixel = ml_collections.ConfigDict(dict(learning_rate=0.0, momentum=0.5))
    if variant == "smoke":
        c.ipc = "1,2"
        c.snapshot_steps = "0,1,3"
    return c
