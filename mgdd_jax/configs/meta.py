r"""Config of meta-training (:func:`mgdd_jax.meta_train.prepare` and
:func:`~mgdd_jax.meta_train.train`): the library's defaults.

This file is the single source of the values: ``mgdd_jax.meta.MetaConfig`` has no defaults and
is built from the ``meta`` and ``feature`` subtrees (``mgdd_jax.meta_train.meta_config``).
Every field is a flag, e.g. ``--config.meta.inner_steps=3 --config.meta.order=first``;
``meta`` holds every hyper-parameter of Tab. 7's meta stage (``steps`` T', ``inner_steps`` T,
``inner_lr`` α, ``outer_lr`` β, ``final_lr_fraction`` η, ``b1``/``b2``, class, real and
synthetic ranges, ``order``, ``inner_opt``, ``start_weight``, ``init``, ``support``,
``fixed_init``, ``reg``; see
``mgdd_jax.meta.MetaConfig``), ``feature`` the networks θ, θ*, ``val`` the validation bank
(``mgdd_jax.meta_val.ValConfig``) a run is judged by, ``distributed`` the multi-host join
(``mgdd_jax.multihost.MultihostConfig``), and the run fields (source, seed, logging,
checkpoints, time budget).

* :func:`base_config` is Tab. 7's meta stage as written (200,000 steps, T = 5 SGD inner
  steps at α = 1e-4, β = 1e-5, second order, 10-100 classes, 2,000 real and 10-1,000
  synthetic images, one task per step) on a given source, with the generator and feature
  networks of ``mgdd_jax/configs/distill.py``'s cpu sizes (widths 32 and 64; the paper's are
  64 and 128): what every meta-training config starts from (the lab's
  ``experiments/configs/meta_*.py`` recipes too).
* :func:`get_config` sizes it; the argument after the colon is the variant: ``gpu``
  (default; Tab. 7 but narrower tasks: up to 50 classes, 500 real and 250 synthetic
  images), ``cpu`` (first-order, small tasks: what a 2-core CPU can take), ``smoke`` (tiny
  widths and 4 steps: the whole loop in seconds, for tests). Its source is the glyph corpus
  (``glyphs``, :mod:`mgdd_jax.glyph_corpus`: disjoint from Fashion-MNIST and digits) unless
  ``source=`` says otherwise (``config.source`` / ``--config.source=...`` also does).

The generator architecture matches ``mgdd_jax/configs/distill.py``'s (width 32), so the
result loads as its ``--meta_checkpoint``.
"""

from __future__ import annotations

import ml_collections

from mgdd_jax import krr

VARIANTS = ("gpu", "cpu", "smoke")
DEFAULT_SOURCE = "glyphs"


def base_config(source: str) -> ml_collections.ConfigDict:
    """Tab. 7's meta stage as written (cpu network sizes), meta-training on ``source`` (a
    dataset name, as :func:`mgdd_jax.data.load_dataset` takes it)."""
    c = ml_collections.ConfigDict()
    c.source = source
    c.data_dir = ""
    c.image_size = 0  # 0: the source's own size
    c.seed = 0
    c.multihost = False  # one process per host, joined as `distributed` says (README)
    # jax.distributed.initialize's arguments (mgdd_jax.multihost.MultihostConfig); "", 0 and
    # -1 are detected on SLURM, Open MPI and Cloud TPU pods. The timeouts bound every wait:
    # for the other processes to join, for a silent (dead) process, at exit.
    c.distributed = ml_collections.ConfigDict(dict(
        coordinator_address="", num_processes=0, process_id=-1, initialization_timeout_s=300,
        heartbeat_timeout_s=100, shutdown_timeout_s=300))
    c.progress = True
    c.max_seconds = 0  # stop (with a checkpoint) after this many seconds of this run; 0: off
    c.log_every = 10
    c.checkpoint_every = 200
    c.keep_checkpoints = 3
    c.generator = ml_collections.ConfigDict(
        dict(width=32, double_width=False, norm="instance", embed_dim=32, embed_channels=16,
             core_channels=3, size_embedding=True))  # False: Fig. 3's ablation
    c.feature = ml_collections.ConfigDict(dict(width=64, depth=3, double_width=False,
                                               norm="instance", num_classes=10,
                                               arch="convnet"))
    c.meta = ml_collections.ConfigDict(dict(
        steps=200_000, inner_steps=5, inner_lr=1e-4, outer_lr=1e-5, final_lr_fraction=0.1,
        b1=0.9, b2=0.999, min_classes=10, max_classes=100, num_real=2000, min_synthetic=10,
        max_synthetic=1000, order="second", inner_opt="sgd", inner_b1=0.9, inner_b2=0.999,
        start_weight=0.0, init="identity", support="in_batch", fixed_init=False,
        reg=krr.DEFAULT_REG, tasks_per_step=1, scan_unroll=1))
    # The validation bank (mgdd_jax.meta_val): fixed tasks, scored after `steps` adaptation
    # steps (Adam at adaptation's learning rate) from ω and from the identity generator.
    c.val = ml_collections.ConfigDict(dict(tasks=4, steps=20, every=100, learning_rate=1e-4,
                                           b1=0.9, b2=0.999, eval_draws=4, seed=1234,
                                           source=""))  # "": the run's source
    return c


def get_config(arg: str | None = None, *,
               source: str = DEFAULT_SOURCE) -> ml_collections.ConfigDict:
    """The variant ``arg`` (:data:`VARIANTS`; default ``gpu``) of :func:`base_config`."""
    variant = arg or "gpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown meta config variant {variant!r}; choose from {VARIANTS}")
    c = base_config(source)
    if variant == "gpu":
        c.meta.update(steps=20_000, max_classes=50, num_real=500, max_synthetic=250,
                      outer_lr=1e-4)
    elif variant == "cpu":
        c.meta.update(steps=2_000, max_classes=20, num_real=200, max_synthetic=100,
                      order="first", outer_lr=1e-4)
        c.checkpoint_every = 50
    elif variant == "smoke":
        c.generator.update(width=4, embed_dim=8, embed_channels=2)
        c.feature.width = 4
        c.meta.update(steps=4, inner_steps=2, min_classes=2, max_classes=4, num_real=16,
                      min_synthetic=2, max_synthetic=8, inner_lr=1e-2, outer_lr=1e-3)
        c.val.update(tasks=2, steps=2, every=100, eval_draws=1)
        c.log_every = 1
        c.checkpoint_every = 2
        c.progress = False
    return c
