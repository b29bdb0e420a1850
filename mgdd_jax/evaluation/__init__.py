"""Evaluate a synthetic set: train fresh networks on it, report test accuracy (mean ± std).

This is the evaluation of MGDD Sec. 4 ("for each setting, we report mean and standard
deviation over the accuracy of 3 networks initialized from scratch"), which follows FRePo's
protocol (Zhou et al., 2022); :mod:`~mgdd_jax.evaluation.protocol` lists FRePo's values and
what we do with each. Every result carries ``protocol.to_dict()``, so a number can always be
traced to the protocol that produced it.

The modules, one job each:

* :mod:`~mgdd_jax.evaluation.protocol`: :class:`EvalProtocol`, :data:`PROTOCOLS`,
  :func:`get_protocol` and the steps-by-size tables.
* :mod:`~mgdd_jax.evaluation.inputs`: the input checks (ValueError before any training).
* :mod:`~mgdd_jax.evaluation.step`: one network's training step and :func:`mse_loss`.
* :mod:`~mgdd_jax.evaluation.trainer`: the per-seed loop and :func:`train_on_synthetic`.
* :mod:`~mgdd_jax.evaluation.batched`: all seeds (and same-shape sets) per jitted call, the
  seed modes (:data:`SEED_MODES`, :func:`resolve_seeds`).
* :mod:`~mgdd_jax.evaluation.predict`: :func:`accuracy`.
* :mod:`~mgdd_jax.evaluation.evaluate`: :func:`evaluate_synthetic` and :func:`evaluate_many`.
"""

from mgdd_jax.evaluation.batched import SEED_MODES, resolve_seeds
from mgdd_jax.evaluation.evaluate import evaluate_many, evaluate_synthetic
from mgdd_jax.evaluation.predict import accuracy
from mgdd_jax.evaluation.protocol import (
    CPU_STEPS_TABLE,
    FREPO_STEPS_TABLE,
    PROTOCOLS,
    EvalProtocol,
    get_protocol,
)
from mgdd_jax.evaluation.step import ProgressArg, mse_loss
from mgdd_jax.evaluation.trainer import train_on_synthetic

__all__ = [
    "CPU_STEPS_TABLE",
    "FREPO_STEPS_TABLE",
    "PROTOCOLS",
    "SEED_MODES",
    "EvalProtocol",
    "ProgressArg",
    "accuracy",
    "evaluate_many",
    "evaluate_synthetic",
    "get_protocol",
    "mse_loss",
    "resolve_seeds",
    "train_on_synthetic",
]
