"""The instrument a meta run is judged by: a fixed validation bank scored after K adaptation steps.

A meta generator is good when *adapting* from it is short (MGDD Sec. 3.3, Fig. 4), so its
training loss (the meta-test loss of Alg. 1 l. 17, one noisy task per draw) says little. The
bank says it directly:

* **Fixed tasks** (:func:`make_bank`): ``ValConfig.tasks`` tasks drawn once from
  ``ValConfig.seed`` alone (not the run's seed or step), with the run's class and size ranges:
  fixed classes, real batch 𝒯, one initial set X_s of one size drawn from images *outside* 𝒯,
  the label network θ and the θ* keys. The same bank for every variant of a comparison.
* **Score** (:func:`make_scorer`): from the generator ω, ``ValConfig.steps`` = K steps of
  the update adaptation makes (Alg. 2 l. 9-12: Adam at adaptation's learning rate, a fresh
  θ* per step, Eq. 3 labels, the one generator objective), then the Eq. 1 loss of the adapted
  generator averaged over ``eval_draws`` further θ* draws.
* **Against the identity** (:func:`bank_score`): the same for the fresh (identity-at-init)
  generator. ``val_gap = score(ω) - score(identity)`` < 0 means adapting from ω for K
  steps reaches a lower loss than adapting a fresh generator for K steps.

:func:`mgdd_jax.meta_train.train` scores the bank every ``ValConfig.every`` steps and logs
``val_loss``, ``val_identity``, ``val_gap`` and ``val_ratio`` to ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgdd_jax import krr, meta, nets, objective, optim
from mgdd_jax.configs.keys import check_keys
from mgdd_jax.generator import GeneratorConfig, with_image_channels


@dataclasses.dataclass(frozen=True)
class ValConfig:
    """The validation bank (the meta-training config's subtree ``val``).

    Attributes:
      tasks: tasks in the bank (0: no validation).
      steps: K, adaptation steps from ω before the loss is read.
      every: meta steps between scores (and at the run's first and last step).
      learning_rate: Adam's learning rate of those steps (adaptation's α, Tab. 7: 1e-4).
      b1, b2: their Adam moments.
      eval_draws: θ* draws the adapted generator's Eq. 1 loss is averaged over.
      seed: the bank's key (independent of the run's seed: variants share one bank).
      source: the dataset the bank's tasks come from; "" is the run's own source. Another
        name measures *transfer* (e.g. a target-like set while meta-training on glyphs): it
        is loaded at the run's image side, its tasks use the run's ranges clipped to its
        classes, and an RGB generator is scored on grey banks through fresh channel adaptors
        (:func:`mgdd_jax.generator.with_image_channels`, as adaptation loads it).
    """

    tasks: int
    steps: int
    every: int
    learning_rate: float
    b1: float
    b2: float
    eval_draws: int
    seed: int
    source: str

    def __post_init__(self):
        if self.tasks < 0 or self.steps < 0:
            raise ValueError(f"val.tasks and val.steps must be >= 0, got {self.tasks}, "
                             f"{self.steps}")
        if self.every < 1 or self.eval_draws < 1:
            raise ValueError(f"val.every and val.eval_draws must be >= 1, got {self.every}, "
                             f"{self.eval_draws}")
        if not self.learning_rate > 0:
            raise ValueError(f"val.learning_rate must be > 0, got {self.learning_rate}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"val.b1 and val.b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if not isinstance(self.source, str):
            raise ValueError(f"val.source must be a dataset name or '' (the run's source), got "
                             f"{self.source!r}")

    @classmethod
    def from_config(cls, val: Mapping[str, Any]) -> ValConfig:
        """From a config's ``val`` subtree (any mapping with exactly these keys)."""
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(val.keys(), names, "config.val",
                   "the val subtree sets every ValConfig field (there are no defaults), and no "
                   "other key")
        return cls(**{k: val[k] for k in names})

    @property
    def enabled(self) -> bool:
        return self.tasks > 0


def bank_task_config(config: meta.MetaConfig, num_classes: int | None = None
                     ) -> meta.MetaConfig:
    """The task sampler of the bank: the run's ranges (classes clipped to ``num_classes``, the
    bank source's), one fixed initial set from outside 𝒯."""
    hi = config.max_classes if num_classes is None else min(config.max_classes, num_classes)
    return dataclasses.replace(config, inner_steps=1, fixed_init=True, support="disjoint",
                               max_classes=hi, min_classes=min(config.min_classes, hi))


