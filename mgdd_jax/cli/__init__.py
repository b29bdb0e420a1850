"""The installed command line: ``mgdd-jax COMMAND [flags]`` (or ``python -m mgdd_jax ...``).

Commands:

* ``distill``: the main job (:mod:`mgdd_jax.cli.distill`): Eq. 3 labels, Alg. 2 from the
  shipped meta generator, every requested IPC, evaluation. ``--config`` takes a built-in
  variant by name (``--config=smoke``, ``--config=paper``, ``--config=size=paper,eval=cpu``)
  or a config file (``--config=path.py:variant``); every field is ``--config.x=...``.

``mgdd-jax distill --helpfull`` lists the flags.
"""

from __future__ import annotations

import sys

COMMANDS = ("distill",)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``argv[1]`` (default ``sys.argv``) to its command; exit 2 on a bad command."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = argv[1] if len(argv) > 1 else None
        print(f"usage: mgdd-jax {{{','.join(COMMANDS)}}} [flags]; "
              + (f"unknown command {given!r}" if given else "no command given")
              + " (mgdd-jax distill --helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)
    from mgdd_jax.cli import distill

    distill.launch([f"mgdd-jax {argv[1]}", *argv[2:]])
