r"""DC (gradient matching, Tab. 3) on flat against class-grouped batches: one step's time.

    python -m experiments.benchmarks.dc_step --out=results/benchmarks/dc_step_cpu.json

:func:`mgdd_jax.objective.dc_objective` gives the same value on both layouts of a side
(:func:`mgdd_jax.objective.group_by_class`). On the flat one it back-propagates each class's mean
loss through the whole batch (K backward passes of n rows); on the grouped one, each class only
through its own rows. Per IPC in ``--ipcs``, on the ``--config`` distill size (``cpu``: feature
width 64, real batch 512, generator width 32; 10 classes of 28×28×1 random images), it times,
side by side in one process with the repeats interleaved:

* ``generator``: MGDD w DC, the jitted loss + gradient w.r.t. the generator
  (:func:`mgdd_jax.objective.generator_loss`, the adaptation step's core);
* ``pixel``: pixel-space DC, the jitted loss + gradient w.r.t. the images (the pixel baseline's
  step core);

each with both sides flat and both grouped, and reports the median seconds, the speed-up, the
flat variant's cost-analysis GFLOPs (XLA counts a loop body once, so the grouped variant, a
``lax.map`` over classes, gets none), and the largest relative difference of the losses and
gradients.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import cli
from experiments.benchmarks.common import cost_flops, machine_info, median_interleaved
from mgdd_jax.configs import distill as distill_config
from mgdd_jax import adapt, krr, nets, objective, outputs
from mgdd_jax import generator as gen_lib


def define_flags() -> None:
    """Defined by the launcher only (not at import: tests import this module with others)."""
    flags.DEFINE_string("out", "results/benchmarks/dc_step_cpu.json", "JSON output path.")
    flags.DEFINE_string("config", "cpu", "Distill config size (cpu, paper, smoke).")
    flags.DEFINE_list("ipcs", ["1", "10"], "Images per class to measure.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median reported).")


IMAGE = (28, 28, 1)
NUM_CLASSES = 10


def _max_rel(a: Any, b: Any) -> float:
    """``max |a - b| / max |a|`` over all the leaves of two pytrees together (per leaf would
    divide by the ~0 gradients of conv biases before an instance norm)."""
    la = [np.asarray(x, np.float64) for x in jax.tree.leaves(a)]
    lb = [np.asarray(y, np.float64) for y in jax.tree.leaves(b)]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(la, lb, strict=True))
    return diff / max(max(float(np.max(np.abs(x))) for x in la), 1e-30)


def measure(size: str, ipc: int, repeats: int) -> list[dict[str, Any]]:
    c = distill_config.get_config(size)
    feature = nets.ConvNetConfig(**c.feature.to_dict(), num_classes=NUM_CLASSES)
    gen_config = gen_lib.GeneratorConfig(**c.generator.to_dict(), image_channels=IMAGE[-1])
    n_t, n_s = int(c.adapt.batch_size), ipc * NUM_CLASSES
    ks = jax.random.split(jax.random.key(ipc), 5)
    # Class-balanced sides in the samplers' layout: grouped by class, extras at the end.
    l_t = jnp.concatenate([jnp.repeat(jnp.arange(NUM_CLASSES), n_t // NUM_CLASSES),
                           jnp.arange(n_t % NUM_CLASSES)]).astype(jnp.int32)
    l_s = jnp.repeat(jnp.arange(NUM_CLASSES), ipc).astype(jnp.int32)
    real = objective.LabelledBatch(jax.random.uniform(ks[0], (n_t, *IMAGE)),
                                   krr.centred_onehot(l_t, NUM_CLASSES), l_t)
    syn = objective.LabelledBatch(jax.random.uniform(ks[1], (n_s, *IMAGE)),
                                  krr.centred_onehot(l_s, NUM_CLASSES), l_s)
    params = gen_lib.init_generator(ks[2], IMAGE, gen_config)
    leaves, tree = jax.tree.flatten(params)  # off the identity init: every layer has a gradient
    params = jax.tree.unflatten(tree, [p + 0.02 * jax.random.normal(k, p.shape) for p, k in
                                       zip(leaves, jax.random.split(ks[3], len(leaves)))])
    key, ipc_f = ks[4], jnp.float32(ipc)

    def arranged(s, grouped):
        return objective.arrange_for("dc", s, real, NUM_CLASSES) if grouped else (s, real)

    def gen_loss(p, grouped):
        s_, r_ = arranged(syn, grouped)
        return objective.generator_loss(p, s_, r_, ipc_f, key, gen_config=gen_config,
                                        feature=feature, reg=0.0, objective="dc")

    def pixel_loss(x, grouped):
        s_, r_ = arranged(syn._replace(x=x), grouped)
        return objective.dc_objective(s_, r_, key, feature=feature, reg=0.0)

    fns, outs, gflops = {}, {}, {}
    for target, loss, arg in (("generator", gen_loss, params), ("pixel", pixel_loss, syn.x)):
        for layout in ("flat", "grouped"):
            f = jax.jit(jax.value_and_grad(functools.partial(loss, grouped=layout == "grouped")))
            name = f"{target}/{layout}"
            if layout == "flat":  # XLA's cost analysis counts a loop body (lax.map) once
                gflops[name] = cost_flops(f, arg) / 1e9
            outs[name] = jax.block_until_ready(f(arg))
            fns[name] = functools.partial(f, arg)
            print(f"[ipc {ipc}] compiled {name}", flush=True)
    med = median_interleaved(fns, repeats)
    rows = []
    for target in ("generator", "pixel"):
        flat, grouped = f"{target}/flat", f"{target}/grouped"
        rows.append({
            "config": size, "ipc": ipc, "n_s": n_s, "n_t": n_t, "target": target,
            "seconds_flat": med[flat], "seconds_grouped": med[grouped],
            "speedup": med[flat] / med[grouped],
            "gflops_flat": gflops[flat],
            "loss_rel_diff": _max_rel(outs[flat][0], outs[grouped][0]),
            "grad_rel_diff": _max_rel(outs[flat][1], outs[grouped][1]),
        })
        r = rows[-1]
        print(f"[ipc {ipc}] {target}: flat {r['seconds_flat']:.3f} s, grouped "
              f"{r['seconds_grouped']:.3f} s (x{r['speedup']:.1f}); loss diff "
              f"{r['loss_rel_diff']:.1e}, grad diff {r['grad_rel_diff']:.1e}", flush=True)
    return rows


def main(argv):
    del argv
    f = flags.FLAGS
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():  # before any compile
        ipcs = adapt.parse_ipcs(",".join(f.ipcs), flag="ipcs")
        outputs.check_writable_dir(os.path.dirname(os.path.abspath(f.out)))
        distill_config.get_config(f.config)
        if f.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {f.repeats}")
    rows = [r for ipc in ipcs for r in measure(f.config, ipc, f.repeats)]
    outputs.write_json(f.out, {
        "machine": machine_info(), "repeats": f.repeats, "results": rows,
        "note": ("seconds_*: median wall time of the jitted DC loss + gradient (w.r.t. the "
                 "generator or the pixels), flat and class-grouped sides, repeats interleaved; "
                 "gflops_flat: XLA's cost analysis (none for grouped: it counts the "
                 "lax.map body once); *_rel_diff: max |flat - grouped| / max |flat| over all "
                 "leaves."),
    })
    print(f"wrote {f.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
