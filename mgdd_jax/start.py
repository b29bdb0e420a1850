"""A low-dimensional family of starting points ω₀ for Alg. 2 (line 5), over a fixed random core.

The family is a few numbers on top of one random generator C (the *core*: every convolution
kernel drawn as :func:`mgdd_jax.generator.random_generator` draws it, the channel adaptors
kept at :func:`~mgdd_jax.generator.init_generator`'s fixed replicate / average maps):

* the **output-residual scale** ``s``. The generator is ``g(x) = x + A_out(r(A_in x))`` and
  ``r`` ends in the linear conv ``out``; multiplying its kernel and bias by ``s`` gives
  ``g_s(x) = x + s · A_out(r_C(A_in x))``. ``s = 0`` is exactly the identity map (the fresh
  start's function), ``s = 1`` the random core itself (the "w/o Meta" start with fixed
  adaptors).
* per-block **kernel multipliers** ``m_b``, one for each Conv→norm block (:data:`BLOCKS`).
  Under a per-sample norm the block's output does not change when its kernel is scaled (the
  norm divides the scale out, up to its ε), so the start's images are the same; but Adam's
  step does not depend on the gradient's scale, so a step of α moves ``W/m_b`` by α/m_b: the
  block's kernel adapts as if its learning rate were α/m_b (its norm parameters keep α). Free knobs that leave step 0 unchanged.

:func:`make_start` builds ω₀ from ``(s, m)``; the adaptation learning rate is the third number
of a start, kept with it by the caller (e.g. a per-IPC table in the config).
:func:`reptile_average` moves such a start by the mean displacement of whole Alg. 2
adaptations on source tasks (long-horizon Reptile), and :func:`delta_agreement` measures
whether those displacements agree at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp

from mgdd_jax import generator as gen_lib
from mgdd_jax.meta.step import gradient_agreement

# The Conv→norm→ReLU blocks of the generator (Fig. 7), encoder then decoder.
BLOCKS: tuple[str, ...] = ("enc0", "enc1", "enc2", "dec0", "dec1", "dec2")
# Norms under which a block's output is invariant to its kernel's scale.
SCALE_FREE_NORMS: tuple[str, ...] = ("instance", "layer")


def random_core(key: chex.PRNGKey, image_shape: tuple[int, int, int],
                config: gen_lib.GeneratorConfig) -> dict[str, Any]:
    """The core C: :func:`~mgdd_jax.generator.random_generator`'s kernels with the fixed
    channel adaptors of :func:`~mgdd_jax.generator.init_generator` (none when the image has
    the core's channels)."""
    params = gen_lib.random_generator(key, image_shape, config)
    return gen_lib.with_image_channels(params, image_shape, config, key)


def _check_multipliers(multipliers: Mapping[str, float] | None,
                       config: gen_lib.GeneratorConfig) -> dict[str, float]:
    m = dict(multipliers or {})
    unknown = sorted(set(m) - set(BLOCKS))
    if unknown:
        raise ValueError(f"kernel multipliers for unknown blocks {unknown}; the blocks are "
                         f"{BLOCKS}")
    bad = {b: v for b, v in m.items() if not (isinstance(v, (int, float)) and v > 0)}
    if bad:
        raise ValueError(f"kernel multipliers must be positive numbers, got {bad}")
    if any(v != 1 for v in m.values()) and config.norm not in SCALE_FREE_NORMS:
        raise ValueError(f"kernel multipliers leave the output unchanged only under a "
                         f"per-sample norm {SCALE_FREE_NORMS}; this generator has "
                         f"norm={config.norm!r}: use multipliers of 1")
    return m


def make_start(core: Mapping[str, Any], config: gen_lib.GeneratorConfig, *, scale: float,
               multipliers: Mapping[str, float] | None = None) -> dict[str, Any]:
    """ω₀ of the family: ``core`` with ``out`` × ``scale`` and block ``b``'s kernel × ``m_b``.

    Args:
      core: generator parameters, normally :func:`random_core`'s.
      config: the generator's architecture (its norm decides whether multipliers are allowed).
      scale: the output-residual scale ``s >= 0`` (0: the identity map; 1: the core).
      multipliers: ``{block: m_b}`` for blocks of :data:`BLOCKS` (missing ones are 1).

    Returns:
      New parameters; ``core`` is not changed.
    """
    if not isinstance(scale, (int, float)) or scale < 0:
        raise ValueError(f"scale must be a number >= 0, got {scale!r}")
    m = _check_multipliers(multipliers, config)
    missing = [b for b in ("out", *BLOCKS) if b not in core]
    if missing:
        raise ValueError(f"core lacks the generator layers {missing}; pass generator params")
    params = jax.tree.map(jnp.asarray, dict(core))
    params["out"] = jax.tree.map(lambda a: a * scale, params["out"])
    for block, factor in m.items():
        layer = dict(params[block])
        (conv_name,) = [k for k in layer if k.startswith("Conv")]
        layer[conv_name] = {**layer[conv_name],
                            "kernel": layer[conv_name]["kernel"] * factor}
        params[block] = layer
    return params


def reptile_average(start_params: Any, adapted: list[Any], beta: float,
                    mask: Mapping[str, bool] | None = None) -> Any:
    """Long-horizon Reptile by averaging (Nichol et al. 2018, batched): ω₀ + β·mean_i(ω_i − ω₀).

    ``adapted`` are the ends ω_i of ordinary Alg. 2 adaptations (lines 5-12) from
    ``start_params`` on source tasks; one call is one outer step with Reptile's meta-gradient
    mean_i(ω₀ − ω_i) and step size β (β = 1 moves ω₀ to the average adapted generator).
    ``mask`` (``{top-level layer: bool}``) restricts the move to the layers marked True (the
    others keep ω₀); layers not named are moved.
    """
    if not adapted:
        raise ValueError("reptile_average needs at least one adapted generator")
    if not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    structure = jax.tree.structure(start_params)
    for i, p in enumerate(adapted):
        if jax.tree.structure(p) != structure:
            raise ValueError(f"adapted generator {i} has another parameter tree than the start")
    unknown = sorted(set(mask or {}) - set(start_params))
    if unknown:
        raise ValueError(f"mask names layers {unknown} the generator does not have; its "
                         f"layers are {sorted(start_params)}")
    mean = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), axis=0), *adapted)
    moved = jax.tree.map(lambda w0, w: w0 + beta * (w - w0), start_params, mean)
    return {k: (moved[k] if (mask or {}).get(k, True) else start_params[k])
            for k in start_params}


def delta_agreement(start_params: Any, adapted: list[Any]) -> dict[str, float]:
    """Mean pairwise cosine of the displacements Δ_i = ω_i − ω₀, over all parameters
    (``"all"``) and per top-level layer: does Reptile's average point somewhere (≫ 0) or do
    the tasks pull in unrelated directions (≈ 0)? :func:`mgdd_jax.meta.step.gradient_agreement`
    on the stacked Δ_i."""
    n = len(adapted)
    if n < 2:
        raise ValueError(f"delta_agreement needs at least 2 adapted generators, got {n}")
    deltas = jax.tree.map(lambda w0, *w: jnp.stack(w) - w0, start_params, *adapted)
    result = {"all": float(gradient_agreement(deltas, n, axis_name=None))}
    for layer in sorted(deltas):
        result[layer] = float(gradient_agreement(deltas[layer], n, axis_name=None))
    return result
