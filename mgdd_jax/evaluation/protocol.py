"""The evaluation protocol: how a synthetic set is evaluated, and the steps-by-size tables.

:class:`EvalProtocol` follows FRePo's protocol (Zhou et al., 2022; ``script/eval.py``,
``lib/datadistillation/frepo.py::proto_evaluate``, ``lib/training/{utils,metrics}.py`` and
``lib/dataset/augmax/export.py`` in github.com/yongchaoz/FRePo). FRePo's values, and what we
do with each:

* Network: the 3-block ConvNet of width 128 *without normalisation* (``eval.py`` maps
  ``normalization='batch'`` to ``'identity'``).
* Optimiser: Adam, peak learning rate 3e-4, linear warm-up from 0 over 500 steps, then cosine
  decay to 1% of the peak (``alpha=0.01``) at the last step. We keep these; when a run has fewer
  than 1000 steps the warm-up is cut to ``steps // 2`` (FRePo never ran fewer than 1000).
* Weight decay: ``eval.py`` passes ``weight_decay=3e-4``, but with ``optimizer='adam'`` it is
  built as ``optax.adam(lr)`` and silently ignored, so FRePo's numbers are *without* weight
  decay; our ``"frepo"`` protocol has ``weight_decay=0``. A positive value here is applied
  correctly: ``optax.adamw`` (decoupled, scaled by the learning rate) on conv / dense kernels
  only, not on biases.
* Loss: MSE on the stored (soft) labels, ``0.5 * sum over classes``, mean over the batch
  (``metrics.mean_squared_loss``); integer labels become centred one-hot (``onehot - 1/C``).
* Batch: ``min(n_syn, 500)``. FRePo reads the set in its stored order, cycling without
  shuffling; we draw a fresh random subset (without replacement) every step. With
  ``n_syn <= 500`` both are the whole set each step.
* Steps by set size: FRePo's table ``{10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000,
  1000: 10000, 2000: 40000, 5000: 40000}`` keyed by the exact number of images (any other size
  is a KeyError there). We look up the *smallest key >= n_syn* (sizes beyond 5000 use 40000), so
  FRePo's sizes get FRePo's steps. Note the table is not monotone: 200 images (e.g. Tiny
  ImageNet IPC 1, CIFAR-10 IPC 20) get 20000 steps, 400-500 images only 5000, and so sizes
  101-200 get 20000 under the ceiling rule. We keep the table verbatim for comparability;
  pass ``steps=`` (or another ``steps_table``) to override.
* Augmentation: every step, one of ``flip, color, crop, rotate, translate, cutout`` drawn
  uniformly and applied to the batch with per-sample parameters; no ``flip`` for MNIST and
  Fashion-MNIST (see :mod:`mgdd_jax.augment`).
* Evaluation: the final weights (no EMA), test batch 1000, full test split. FRePo ran 5
  networks (``num_eval=5``); MGDD reports 3, our default. ``std`` is the population standard
  deviation (``np.std``, ``ddof=0``), as FRePo computed it. Accuracies are fractions in [0, 1].
* Preprocessing is the caller's: test images must be preprocessed exactly like the synthetic
  ones (FRePo: ZCA for every data set except MNIST / Fashion-MNIST).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import optax

from mgdd_jax import augment as augment_lib
from mgdd_jax import nets
from mgdd_jax.data import settings as data_settings

FREPO_STEPS_TABLE: tuple[tuple[int, int], ...] = (
    (10, 1000),
    (100, 2000),
    (200, 20000),
    (400, 5000),
    (500, 5000),
    (1000, 10000),
    (2000, 40000),
    (5000, 40000),
)

# The "cpu" protocol's table: FRePo's steps capped at 2000 (1000 up to 10 images, 2000 above).
CPU_STEPS_TABLE: tuple[tuple[int, int], ...] = ((10, 1000), (100, 2000))


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How a synthetic set is evaluated. Saved (``to_dict``) with every result.

    Attributes:
      width, depth, norm, double_width: the evaluation ConvNet (:class:`nets.ConvNetConfig`
        fields; ``num_classes`` comes from the labels).
      network: the evaluation architecture, ``"convnet"`` or an unseen one of Tab. 4
        (``nets.ARCHS``: alexnet, vgg11, resnet18; width and depth apply to the ConvNet only).
      learning_rate: Adam peak learning rate.
      warmup_steps: linear warm-up from 0; cut to ``steps // 2`` for short runs.
      final_lr_fraction: the cosine decay ends at ``learning_rate * final_lr_fraction``.
      steps: training steps; ``None`` -> :meth:`steps_for` looks ``n_syn`` up in ``steps_table``.
      steps_table: ``((max_images, steps), ...)``, increasing ``max_images``.
      batch_size: the batch is ``min(n_syn, batch_size)`` images.
      augment: augmentation strategy (:func:`augment.make_augment`), ``"none"`` for none.
      weight_decay: decoupled weight decay on kernels (``optax.adamw``); 0 -> plain Adam.
      num_seeds: networks trained from scratch; the result is their mean ± std.
      test_batch_size: batch for computing test accuracy (no effect on the numbers).
      name: a label for the protocol (free text).
    """

    width: int = 128
    depth: int = 3
    norm: str = "none"
    double_width: bool = False
    learning_rate: float = 3e-4
    warmup_steps: int = 500
    final_lr_fraction: float = 0.01
    steps: int | None = None
    steps_table: tuple[tuple[int, int], ...] = FREPO_STEPS_TABLE
    batch_size: int = 500
    augment: str = augment_lib.FREPO_STRATEGY
    weight_decay: float = 0.0
    num_seeds: int = 3
    test_batch_size: int = 1000
    name: str = "custom"
    network: str = "convnet"

    def __post_init__(self):
        # JSON gives lists: store the table as a tuple of int pairs (hashable, comparable).
        table = tuple((int(k), int(v)) for k, v in self.steps_table)
        object.__setattr__(self, "steps_table", table)
        self.arch(1)  # validates width / depth / norm / network
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None (rule by set size), got {self.steps}")
        if not table:
            raise ValueError("steps_table must have at least one (max_images, steps) entry")
        sizes = [k for k, _ in table]
        if any(k < 1 or v < 1 for k, v in table) or sizes != sorted(set(sizes)):
            raise ValueError(
                f"steps_table must be ((max_images, steps), ...) with positive entries and "
                f"strictly increasing max_images, got {table}"
            )
        if self.batch_size < 1 or self.test_batch_size < 1:
            raise ValueError(
                f"batch_size and test_batch_size must be >= 1, got {self.batch_size}, "
                f"{self.test_batch_size}"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if self.num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")
        augment_lib.parse_strategy(self.augment)

    # -- derived quantities -------------------------------------------------------------------

    def arch(self, num_classes: int) -> nets.ConvNetConfig:
        """The evaluation network for ``num_classes`` classes."""
        return nets.ConvNetConfig(
            width=self.width,
            depth=self.depth,
            double_width=self.double_width,
            norm=self.norm,
            num_classes=num_classes,
            arch=self.network,
        )

    def steps_for(self, n_syn: int) -> int:
        """Training steps for a set of ``n_syn`` images.

        ``steps`` if set; otherwise the entry of ``steps_table`` with the smallest
        ``max_images >= n_syn`` (the last entry for larger sets). With FRePo's table a set of
        exactly one of FRePo's sizes gets FRePo's number of steps.
        """
        if n_syn < 1:
            raise ValueError(f"n_syn must be >= 1, got {n_syn}")
        if self.steps is not None:
            return self.steps
        for max_images, steps in self.steps_table:
            if n_syn <= max_images:
                return steps
        return self.steps_table[-1][1]

    def batch_for(self, n_syn: int) -> int:
        """Effective batch size ``min(n_syn, batch_size)``."""
        return min(n_syn, self.batch_size)

    def warmup_for(self, steps: int) -> int:
        """Warm-up length for a run of ``steps`` steps: ``min(warmup_steps, steps // 2)``."""
        return min(self.warmup_steps, steps // 2)

    def schedule(self, steps: int) -> optax.Schedule:
        """Linear warm-up from 0 to ``learning_rate``, cosine decay to the final fraction."""
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=self.learning_rate,
            warmup_steps=self.warmup_for(steps),
            decay_steps=steps,
            end_value=self.learning_rate * self.final_lr_fraction,
        )

    def optimizer(self, steps: int) -> optax.GradientTransformation:
        """Adam on the schedule; AdamW on kernels (ndim > 1) when ``weight_decay > 0``."""
        schedule = self.schedule(steps)
        if self.weight_decay == 0:
            return optax.adam(schedule)
        return optax.adamw(
            schedule,
            weight_decay=self.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        )

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the table as a list of ``[max_images, steps]``)."""
        d = dataclasses.asdict(self)
        d["steps_table"] = [list(entry) for entry in self.steps_table]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalProtocol:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they would be silently lost)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown EvalProtocol field(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(d))


PROTOCOLS: dict[str, EvalProtocol] = {
    # FRePo / MGDD: width 128, FRePo's steps table, flips (CIFAR, Tiny ImageNet, ...).
    "frepo": EvalProtocol(name="frepo"),
    # The same for MNIST-like data (FRePo's use_flip=False).
    "frepo_noflip": EvalProtocol(name="frepo_noflip", augment=augment_lib.FREPO_STRATEGY_NO_FLIP),
    # CPU-affordable: width 32 and FRePo's steps capped at 2000; everything else as "frepo".
    # Its accuracies are lower than "frepo"'s (README), so "cpu" numbers are for comparing
    # methods with each other, not with published FRePo / MGDD numbers.
    "cpu": EvalProtocol(name="cpu", width=32, steps_table=CPU_STEPS_TABLE),
}


def get_protocol(name: str, dataset: str | None = None) -> EvalProtocol:
    """``PROTOCOLS[name]``; with ``dataset`` (a loader name such as ``"fashion_mnist"`` or
    ``"tfds:mnist"``), without flips where the per-dataset table says so
    (:data:`mgdd_jax.data.settings.DATASET_SETTINGS`, FRePo's ``use_flip``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    if dataset is not None and not data_settings.settings_for(dataset).flip:
        strategy = augment_lib.without_flip(protocol.augment)
        if strategy != protocol.augment:
            protocol = dataclasses.replace(protocol, augment=strategy)
    return protocol


def resolve_protocol(protocol: EvalProtocol | str) -> EvalProtocol:
    """``protocol`` itself, or :func:`get_protocol` of a name; TypeError for anything else."""
    if isinstance(protocol, str):
        return get_protocol(protocol)
    if not isinstance(protocol, EvalProtocol):
        raise TypeError(f"protocol must be an EvalProtocol or a name, got {type(protocol)}")
    return protocol

