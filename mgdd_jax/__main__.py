"""``python -m mgdd_jax COMMAND [flags]``: the installed command line (:mod:`mgdd_jax.cli`)."""

from mgdd_jax.cli import main

main()
