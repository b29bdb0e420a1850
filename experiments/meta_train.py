r"""Meta-train a generator with MGDD Alg. 1 (MAML); resumable, multi-device.

    python -m experiments.meta_train --config=experiments/configs/meta_glyphs.py \
        --workdir=runs/meta_glyphs
    python -m experiments.meta_train --config=experiments/configs/meta_imagenet.py \
        --workdir=runs/meta_imagenet          # the paper's recipe (GPU + prepared TFDS data)

A launcher only: flags, then :func:`mgdd_jax.meta_train.prepare` (bad input ends the run with
one line and exit status 2, before anything is written), then :func:`mgdd_jax.meta_train.train`
(see there for the workdir's files, resumption, SIGTERM and multi-host). Rerunning with the same
workdir resumes from its latest checkpoint; the workdir's ``checkpoints/`` is a valid
``--meta_checkpoint`` for ``experiments.distill``.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.configs.datasets import settings_for
from mgdd_jax import meta_train, multihost


def define_flags() -> None:
    """``--config`` and ``--workdir``; defined by the launcher only (not at import)."""
    config_flags.DEFINE_config_file("config", None, "Meta-training config file.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (resumes).")
    flags.DEFINE_integer("stop_after", None, "Stop (with a checkpoint) after this many meta "
                         "steps of this run; the schedule still spans meta.steps, and running "
                         "again resumes. A step budget, where max_seconds is a time budget.",
                         lower_bound=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if config is None or not workdir:
        raise app.UsageError("--config and --workdir are required")
    cli.quiet_library_logs()
    row = settings_for(config.source)
    try:
        with cli.exit_on_bad_input():
            prep = meta_train.prepare(config, workdir, zca=row["zca"],
                                      default_image_size=row["image_size"])
        result = meta_train.train(prep, stop_after=flags.FLAGS.stop_after)
    except multihost.PeerLostError as e:  # another process died
        # One line, no traceback, and no waiting at exit: jax's exit hook would wait for the
        # dead process at its shutdown barrier, then abort with a page of C++ log.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    print(f"meta-training stopped at step {result['step']} after {result['seconds']:.0f}s "
          f"({result['seconds_per_step']:.3f} s/step)", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
