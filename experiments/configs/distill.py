r"""Config of the distill main job (`python -m experiments.distill`).

Variants, chosen by the argument after the colon:

* ``cpu`` (default): sized for a 2-core CPU. Generator width 32, feature networks width 64
  (instance norm), 512 real images per step, the "cpu" evaluation protocol.
* ``paper``: Tab. 7 / Fig. 7 sizes (generator width 64, feature width 128, n_t = 1024,
  FRePo's evaluation protocol at width 128), for a GPU.
* ``smoke``: tiny widths and a few steps; the whole pipeline in seconds (tests, CI).

    python -m experiments.distill --dataset=fashion_mnist --ipc=10 --out=runs/fmnist_ipc10
    python -m experiments.distill --config=experiments/configs/distill.py:paper \
        --dataset=tfds:cifar10 --ipc=1,10,50 --out=runs/cifar10
    python -m experiments.distill --config=experiments/configs/distill.py:smoke \
        --dataset=digits --ipc=2 --out=/tmp/smoke --config.adapt.steps=3

Any field can be overridden with ``--config.<path>=value``; ``--dataset``, ``--ipc``,
``--steps``, ``--meta_checkpoint``, ``--out`` and ``--seed`` are shorthands.
"""

from __future__ import annotations

import os

import ml_collections

from mgdd_jax import krr

# The meta generator shipped with the package: meta-trained on the offline glyph corpus
# (experiments/meta_generator/README.md says how). Pass --meta_checkpoint= (empty) to adapt
# a freshly initialised generator instead.
SHIPPED_META_CHECKPOINT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "meta_generator", "checkpoints")

VARIANTS = ("cpu", "paper", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown distill config variant {variant!r}; choose from {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.dataset = "fashion_mnist"
    c.data_dir = ""
    c.ipc = "10"  # comma list, e.g. "1,10,50"
    c.seed = 0
    c.out = ""
    c.meta_checkpoint = SHIPPED_META_CHECKPOINT

    c.generator = ml_collections.ConfigDict(
        dict(width=32, double_width=False, norm="instance", embed_dim=32, embed_channels=16,
             core_channels=3)
    )
    c.feature = ml_collections.ConfigDict(dict(width=64, depth=3, double_width=False,
                                               norm="instance"))
    c.labels = ml_collections.ConfigDict(dict(reg=krr.DEFAULT_REG, chunk_size=1024))
    c.adapt = ml_collections.ConfigDict(
        dict(steps=1000, learning_rate=1e-4, final_lr_fraction=0.1, batch_size=512,
             reg=krr.DEFAULT_REG,
             init_mode="auto",  # "auto": single for one IPC, multi over the IPCs otherwise
             sizes="",  # comma list of IPCs adapted on; "" = the requested IPCs
             label_mode="auto", log_every=10)
    )
    c.eval = ml_collections.ConfigDict(
        dict(protocol="cpu", num_seeds=3, steps=0,  # 0: the protocol's steps-by-size table
             enabled=True,
             random_baseline=True)  # also evaluate the initial real images, one-hot labels
    )

    if variant == "paper":
        c.generator.width = 64
        c.feature.width = 128
        c.adapt.batch_size = 1024
        c.eval.protocol = "frepo"
    elif variant == "smoke":
        c.meta_checkpoint = ""  # the shipped meta generator is width 32; smoke is width 4
        c.generator.update(width=4, embed_dim=8, embed_channels=2)
        c.feature.width = 4
        c.labels.chunk_size = 256
        c.adapt.update(steps=3, batch_size=30, log_every=1)
        c.eval.update(num_seeds=2, steps=5)
    return c
