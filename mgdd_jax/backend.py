"""The one place that picks a code path by backend (XLA:CPU against GPU/TPU).

Three choices depend on where the arrays live, and each is a speed choice only: the numbers
are the same either way, up to float rounding, and the parameters are the same pytrees.

* the convolution: :func:`mgdd_jax.conv.conv_general_dilated` (a custom VJP that writes the
  kernel gradient as shifted matmuls, faster on XLA:CPU) or the stock
  :func:`jax.lax.conv_general_dilated` (faster elsewhere, and it allows forward-mode AD);
* how the evaluation trains its seeds (:func:`mgdd_jax.evaluation.resolve_seeds`);
* how the meta step runs its inner loop (:func:`mgdd_jax.meta.resolve_loop`).
"""

from __future__ import annotations

import jax


def platform(backend: str | None = None) -> str:
    """``backend``, or JAX's default backend's platform name (``"cpu"``, ``"gpu"``, ``"tpu"``)."""
    return jax.default_backend() if backend is None else backend


def is_cpu(backend: str | None = None) -> bool:
    """Whether ``backend`` (default: JAX's default backend) is XLA:CPU."""
    return platform(backend) == "cpu"
