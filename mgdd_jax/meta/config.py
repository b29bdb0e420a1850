"""Alg. 1's hyper-parameters (:class:`MetaConfig`) and the reading of stored ones.

A config's ``meta`` and ``feature`` subtrees become a :class:`MetaConfig`
(:meth:`MetaConfig.from_config`: exactly its fields, no defaults); a checkpoint's stored
``MetaConfig.to_dict`` is read back with :meth:`MetaConfig.from_dict`, which gives every field
added since the checkpoint was made the value that reproduces what its run did
(:data:`LEGACY_FIELDS`, :data:`ADDED_FIELDS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mgdd_jax import nets
from mgdd_jax.configs.keys import check_keys

ORDERS: tuple[str, ...] = ("second", "first", "reptile")
INNER_OPTS: tuple[str, ...] = ("sgd", "adam", "meta_sgd")
SUPPORTS: tuple[str, ...] = ("in_batch", "disjoint")
INITS: tuple[str, ...] = ("identity", "random")


# What runs made before those fields existed did (MetaConfig.from_dict).
LEGACY_FIELDS: dict[str, Any] = {"inner_opt": "sgd", "inner_b1": 0.9, "inner_b2": 0.999,
                                 "support": "in_batch", "fixed_init": False}
# Fields added later, with the value that reproduces what runs made before them did (every
# stored MetaConfig lacking them is read with these).
ADDED_FIELDS: dict[str, Any] = {"start_weight": 0.0, "init": "identity"}


def with_added_fields(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored :meth:`MetaConfig.to_dict` (or a part of it) with every :data:`ADDED_FIELDS`
    it lacks at its "as before" value: the one reading of runs made before a field existed."""
    return {**ADDED_FIELDS, **stored}


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Hyper-parameters of Alg. 1 (the paper's Tab. 7, meta-learning stage).

    Every field is required: the values live in the config files only (a config with the
    subtrees ``meta`` and ``feature``: the library's :mod:`mgdd_jax.configs.meta`, whose
    ``base_config`` is the paper's recipe, and the launcher's configs built on it), and
    :func:`from_config` builds this from those two subtrees.

    Attributes:
      steps: meta-testing iterations T' (outer steps; also the cosine schedule's length).
      inner_steps: meta-training steps T per task.
      inner_lr: α, SGD learning rate of the inner loop.
      outer_lr: β, Adam learning rate of the meta update.
      final_lr_fraction: η, the cosine schedule's final fraction of β.
      b1, b2: Adam moments.
      min_classes, max_classes: the class subset's size range.
      num_real: n_t, real images per task.
      min_synthetic, max_synthetic: synthetic-set size range (all classes together).
      order: how the meta-gradient is formed (:data:`ORDERS`): ``"second"`` differentiates
        the meta-test loss through the whole inner loop (MAML); ``"first"`` stops the
        gradient through the inner gradients (first-order MAML: the meta-test gradient at
        ω'); ``"reptile"`` uses ``ω - ω'`` (Reptile; the meta-test loss is only logged).
      inner_opt: the inner update (:data:`INNER_OPTS`): ``"sgd"`` (ω' ← ω' - α g, Alg. 1
        l. 16), ``"adam"`` (Adam at α from a fresh state, differentiated through: the
        update adaptation makes, Alg. 2 l. 12, so α = adaptation's learning rate moves ω' as
        far per step as adaptation does) or ``"meta_sgd"`` (Meta-SGD: ω' ← ω' - α ⊙ g with
        a learned per-parameter α, ``inner_lr`` everywhere at meta step 0; order first or
        second).
      inner_b1, inner_b2: the inner Adam's moments (``inner_opt="adam"``).
      start_weight: λ ≥ 0, the weight of the meta-test loss at ω itself (before any inner
        step, same initial set and θ*) added to the meta objective: ``L(ω') + λ L(ω)``, so
        the meta generator is also scored where adaptation starts. 0: Alg. 1 as written.
        With ``order="reptile"`` only 0 (``ω - ω'`` is not the gradient of a loss to add to).
      init: ω at meta step 0 (:data:`INITS`): ``"identity"``, the fresh generator
        (:func:`mgdd_jax.generator.init_generator`: zero-initialised output conv, so every
        other layer's gradient is small at the start), or ``"random"``, every conv kernel
        drawn (:func:`mgdd_jax.generator.random_generator`, the paper's "w/o Meta" start).
        The validation bank's reference stays the identity either way.
      support: where each initial set's images come from (:data:`SUPPORTS`):
        ``"in_batch"`` rows of the task's real batch 𝒯 (Alg. 1 as written: on average some
        targets are the supports themselves), ``"disjoint"`` images of the same classes
        outside 𝒯.
      fixed_init: one initial set (one size) for every inner step and the meta-test, as
        single-initialisation adaptation uses the generator; False: a new set and size per
        step (Alg. 1, multi-initialisation).
      reg: relative ridge of Eq. 1 and Eq. 3.
      feature: architecture of θ and θ*.
      tasks_per_step: tasks in one meta-batch (sharded over devices; a multiple of them).
      scan_unroll: ``unroll`` of the inner ``lax.scan`` (speed/compile-time trade-off only).
    """

    steps: int
    inner_steps: int
    inner_lr: float
    outer_lr: float
    final_lr_fraction: float
    b1: float
    b2: float
    min_classes: int
    max_classes: int
    num_real: int
    min_synthetic: int
    max_synthetic: int
    order: str
    inner_opt: str
    inner_b1: float
    inner_b2: float
    start_weight: float
    init: str
    support: str
    fixed_init: bool
    reg: float
    feature: nets.ConvNetConfig
    tasks_per_step: int
    scan_unroll: int

    def __post_init__(self):
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        if not 1 <= self.min_classes <= self.max_classes:
            raise ValueError(
                f"need 1 <= min_classes <= max_classes, got {self.min_classes}, "
                f"{self.max_classes}"
            )
        if not 1 <= self.min_synthetic <= self.max_synthetic:
            raise ValueError("need 1 <= min_synthetic <= max_synthetic")
        if self.num_real < self.max_classes:
            raise ValueError(
                f"num_real={self.num_real} cannot give every one of max_classes="
                f"{self.max_classes} classes an image"
            )
        if self.tasks_per_step < 1 or self.steps < 1:
            raise ValueError("tasks_per_step and steps must be >= 1")
        if not (self.inner_lr > 0 and self.outer_lr > 0 and self.reg > 0):
            raise ValueError("inner_lr, outer_lr and reg must be > 0")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"Adam's b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.scan_unroll < 1:
            raise ValueError(f"scan_unroll must be >= 1, got {self.scan_unroll}")
        for field, allowed in (("order", ORDERS), ("inner_opt", INNER_OPTS),
                               ("support", SUPPORTS), ("init", INITS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"meta.{field} must be one of {allowed}, got "
                                 f"{getattr(self, field)!r}")
        if not self.start_weight >= 0:
            raise ValueError(f"meta.start_weight must be >= 0, got {self.start_weight}")
        if self.inner_opt == "meta_sgd" and self.order == "reptile":
            raise ValueError("meta.inner_opt 'meta_sgd' needs order 'first' or 'second': "
                             "Reptile's ω - ω' gives its learned inner rates no gradient; set "
                             "--config.meta.order=first or another --config.meta.inner_opt")
        if self.start_weight and self.order == "reptile":
            raise ValueError("meta.start_weight needs order 'first' or 'second': Reptile's "
                             "ω - ω' is not a loss gradient to add λ ∇L(ω) to; set "
                             "--config.meta.start_weight=0 or another --config.meta.order")
        if not (0 <= self.inner_b1 < 1 and 0 <= self.inner_b2 < 1):
            raise ValueError(f"inner Adam's b1 and b2 must be in [0, 1), got {self.inner_b1}, "
                             f"{self.inner_b2}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetaConfig:
        """From :meth:`to_dict`'s output, also as stored by checkpoints that predate the
        ``order``/``inner_opt``/``support``/``fixed_init`` fields (their runs were Alg. 1 as
        written: SGD inner steps, supports from the real batch, a new set per step)."""
        d = dict(d)
        d["feature"] = nets.ConvNetConfig(**d["feature"])
        if "first_order" in d:
            d["order"] = "first" if d.pop("first_order") else "second"
            for k, v in LEGACY_FIELDS.items():
                d.setdefault(k, v)
        return cls(**with_added_fields(d))

    @classmethod
    def from_config(cls, meta: Mapping[str, Any], feature: Mapping[str, Any]) -> MetaConfig:
        """From a config's ``meta`` and ``feature`` subtrees (``config.meta``,
        ``config.feature``); any mapping with those keys works.

        Raises:
          ValueError: a missing or unknown field (naming it), or an invalid value.
        """
        names = [f.name for f in dataclasses.fields(cls) if f.name != "feature"]
        check_keys(meta.keys(), names, "config.meta",
                   "the meta subtree sets every MetaConfig field but feature (there are no "
                   "defaults), and no other key")
        try:
            feat = nets.ConvNetConfig(**feature)
        except TypeError as e:
            raise ValueError(f"bad feature config: {e}") from e
        return cls(**{k: meta[k] for k in names}, feature=feat)
