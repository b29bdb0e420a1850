"""mgdd-jax: fast dataset distillation with a meta generator (MGDD) in JAX/Flax.

The array-in, array-out entry points are re-exported here from :mod:`mgdd_jax.api`:
:func:`fit`, :class:`Distiller` (``generate``, ``save``), :func:`load`, :func:`evaluate` and
:func:`default_config`. The building blocks live in their modules (``krr``, ``nets``,
``generator``, ``labels``, ``objective``, ``adapt``, ``meta``, ``evaluation``, ``data``).
"""

__version__ = "0.1.0"

from mgdd_jax.api import Distiller, default_config, evaluate, fit, load  # noqa: E402

__all__ = ["Distiller", "__version__", "default_config", "evaluate", "fit", "load"]
