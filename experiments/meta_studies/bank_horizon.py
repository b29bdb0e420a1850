r"""A meta generator's validation-bank ratio at several adaptation horizons K (issue 10).

    python -m experiments.meta_studies.bank_horizon --config=experiments/configs/meta_sources.py:fractal \
        --meta_checkpoint=results/meta_studies/meta_sources_runs/fractal/checkpoints --horizons=0,20,100 \
        --out=results/meta_studies/fractal_source_bank_horizon

The bank of a run (``val``: its tasks, and ``val.source`` when set) scored as during
meta-training (:mod:`mgdd_jax.meta_val`), but after K = each of ``--horizons`` adaptation steps
instead of ``val.steps`` only, for the checkpoint and for the identity generator: does the
meta start's lead at the K it was judged by last, and is it behind before any step? Writes
``horizon.json`` and ``horizon.md`` (all at once); the checkpoint must fit the config's
generator.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.configs.datasets import settings_for
from mgdd_jax import checkpoint, meta_train, meta_val, outputs


def define_flags() -> None:
    """Defined by the launcher only (not at import: tests import this module with others)."""
    config_flags.DEFINE_config_file("config", None, "Meta-training config file.",
                                    lock_config=True)
    flags.DEFINE_string("meta_checkpoint", None, "Generator checkpoint directory.")
    flags.DEFINE_list("horizons", ["0", "20", "100"], "Adaptation steps K.")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")


def horizon_scores(prep: meta_train.Prepared, params, horizons: list[int]) -> list[dict]:
    """``val_*`` scores of ``params`` against the identity after each K of ``horizons``."""
    identity = meta_train.initial_params(prep)  # what the run's val_identity scored
    rows = []
    for k in horizons:
        val = dataclasses.replace(prep.val, steps=k)
        score = meta_val.make_scorer(prep.gen_config, prep.meta, val, prep.bank_channels)
        rows.append({"steps": k, **meta_val.scores(meta_val.bank_score(score, params, prep.bank),
                                                  meta_val.bank_score(score, identity,
                                                                      prep.bank))})
    return rows


def markdown(rows: list[dict], bank: str, checkpoint_dir: str) -> str:
    lines = ["| adaptation steps K | " + " | ".join(str(r["steps"]) for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for name, key in (("bank loss, meta start", "val_loss"),
                      ("bank loss, identity start", "val_identity"),
                      ("ratio meta / identity", "val_ratio")):
        lines.append(f"| {name} | " + " | ".join(f"{r[key]:.4f}" for r in rows) + " |")
    return "\n".join(lines) + (f"\n\nBank: {bank}; generator: {checkpoint_dir}. Below 1: "
                               "after K steps the meta start is ahead.\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    config = f.config
    if config is None or not f.meta_checkpoint or not f.out:
        raise app.UsageError("--config, --meta_checkpoint and --out are required")
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        horizons = [int(h) for h in f.horizons]
        if not horizons or min(horizons) < 0:
            raise ValueError(f"--horizons must be integers >= 0, got {f.horizons}")
        out = outputs.check_output_dir(f.out, overwrite=f.overwrite)
        if not config.val.tasks:
            raise ValueError("the config's val.tasks is 0: there is no bank to score")
        row = settings_for(config.source)
        with tempfile.TemporaryDirectory() as workdir:  # prepare wants one; nothing is written
            prep = meta_train.prepare(config, os.path.join(workdir, "w"), zca=row["zca"],
                                      default_image_size=row["image_size"])
        params, _ = checkpoint.load_generator(f.meta_checkpoint, prep.gen_config,
                                              prep.dataset.image_shape)
    rows = horizon_scores(prep, params, horizons)
    bank = config.val.source or config.source
    result = {"meta_checkpoint": f.meta_checkpoint, "bank_source": bank,
              "val": config.val.to_dict(), "horizons": rows}
    with outputs.atomic_dir(out) as tmp:
        outputs.write_json(os.path.join(tmp, "horizon.json"), result)
        outputs.write_text(os.path.join(tmp, "horizon.md"),
                           markdown(rows, bank, f.meta_checkpoint))
    print(markdown(rows, bank, f.meta_checkpoint))


if __name__ == "__main__":
    define_flags()
    app.run(main)
