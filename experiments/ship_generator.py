r"""Ship a generator: copy a checkpoint's parameters and generator config into package data.

    python -m experiments.ship_generator --checkpoint=runs/meta_shipped/checkpoints \
        --to=mgdd_jax/assets/meta_generator

Reads the latest (or ``--step``) step of any generator checkpoint (a meta-training workdir's
``checkpoints/``, a distill run's ``generator/``) and writes it again with
:func:`mgdd_jax.checkpoint.save_generator` under ``--to``: the parameters and the JSON meta
(generator config and the run's info) only, no optimiser state. The step number is kept, so
the shipped start says how many meta steps made it. ``--to`` must not exist yet.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags

from experiments import cli
from mgdd_jax import checkpoint
from mgdd_jax.generator import GeneratorConfig

flags.DEFINE_string("checkpoint", None, "A generator checkpoint directory.", required=True)
flags.DEFINE_string("to", None, "The new checkpoint directory (must not exist).", required=True)
flags.DEFINE_integer("step", None, "The step to ship (default: the latest).")


def main(argv: list[str]) -> None:
    del argv
    cli.quiet_library_logs()
    f = flags.FLAGS
    with cli.exit_on_bad_input():
        if os.path.exists(f.to):
            raise ValueError(f"--to={f.to} exists; remove it or choose another path.")
        step, meta = checkpoint.read_meta(f.checkpoint, f.step)
        config = GeneratorConfig.from_dict(meta["generator"])
        image_shape = (28, 28, config.image_channels)  # any size: fully convolutional
        params, _ = checkpoint.load_generator(f.checkpoint, config, image_shape, step=step,
                                              key=jax.random.key(0))
    checkpoint.save_generator(f.to, step, params, config, meta["info"], max_to_keep=None)
    print(f"wrote {f.to}/{step}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
