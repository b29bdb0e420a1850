r"""Seconds per meta step (Alg. 1) against the same number of adaptation steps, on this machine.

    python -m experiments.benchmarks.meta_step --config=experiments/configs/meta_glyphs.py:cpu \
        --config.meta.inner_steps=2 --out=results/benchmarks/meta_step_cpu.json

For each order (``--orders``: first and/or second) and each loop of
:func:`mgdd_jax.meta.make_meta_step` (``--loops``: ``unrolled``, the CPU default, and
``scan``, the lax.scan + vmap path that was the only one before), reports the compile time,
the median step time over ``--steps`` runs (``--scan_steps`` for the slow ``scan`` loop),
XLA's cost-analysis GFLOPs of the step and the achieved GFLOP/s. Next to them, the time of
T+1 adaptation-sized steps (Eq. 1 loss + gradient w.r.t. the generator,
:func:`mgdd_jax.objective.generator_krr_loss`, at n_t = ``num_real``, n_s = ``max_synthetic``,
the same widths): ``ratio_to_adapt_steps`` = step time / that (a first-order meta step is
T+1 such gradients plus the Eq. 3 features, so about 1 is the floor). The machine's load
average is recorded with every row (the CPU may be shared).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.benchmarks.common import machine_info
from experiments.configs.datasets import settings_for
from mgdd_jax import data, meta, meta_train, objective, outputs
from mgdd_jax import generator as gen_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Meta config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed meta steps per variant (after compiling).")
_SCAN_STEPS = flags.DEFINE_integer("scan_steps", 1, "Timed steps of the slow 'scan' loop.")
_OUT = flags.DEFINE_string("out", "results/benchmarks/meta_step_cpu.json", "JSON output.")
_ORDERS = flags.DEFINE_list("orders", ["first", "second"], "Of meta.ORDERS: first, second, reptile.")
_LOOPS = flags.DEFINE_list("loops", ["unrolled", "scan"], "make_meta_step loops to time.")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _gflops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    return float(ca.get("flops", 0.0)) / 1e9


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def time_adapt_steps(mcfg, gcfg, batch, repeats: int) -> dict:
    """T+1 Eq. 1 losses + gradients of the meta step's sizes (its inner steps and meta-test)."""
    x_t, y_t = jnp.asarray(batch["x_t"][0]), jnp.asarray(batch["y_t"][0])
    x_s, y_s = x_t[: mcfg.max_synthetic], y_t[: mcfg.max_synthetic]
    params = gen_lib.init_generator(jax.random.key(0), x_t.shape[1:], gcfg)

    def loss(p, xs, ys, xt, yt, k):
        return objective.generator_krr_loss(p, xs, ys, xt, yt, jnp.float32(3.0), k,
                                            gen_config=gcfg, feature=mcfg.feature, reg=mcfg.reg)

    args = (params, x_s, y_s, x_t, y_t, jax.random.key(3))
    compiled = jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    med, times = _median_time(lambda: compiled(*args), repeats)
    n = mcfg.inner_steps + 1
    return {"n_t": int(x_t.shape[0]), "n_s": int(x_s.shape[0]), "count": n,
            "seconds_one": med, "seconds": n * med, "gflops_one": _gflops(compiled),
            "times_one_s": times}


def time_variant(config, order: str, loop: str, ds, repeats: int) -> dict:
    mcfg = dataclasses.replace(meta_train.meta_config(config), order=order)
    gcfg = meta_train.gen_config(config, ds.channels)
    mesh = meta.task_mesh()
    params = gen_lib.init_generator(jax.random.key(0), ds.image_shape, gcfg)
    batch, keys = meta.step_inputs(jax.random.key(1), 0, ds.x_train, ds.y_train,
                                   ds.num_classes, mcfg)
    placed = meta.shard_batch(batch, mesh)
    step = meta.make_meta_step(gcfg, mcfg, mesh, loop=loop)
    t0 = time.perf_counter()
    compiled = step.lower(meta.init_meta_state(params, mcfg, mesh), placed, keys).compile()
    compile_s = time.perf_counter() - t0
    gflops = _gflops(compiled)
    losses = []

    def run():  # a fresh state each time (the step donates it); same inputs: same work
        state = meta.init_meta_state(params, mcfg, mesh)
        jax.block_until_ready(state)
        _, m = compiled(state, placed, keys)
        losses.append(m["meta_loss"])
        return m

    med, times = _median_time(run, repeats)
    adapt = time_adapt_steps(mcfg, gcfg, batch, max(3, repeats))
    row = {"order": order, "loop": loop, "inner_steps": mcfg.inner_steps,
           "tasks_per_step": mcfg.tasks_per_step, "num_real": mcfg.num_real,
           "max_synthetic": mcfg.max_synthetic, "compile_s": compile_s,
           "seconds_per_step": med, "step_times_s": times, "repeats": repeats,
           "gflops": gflops, "gflops_per_s": gflops / med,
           "meta_loss": float(losses[-1]), "adapt_steps": adapt,
           "ratio_to_adapt_steps": med / adapt["seconds"],
           "load_average_after": os.getloadavg(), "peak_rss_gib_so_far": _peak_rss_gib()}
    print(f"{order} order, loop={loop}: {med:.2f} s/step "
          f"(compile {compile_s:.0f} s), {gflops:.1f} GFLOP, {gflops / med:.1f} GFLOP/s; "
          f"{adapt['count']} adapt steps {adapt['seconds']:.2f} s -> ratio "
          f"{row['ratio_to_adapt_steps']:.2f}; load {os.getloadavg()[0]:.1f}", flush=True)
    return row


def main(argv):
    del argv
    cli.quiet_library_logs()
    config = _CONFIG.value
    row = settings_for(config.source)
    ds = data.load_dataset(config.source, data_dir=config.data_dir or None, zca=row["zca"])
    bad = set(_ORDERS.value) - set(meta.ORDERS) or set(_LOOPS.value) - set(meta.LOOPS)
    if bad:
        raise app.UsageError(f"unknown --orders/--loops values {sorted(bad)}")
    results = []
    for order in _ORDERS.value:
        for loop in _LOOPS.value:
            repeats = _SCAN_STEPS.value if loop == "scan" else _STEPS.value
            results.append(time_variant(config, order, loop, ds, repeats))
    outputs.write_json(_OUT.value, {
        "device": str(jax.devices()[0]), "machine": machine_info(),
        "load_average_start_end": os.getloadavg(), "config": config.to_dict(),
        "results": results,
        "note": "loop=scan is the pre-issue-8 path (lax.scan inner loop, vmap over tasks); "
                "XLA's cost analysis counts a while-loop body once, so the scan rows' gflops "
                "(and GFLOP/s) undercount the T inner steps; peak RSS is of the whole "
                "process, cumulative"})
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
