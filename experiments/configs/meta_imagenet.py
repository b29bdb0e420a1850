r"""The paper's meta-learning recipe (MGDD Sec. 4.1, Tab. 7) on ImageNet-1k at 32x32.

For users with a GPU and the TFDS dataset ``imagenet_resized/32x32`` prepared locally:

    python -m experiments.meta_train --config=experiments/configs/meta_imagenet.py \
        --workdir=runs/meta_imagenet

200,000 meta-testing iterations, T = 5 inner steps (α = 1e-4), Adam β = 1e-5 with cosine
η = 0.1, 10-100 classes, n_t = 2,000 real and 10-1,000 synthetic images, second order. The
paper's generator is width 64 (Fig. 7) and its feature networks FRePo's width 128.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.meta_glyphs import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config("tfds:imagenet_resized/32x32")
    c.generator.width = 64
    c.feature.width = 128
    c.checkpoint_every = 1000
    c.log_every = 50
    return c