def make_bank(images: np.ndarray, labels: np.ndarray, num_classes: int,
              config: meta.MetaConfig, val: ValConfig) -> dict[str, np.ndarray]:
    """The fixed bank: ``val.tasks`` tasks stacked on a leading axis (host arrays).

    Each task holds ``x_t``, ``y_t`` (real batch), ``x_s`` (the initial set, padded),
    ``s_mask``, ``ipc`` and ``key`` (key data of θ, the K θ* and the evaluation θ*). A
    function of ``val.seed`` and the source only: deterministic.
    """
    if not val.enabled:
        raise ValueError("val.tasks is 0: there is no validation bank")
    cfg = dataclasses.replace(bank_task_config(config, num_classes), tasks_per_step=val.tasks)
    meta.check_source(labels, num_classes, cfg)
    key = jax.random.key(val.seed)
    batch = meta.sample_meta_batch(jax.random.fold_in(key, 0), images, labels, num_classes,
                                   cfg)
    rows = np.arange(val.tasks)
    x_s = batch["x_u"][rows[:, None], batch["s_idx"][:, 0]]
    return {"x_t": batch["x_t"], "y_t": batch["y_t"], "x_s": x_s,
            "s_mask": batch["s_mask"][:, 0], "ipc": batch["ipc"][:, 0],
            "key": meta.task_keys(jax.random.fold_in(key, 1), val.tasks)}


def make_scorer(gen_config: GeneratorConfig, config: meta.MetaConfig, val: ValConfig,
                bank_channels: int | None = None
                ) -> Callable[[Any, Mapping[str, Any]], jax.Array]:
    """The jitted ``score(params, task) -> loss`` of one bank task (module docstring).

    K steps of Adam (constant ``val.learning_rate``; Alg. 2 l. 12 over its first K of ~1000
    cosine steps) on the generator objective with Eq. 3 labels, in one ``lax.scan``; then
    the mean Eq. 1 loss over ``val.eval_draws`` θ* draws. ``gen_config`` is the run's
    generator; ``bank_channels`` (default: its own) those of the bank's images: when they
    differ, ω is scored through fresh channel adaptors.
    """
    feature = config.feature
    channels = gen_config.image_channels if bank_channels is None else bank_channels
    bank_gen = dataclasses.replace(gen_config, image_channels=channels)
    opt = optim.adam_cosine(val.learning_rate, max(val.steps, 1), 1.0, val.b1, val.b2)

    @jax.jit
    def score(params, task):
        task = jax.tree.map(jnp.asarray, task)
        k_theta, k_adapt, k_eval = jax.random.split(jax.random.wrap_key_data(task["key"]), 3)
        x_t, y_t, x_s, mask = task["x_t"], task["y_t"], task["x_s"], task["s_mask"]
        if bank_gen.image_channels != gen_config.image_channels:
            params = with_image_channels(params, x_t.shape[1:], bank_gen)
        theta = nets.init_feature_params(k_theta, x_t.shape[1:], feature)
        w_t = krr.target_weights(nets.conv_features(theta, x_t, feature), y_t, config.reg)
        y_s = objective.eq3_labels(theta, w_t, x_s, feature)

        def loss(p, k):
            return objective.generator_krr_loss(
                p, x_s, y_s, x_t, y_t, task["ipc"], k, gen_config=bank_gen,
                feature=feature, reg=config.reg, support_mask=mask)

        def step(carry, k):
            p, s = carry
            g = jax.grad(loss)(p, k)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (adapted, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                       jax.random.split(k_adapt, val.steps))
        draws = jax.random.split(k_eval, val.eval_draws)
        return jnp.mean(jnp.stack([loss(adapted, k) for k in draws]))

    return score


def local_copy(params: Any) -> Any:
    """One device's copy of replicated parameters (also of a multi-process mesh's)."""
    return jax.tree.map(
        lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, params)


def bank_score(score: Callable[[Any, Mapping[str, Any]], jax.Array], params: Any,
               bank: Mapping[str, np.ndarray]) -> float:
    """Mean post-K-step loss of ``params`` over the bank (one jitted call per task)."""
    params = local_copy(params)
    n = len(bank["key"])
    total = sum(score(params, {k: v[i] for k, v in bank.items()}) for i in range(n))
    return float(total) / n


def scores(value: float, identity: float) -> dict[str, float]:
    """The logged fields: ``val_loss``, ``val_identity``, ``val_gap``, ``val_ratio``."""
    return {"val_loss": value, "val_identity": identity, "val_gap": value - identity,
            "val_ratio": value / identity if identity else float("nan")}

