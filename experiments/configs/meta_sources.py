r"""Which offline meta-training source transfers to Fashion-MNIST (issue 10, item 5).

    python -m experiments.meta_train --config=experiments/configs/meta_sources.py:SOURCE \
        --workdir=runs/sources_SOURCE --config.max_seconds=540
    python -m experiments.meta_studies.meta_variants --out=results/meta_studies/meta_sources_fmnist_5-9 \
        --runs=glyphs:runs/sources_glyphs,procedural:runs/sources_procedural,...

Every variant is the same meta-learning recipe (``meta_fmnist_split.py:fomaml``, the winner
of the variant comparison: first order, Adam inner steps at adaptation's α, supports from
outside the real batch, one fixed initial set; 3-5 classes, 250 real and 5-50 synthetic images
per task, 4 tasks per step, cosine over 400 steps), on 28×28 images, scored on one
**transfer bank**: ``val.source = fashion_mnist#classes=5-9`` (its train split; the test
split is never touched), i.e. how much K = 20 adaptation steps on Fashion-MNIST classes the
run never saw gain from the meta generator over the identity. Only the source differs
(the argument after the colon):

* ``glyphs``: the glyph corpus (characters of the installed fonts, random colours), 500
  classes x 128 renderings.
* ``procedural``: formula-driven classes (:mod:`mgdd_jax.data.procedural`: fractals, dead
  leaves, textures), 500 classes x 128.
* ``fractal``: the fractal classes only, 500 x 128.
* ``mix``: 250 glyph classes and 250 procedural classes (``mix:``), 128 each.
* ``fmnist04``: Fashion-MNIST classes 0-4 (the in-domain reference of the mechanism check:
  the nearest a source can be to the bank without being it).

Selecting a source on Fashion-MNIST's train split is model selection on the target domain;
the benchmark's test split stays unseen. The RGB sources are resized to 28×28 and the
generator (3 channels) is scored on the grey bank through fresh channel adaptors, as
``experiments.distill`` loads it for grey targets.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import meta_fmnist_split

SOURCES = {
    "glyphs": "glyphs:classes=500,per_class=128",
    "procedural": "procedural:classes=500,per_class=128",
    "fractal": "procedural:kinds=fractal,classes=500,per_class=128",
    "mix": "mix:glyphs:classes=250,per_class=128+procedural:classes=250,per_class=128",
    "fmnist04": "fashion_mnist#classes=0-4",
}
VARIANTS = tuple(SOURCES)
BANK_SOURCE = "fashion_mnist#classes=5-9"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "procedural"
    if name not in SOURCES:
        raise ValueError(f"unknown meta_sources variant {name!r}; choose from "
                         f"{tuple(SOURCES)}")
    c = meta_fmnist_split.get_config("fomaml")
    c.source = SOURCES[name]
    c.image_size = 28
    c.meta.update(min_classes=3, max_classes=5)
    c.val.source = BANK_SOURCE
    return c
