r"""Meta-training on the offline glyph corpus (disjoint from Fashion-MNIST and digits).

    python -m experiments.make_glyphs                      # once: render and cache the corpus
    python -m experiments.meta_train --config=experiments/configs/meta_glyphs.py \
        --workdir=runs/meta_glyphs
    python -m experiments.meta_train --config=experiments/configs/meta_glyphs.py:smoke \
        --workdir=/tmp/meta_smoke                          # seconds, for tests

Variants: ``gpu`` (default; Tab. 7 but narrower tasks: up to 50 classes, 500 real and 250
synthetic images), ``cpu`` (first-order, small tasks: what a 2-core CPU can take), ``smoke``.
The generator architecture matches ``mgdd_jax/configs/distill.py`` (width 32), so the
result loads as its ``--meta_checkpoint``.

The values are the library's (``mgdd_jax/configs/meta.py``, the single source, which says
what every field is): its variants of the same names on the glyph source. ``base_config``,
which the other meta configs here build on, is re-exported from there. Every field is a flag,
e.g. ``--config.meta.inner_steps=3 --config.meta.order=first``.
"""

from __future__ import annotations

import ml_collections

from mgdd_jax.configs import meta as meta_config
from mgdd_jax.configs.meta import base_config  # noqa: F401 -- re-exported for the lab's configs

VARIANTS = meta_config.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "gpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown meta_glyphs variant {variant!r}; choose from {VARIANTS}")
    return meta_config.get_config(variant, source="glyphs")
