r"""Meta-train a generator with MGDD Alg. 1 (MAML); resumable, multi-device.

    python -m experiments.meta_train --config=experiments/configs/meta_glyphs.py \
        --workdir=runs/meta_glyphs
    python -m experiments.meta_train --config=experiments/configs/meta_imagenet.py \
        --workdir=runs/meta_imagenet          # the paper's recipe (GPU + prepared TFDS data)

The workdir holds ``config.json``, ``metrics.jsonl`` (one line per logged step),
``loss_curve.png`` and ``checkpoints/`` (orbax; each step has the generator ``params``, the
optimiser state ``opt_state`` and a JSON ``meta`` with the configs, so the workdir itself is a
valid ``--meta_checkpoint`` for ``experiments.distill``). Rerunning with the same workdir
resumes from the latest checkpoint; step ``i`` draws its tasks and networks from
``fold_in(key, i)``, so a resumed run continues the same random stream. SIGTERM (preemption)
saves the current step before exiting. ``--config.multihost=True`` calls
``jax.distributed.initialize()`` first (one process per host, as on TPU pods / SLURM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import exit_on_bad_input
from experiments.configs.datasets import settings_for
from mgdd_jax import checkpoint, data, meta, nets, outputs
from mgdd_jax import generator as gen_lib
from mgdd_jax.progress import Progress, stage


def define_flags() -> None:
    """``--config`` and ``--workdir``; defined by the launcher only (not at import)."""
    config_flags.DEFINE_config_file("config", None, "Meta-training config file.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (resumes).")


def meta_config(config: ml_collections.ConfigDict) -> meta.MetaConfig:
    d = config.meta.to_dict()
    d["feature"] = nets.ConvNetConfig(**config.feature.to_dict())
    return meta.MetaConfig(**d)


def _ckpt_meta(generator: gen_lib.GeneratorConfig, mcfg: meta.MetaConfig,
               config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"format": checkpoint.CHECKPOINT_FORMAT, "generator": generator.to_dict(),
            "info": {"kind": "meta", "source": config.source, "meta": mcfg.to_dict(),
                     "seed": config.seed}}


def _check_resume_compatible(mngr: ocp.CheckpointManager, step: int, expected: dict) -> None:
    stored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    for part, fields in (("generator", stored.get("generator")),
                         ("meta", stored.get("info", {}).get("meta"))):
        want = expected["generator"] if part == "generator" else expected["info"]["meta"]
        want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in want.items()}
        if fields != want:
            diff = sorted(k for k in set(want) | set(fields or {})
                          if (fields or {}).get(k) != want.get(k))
            raise checkpoint.CheckpointMismatchError(
                f"the workdir's checkpoint (step {step}) was made with another {part} config "
                f"(differs in {diff}); use a new --workdir or the original config")


def plot_loss_curve(rows: list[dict[str, Any]], path: str) -> None:
    plt = outputs.pyplot()
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, label in (("meta_loss", "meta-test loss (Alg. 1 l. 17)"),
                     ("inner_loss_first", "inner loss, first step"),
                     ("inner_loss_last", "inner loss, last step")):
        ax.plot(steps, [r[k] for r in rows], label=label, lw=1)
    outputs.finish_line_plot(fig, ax, path, xlabel="meta step", ylabel="Eq. 1 loss")


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) meta-training until ``config.meta.steps``.

    Args:
      config: the meta-training config.
      workdir: output and resume directory.
      stop_after: stop (with a checkpoint) after this many steps of *this* call; for tests
        of resumption and for time-boxed runs.

    Returns:
      ``{"step", "seconds", "seconds_per_step", "last_metrics"}``.
    """
    if config.multihost:
        jax.distributed.initialize()
    mcfg = meta_config(config)
    workdir = outputs.check_writable_dir(workdir)
    row = settings_for(config.source)
    ds = data.load_dataset(config.source, data_dir=config.data_dir or None, zca=row["zca"],
                           image_size=config.image_size or row["image_size"] or None)
    meta.check_source(ds.y_train, ds.num_classes, mcfg)
    generator = gen_lib.GeneratorConfig(**config.generator.to_dict(),
                                        image_channels=ds.channels)
    mesh = meta.task_mesh()
    expected_meta = _ckpt_meta(generator, mcfg, config)
    outputs.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    key = jax.random.key(config.seed)
    k_init, k_steps = jax.random.split(key)
    params = gen_lib.init_generator(k_init, ds.image_shape, generator)
    state = meta.init_meta_state(params, mcfg, mesh)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.checkpoint_every, max_to_keep=config.keep_checkpoints)
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options)
    start = mngr.latest_step() or 0
    if start:
        _check_resume_compatible(mngr, start, expected_meta)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = mngr.restore(start, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract["params"]),
            opt_state=ocp.args.StandardRestore(abstract["opt_state"])))
        state = meta.replicate({"params": restored["params"], "opt_state": restored["opt_state"],
                                "step": np.int32(start)}, mesh)
        stage(f"resumed from step {start} in {workdir}")

    step_fn = meta.make_meta_step(generator, mcfg, mesh)
    stop = {"signal": None}
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_sigterm)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    # Drop metric lines beyond the restored step (written after the last checkpoint).
    rows = [r for r in outputs.read_jsonl(metrics_path) if r["step"] <= start]
    with outputs.atomic_path(metrics_path, ".jsonl") as tmp:
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    def save(step: int, force: bool = False) -> None:
        mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            meta=ocp.args.JsonSave(expected_meta)), force=force)

    end = mcfg.steps if stop_after is None else min(mcfg.steps, start + stop_after)
    bar = Progress("meta", mcfg.steps, enabled=config.progress)
    t0 = time.perf_counter()
    t_after_first = None
    last: dict[str, float] = {}
    step = start
    try:
        for step in range(start, end):
            k = jax.random.fold_in(k_steps, step)
            k_batch, k_tasks = jax.random.split(k)
            batch = meta.sample_meta_batch(k_batch, ds.x_train, ds.y_train, ds.num_classes,
                                           mcfg)
            state, metrics = step_fn(state, meta.shard_batch(batch, mesh),
                                     meta.task_keys(k_tasks, mcfg.tasks_per_step))
            done = step + 1
            if done % config.log_every == 0 or done == end:
                last = {k2: float(v) for k2, v in jax.device_get(metrics).items()}
                if not np.isfinite(last["meta_loss"]):
                    raise FloatingPointError(
                        f"meta loss is {last['meta_loss']} at step {done}; lower "
                        "meta.outer_lr / meta.inner_lr or raise meta.reg")
                rec = {"step": done, "time_s": time.perf_counter() - t0, **last}
                outputs.append_jsonl(metrics_path, rec)
            save(done)
            bar.update(done, metrics)
            if t_after_first is None:
                jax.block_until_ready(state["step"])
                t_after_first = time.perf_counter()
            if stop["signal"] is not None:
                stage(f"SIGTERM at step {done}: saving and exiting")
                break
            if config.max_seconds and time.perf_counter() - t0 > config.max_seconds:
                stage(f"max_seconds={config.max_seconds} reached at step {done}: saving, exiting")
                break
        step = done if end > start else start
        if step not in mngr.all_steps():
            save(step, force=True)
        mngr.wait_until_finished()
    finally:
        signal.signal(signal.SIGTERM, previous)
        mngr.close()
    rows = outputs.read_jsonl(metrics_path)
    if rows:
        plot_loss_curve(rows, os.path.join(workdir, "loss_curve.png"))
    seconds = time.perf_counter() - t0
    n = step - start
    per_step = ((time.perf_counter() - t_after_first) / (n - 1)) if n > 1 else seconds
    result = {"step": step, "seconds": seconds, "seconds_per_step": per_step,
              "last_metrics": last, "preempted": stop["signal"] is not None,
              "device": str(jax.devices()[0]), "num_devices": jax.device_count()}
    outputs.write_json(os.path.join(workdir, f"run_until_step{step}.json"), result)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.config is None or not flags.FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    with exit_on_bad_input():
        result = train(flags.FLAGS.config, flags.FLAGS.workdir)
    print(f"meta-training stopped at step {result['step']} after {result['seconds']:.0f}s "
          f"({result['seconds_per_step']:.3f} s/step)", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
