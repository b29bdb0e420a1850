r"""``mgdd-jax export``: a run's distilled set as a portable folder (:mod:`mgdd_jax.export`).

    mgdd-jax export --run=runs/fmnist_ipc10 --ipc=10 --to=exports/fmnist_ipc10

Writes ``--to`` all at once or not at all: ``images/`` (PNGs), ``images.npy`` (the exact
float32 pixels), ``labels.npy``, ``labels.csv``, ``class_ids.npy``, ``protocol.json`` (the
preprocessing, the evaluation protocol and key, the recorded accuracy), ``zca.npy`` when the
data is ZCA-whitened, and ``README.txt`` (docs/export.md). A ``--to`` that already holds files
is refused unless ``--overwrite``. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags

from mgdd_jax.cli import common as cli


def parse_flags(argv: list[str], define: Callable[[flags.FlagValues], None],
                doc: str) -> tuple[flags.FlagValues, list[str]]:
    """Parse ``argv`` with a private set of flags (so a command can run twice in a process).

    ``--help`` prints ``doc`` and the flags and exits 0; an unknown or malformed flag raises
    ValueError (one line, exit status 2 under :func:`~mgdd_jax.cli.common.exit_on_bad_input`).
    Returns the flags and the positional arguments after the program name.
    """
    fv = flags.FlagValues()
    define(fv)
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        lines = [f"  --{name}: {fv[name].help}" for name in fv
                 if name not in ("flagfile", "undefok")]
        print(doc.strip() + "\n\nflags:\n" + "\n".join(lines))
        sys.exit(0)
    try:
        rest = fv(argv)
    except flags.Error as e:
        raise ValueError(f"{e} ({argv[0]} --help lists the flags)") from e
    return fv, rest[1:]


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("run", None, "The main job's --out directory.", flag_values=fv)
    flags.DEFINE_integer("ipc", None, "Which set: ipc{K}.npz (default the run's only one).",
                         flag_values=fv)
    flags.DEFINE_string("to", None, "The folder to write (all at once).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace a --to that already holds files.",
                      flag_values=fv)


def main(argv: list[str]) -> str:
    """Run the command; returns the folder written. Exit status 2 on bad input."""
    from mgdd_jax import export

    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        fv, rest = parse_flags(argv, define_flags, __doc__)
        if rest:
            raise ValueError(f"unexpected arguments {rest}; usage: mgdd-jax export --run=DIR "
                             "--ipc=K --to=DIR2 [--overwrite]")
        for name in ("run", "to"):
            if not fv[name].value:
                raise ValueError(f"--{name} is required; usage: mgdd-jax export --run=DIR "
                                 "--ipc=K --to=DIR2 [--overwrite]")
        out = export.export_set(fv.run, fv.ipc, fv.to, overwrite=fv.overwrite)
    print(f"wrote {out} (README.txt says how to load it)", file=sys.stderr)
    return out


def launch(argv: list[str] | None = None) -> None:
    """``argv`` (default ``sys.argv``): the program name, then the flags."""
    main(list(sys.argv if argv is None else argv))


if __name__ == "__main__":
    launch()
