r"""The main job, from a checkout: ``python -m experiments.distill --dataset=... --out=...``.

It is the package's command :mod:`mgdd_jax.cli.distill` (``mgdd-jax distill`` or
``python -m mgdd_jax distill`` once installed); this module keeps the checkout's command and
the names the studies build on (``prepare``, ``execute``, ``Prepared``, ``define_flags``).
"""

from mgdd_jax.cli.distill import *  # noqa: F401,F403
from mgdd_jax.cli.distill import DEFAULT_CONFIG, launch  # noqa: F401

if __name__ == "__main__":
    launch()
