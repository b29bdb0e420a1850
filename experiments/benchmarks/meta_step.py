r"""Seconds per meta step (Alg. 1) and peak memory for a meta-training config, on this machine.

    python -m experiments.benchmarks.meta_step --config=experiments/configs/meta_glyphs.py:gpu \
        --steps=3 --out=results/bench/meta_step_cpu.json

Runs ``--steps`` meta steps after one compile step on the config's source and reports the
median step time, the compile time and the process's peak resident memory (``ru_maxrss``), for
second order and, with ``--also_first_order``, first order side by side.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.benchmarks.common import machine_info
from experiments.configs.datasets import settings_for
from mgdd_jax import data, meta, meta_train, outputs
from mgdd_jax import generator as gen_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Meta config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed meta steps (after the compile step).")
_OUT = flags.DEFINE_string("out", "results/bench/meta_step.json", "JSON output.")
_FO = flags.DEFINE_bool("also_first_order", True, "Also time the first-order variant.")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_variant(config, first_order: bool, ds) -> dict:
    mcfg = dataclasses.replace(meta_train.meta_config(config), first_order=first_order)
    gcfg = meta_train.gen_config(config, ds.channels)
    mesh = meta.task_mesh()
    step = meta.make_meta_step(gcfg, mcfg, mesh)
    state = meta.init_meta_state(gen_lib.init_generator(jax.random.key(0), ds.image_shape,
                                                        gcfg), mcfg, mesh)
    times = []
    for i in range(_STEPS.value + 1):
        k = jax.random.fold_in(jax.random.key(1), i)
        b = meta.sample_meta_batch(k, ds.x_train, ds.y_train, ds.num_classes, mcfg)
        t0 = time.perf_counter()
        state, m = step(state, meta.shard_batch(b, mesh), meta.task_keys(k, mcfg.tasks_per_step))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
        print(f"first_order={first_order} step {i}: {times[-1]:.2f}s "
              f"meta_loss={float(m['meta_loss']):.4f} peak RSS {_peak_rss_gib():.2f} GiB",
              flush=True)
    return {"first_order": first_order, "compile_and_first_step_s": times[0],
            "median_step_s": statistics.median(times[1:]), "step_times_s": times[1:],
            "peak_rss_gib_so_far": _peak_rss_gib()}


def main(argv):
    del argv
    cli.quiet_library_logs()
    config = _CONFIG.value
    row = settings_for(config.source)
    ds = data.load_dataset(config.source, data_dir=config.data_dir or None, zca=row["zca"])
    results = []
    for fo in ([True] if config.meta.first_order else [False, True] if _FO.value else [False]):
        results.append(time_variant(config, fo, ds))
    outputs.write_json(_OUT.value, {"machine": machine_info(), "config": config.to_dict(),
                                   "results": results,
                                   "note": "peak RSS is of the whole process, cumulative"})
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
