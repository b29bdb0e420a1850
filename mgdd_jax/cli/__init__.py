"""The installed command line: ``mgdd-jax COMMAND [flags]`` (or ``python -m mgdd_jax ...``).

Commands:

* ``distill``: the main job (:mod:`mgdd_jax.cli.distill`): Eq. 3 labels, Alg. 2 from the
  default start (a fresh generator, or ``--meta_checkpoint``), every requested IPC, evaluation. ``--config`` takes a built-in
  variant by name (``--config=smoke``, ``--config=paper``, ``--config=size=paper,eval=cpu``)
  or a config file (``--config=path.py:variant``); every field is ``--config.x=...``.
* ``export``: a run's set as a portable folder (:mod:`mgdd_jax.cli.export`,
  ``--run=DIR --ipc=K --to=DIR2``; docs/export.md).
* ``reevaluate``: train the protocol's networks on an exported folder again
  (:mod:`mgdd_jax.cli.reevaluate`, ``DIR [--from_png]``).

``mgdd-jax COMMAND --helpfull`` lists the flags.
"""

from __future__ import annotations

import sys

COMMANDS = ("distill", "export", "reevaluate")


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``argv[1]`` (default ``sys.argv``) to its command; exit 2 on a bad command."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = argv[1] if len(argv) > 1 else None
        print(f"usage: mgdd-jax {{{','.join(COMMANDS)}}} [flags]; "
              + (f"unknown command {given!r}" if given else "no command given")
              + " (mgdd-jax COMMAND --helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)
    import importlib

    command = importlib.import_module(f"mgdd_jax.cli.{argv[1]}")
    command.launch([f"mgdd-jax {argv[1]}", *argv[2:]])
