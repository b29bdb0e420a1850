r"""``mgdd-jax reevaluate DIR``: train the protocol's networks on an exported set again.

    mgdd-jax reevaluate exports/fmnist_ipc10              # from images.npy: the recorded number
    mgdd-jax reevaluate exports/fmnist_ipc10 --from_png   # from the 8-bit PNGs

Reads only the folder written by ``mgdd-jax export`` (or ``Distiller.export``) and the
dataset's test split, loaded by the name and preprocessing in its ``protocol.json``; trains
with the protocol and key recorded there (:func:`mgdd_jax.export.reevaluate`). Prints the
accuracy next to the recorded one on stdout (``--json``: the whole result as JSON). Bad input
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from mgdd_jax.cli import common as cli
from mgdd_jax.cli.export import parse_flags

USAGE = "usage: mgdd-jax reevaluate DIR [--from_png] [--data_dir=DIR] [--json]"


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_bool("from_png", False, "Train on the 8-bit PNGs instead of images.npy.",
                      flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Where the dataset's files are (default: the run's).",
                        flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the whole result as JSON.", flag_values=fv)


def main(argv: list[str]) -> dict:
    """Run the command; returns :func:`mgdd_jax.export.reevaluate`'s result."""
    from mgdd_jax import export

    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        fv, rest = parse_flags(argv, define_flags, __doc__)
        if len(rest) != 1:
            raise ValueError(f"give one exported folder, got {rest or 'none'}; {USAGE}")
        export.read_protocol(rest[0])  # a bad folder fails here, before any loading
        with cli.exit_on_failed_run(rest[0]):
            result = export.reevaluate(rest[0], from_png=fv.from_png, data_dir=fv.data_dir)
    if fv.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        print(f"{rest[0]}: {export.summary(result)}")
    return result


def launch(argv: list[str] | None = None) -> None:
    """``argv`` (default ``sys.argv``): the program name, the folder and the flags."""
    main(list(sys.argv if argv is None else argv))


if __name__ == "__main__":
    launch()
