"""What every launcher shares; it lives in the package (:mod:`mgdd_jax.cli.common`)."""

from mgdd_jax.cli.common import *  # noqa: F401,F403
