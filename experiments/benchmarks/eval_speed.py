r"""Wall time of one evaluation (train ``num_seeds`` networks, test them): per-seed loop vs batched.

    python -m experiments.benchmarks.eval_speed                      # cpu protocol, 2000 steps
    python -m experiments.benchmarks.eval_speed --steps=100 --repeats=3   # a quick measurement
    python -m experiments.benchmarks.eval_speed --network=alexnet --ipc=1 --steps=50 \
        --variants=loop,unrolled --out=results/benchmarks/eval_speed_cpu_alexnet.json

One fixed 100-image Fashion-MNIST set (10 random real training images per class, centred
one-hot labels, the loader's standardisation) is evaluated with the ``cpu`` protocol
(``get_protocol("cpu", "fashion_mnist")``: width-32 ConvNet, no flips; ``--network`` another
architecture of Tab. 4) and 3 seeds against
the full test split, by :func:`mgdd_jax.evaluation.evaluate_synthetic` with each ``seeds=``
variant (``--variants``):

* ``loop``: the per-seed reference, one jitted call per training step (the old path);
* ``unrolled``: all seeds in one jitted device loop per chunk of steps, one copy of the step
  per seed in the loop body (the CPU default, ``seeds="auto"``);
* ``vmap``: the same loop with the seeds ``jax.vmap``-ped (the GPU default).

Every variant runs ``--warmup`` untimed evaluations first (compilation), then ``--repeats``
timed ones, interleaved round by round so that load from other processes hits them alike;
``seconds`` is the median (the test pass over the 10000 test images included). All variants
use the same key, so their accuracies should agree up to float rounding (``per_seed``,
``max_abs_diff_vs_loop``). ``--steps`` (0: the protocol's 2000) shortens the runs for a quick
timing; the steps used are recorded. The machine's load average is recorded per round.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import cli
from experiments.benchmarks.common import machine_info
from mgdd_jax import evaluation, krr, nets, outputs
from mgdd_jax.data import load_dataset

_OUT = flags.DEFINE_string("out", "results/benchmarks/eval_speed_cpu.json", "JSON output path.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed evaluations per variant (median).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed evaluations per variant first (compile).")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps (0: the protocol's, 2000 here).")
_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Networks per evaluation.")
_IPC = flags.DEFINE_integer("ipc", 10, "Real images per class in the evaluated set.")
_PROTOCOL = flags.DEFINE_string("protocol", "cpu", "Evaluation protocol name.")
_NETWORK = flags.DEFINE_enum("network", "convnet", list(nets.ARCHS),
                             "Evaluation architecture (the protocol's network, Tab. 4).")
_VARIANTS = flags.DEFINE_list("variants", ["loop", "unrolled", "vmap"],
                              "evaluate_synthetic seeds= modes; the first is the baseline.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (the set and the evaluation key).")

DATASET = "fashion_mnist"


def _fixed_set(ds, ipc: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``ipc`` random real training images per class, centred one-hot labels."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([
        rng.choice(np.flatnonzero(ds.y_train == c), ipc, replace=False)
        for c in range(ds.num_classes)
    ])
    y = krr.centred_onehot(jnp.asarray(ds.y_train[idx]), ds.num_classes)
    return ds.x_train[idx], np.asarray(y)


def main(argv):
    del argv
    cli.quiet_library_logs()
    ds = load_dataset(DATASET)
    x_syn, y_syn = _fixed_set(ds, _IPC.value, _SEED.value)
    protocol = dataclasses.replace(evaluation.get_protocol(_PROTOCOL.value, DATASET),
                                   num_seeds=_SEEDS.value, network=_NETWORK.value)
    if _STEPS.value:
        protocol = dataclasses.replace(protocol, steps=_STEPS.value)
    steps = protocol.steps_for(x_syn.shape[0])
    variants = list(_VARIANTS.value)
    for v in variants:
        evaluation.resolve_seeds(v)  # refuse unknown names before any work
    key = jax.random.key(_SEED.value)

    def run(variant: str) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        result = evaluation.evaluate_synthetic(key, x_syn, y_syn, ds.x_test, ds.y_test,
                                               protocol, progress=False, seeds=variant)
        return time.perf_counter() - t0, result

    print(f"{protocol.name} protocol, {steps} steps, {x_syn.shape[0]} images, "
          f"{protocol.num_seeds} seeds, variants {variants}; load {os.getloadavg()}", flush=True)
    first: dict[str, float] = {}
    for v in variants:
        for w in range(_WARMUP.value):
            t, _ = run(v)
            first.setdefault(v, t)
            print(f"  warm-up {v}: {t:.1f}s (compile included)", flush=True)
    times: dict[str, list[float]] = {v: [] for v in variants}
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    loads = [list(os.getloadavg())]
    for r in range(_REPEATS.value):
        for v in variants:
            t, res = run(v)
            times[v].append(t)
            results[v].append(res)
            print(f"  round {r + 1}/{_REPEATS.value} {v}: {t:.1f}s, accuracy "
                  f"{100 * res['mean']:.2f} ± {100 * res['std']:.2f}%", flush=True)
        loads.append(list(os.getloadavg()))
    base = variants[0]
    base_median = statistics.median(times[base])
    base_acc = np.asarray(results[base][0]["per_seed"])
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        last = results[v][-1]
        rows.append({
            "variant": v,
            "seconds_median": med,
            "seconds": times[v],
            "first_call_s": first.get(v),
            "speedup_vs_" + base: base_median / med,
            "seconds_per_step_per_seed": med / steps / protocol.num_seeds,
            "accuracy_mean": last["mean"],
            "accuracy_std": last["std"],
            "per_seed": last["per_seed"],
            "final_losses": last["final_losses"],
            "max_abs_diff_vs_" + base: float(np.max(np.abs(np.asarray(last["per_seed"])
                                                           - base_acc))),
            "same_result_every_repeat": all(r["per_seed"] == last["per_seed"]
                                            for r in results[v]),
        })
        print(f"{v}: median {med:.1f}s ({med / steps / protocol.num_seeds * 1e3:.1f} ms per "
              f"step and seed), x{base_median / med:.2f} vs {base}; accuracy "
              f"{100 * last['mean']:.2f} ± {100 * last['std']:.2f}% {last['per_seed']}",
              flush=True)
    outputs.write_json(_OUT.value, {
        "machine": machine_info(),
        "dataset": DATASET,
        "num_syn": int(x_syn.shape[0]),
        "num_test": int(ds.x_test.shape[0]),
        "steps": steps,
        "steps_flag": _STEPS.value,
        "protocol": protocol.to_dict(),
        "repeats": _REPEATS.value,
        "warmup": _WARMUP.value,
        "baseline": base,
        "results": rows,
        "load_average_per_round": loads,
        "note": ("seconds: wall time of evaluate_synthetic (training all seeds + testing on "
                 "the full test split), median of interleaved repeats after warm-up; "
                 "first_call_s includes compilation. The CPU is shared: load_average_per_round "
                 "(1/5/15 min) before the first round and after each round."),
    })
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
