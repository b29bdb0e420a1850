r"""Where the time of one adaptation step (Alg. 2) goes, against this machine's attainable peak.

    python -m experiments.benchmarks.adapt_step --out=results/benchmarks/adapt_step_cpu.json
    python -m experiments.benchmarks.adapt_step --configs=cpu,paper   # also the paper's sizes

Per distill config size (``cpu``: generator width 32, feature width 64, n_t = 512; ``paper``:
64, 128, 1024; n_s = 100 synthetic 28×28×1 images, Fashion-MNIST-like) and per convolution
implementation (``lax``: stock flax / XLA convs, the baseline; ``chunked``: ``mgdd_jax.conv``),
measured side by side in the same process:

* ``gflops``: XLA's cost analysis of the jitted Eq. 1 loss + gradient w.r.t. the generator;
* ``seconds_per_step``: median wall time of that jitted loss + gradient; also the whole jitted
  ``adapt.make_adapt_step`` (+ Eq. 3 labels + Adam) and a ``lax.scan`` of steps (the adaptation
  loop runs its steps in a scan, and XLA:CPU treats convs in loop bodies differently);
* ``peak_gflops_per_s``: a jitted float32 matmul (2048² and 4096², median of repeats, the best
  of the two), measured in the same run, and ``fraction_of_peak`` = achieved / peak;
* ``split``: median times of jitted sub-functions: θ* init, target features f_θ*(X_t),
  synthetic features + their input gradient, generator forward + backward, the KRR part
  (Eq. 1 loss + gradient w.r.t. the features: Gram matrices and the Cholesky solves);
  Each part also gets its own cost-analysis FLOPs and fraction of peak (``split_gflops``,
  ``split_fraction_of_peak``): the target features are XLA's own forward convolutions, so
  their fraction is what XLA's conv library attains on these shapes, a ceiling for the step;
* ``check``: the ``chunked`` loss and gradient against ``lax`` (max relative difference).

Timings are medians of ``--repeats`` calls after warm-up (compile excluded), with the variants
interleaved round by round so that load from other processes hits them alike.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import cli
from experiments.benchmarks.common import cost_flops, machine_info, median_interleaved
from mgdd_jax.configs import distill as distill_config
from mgdd_jax import adapt, conv, krr, labels, nets, objective, outputs
from mgdd_jax import generator as gen_lib

_OUT = flags.DEFINE_string("out", "results/benchmarks/adapt_step_cpu.json", "JSON output path.")
_CONFIGS = flags.DEFINE_list("configs", ["cpu"], "Distill config sizes to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per variant (median reported).")
_N_S = flags.DEFINE_integer("n_s", 100, "Synthetic images per step (IPC 10, 10 classes).")
_SCAN = flags.DEFINE_integer("scan_length", 3, "Steps per timed lax.scan (0: skip).")
_BASELINE = flags.DEFINE_bool("baseline", True, "Also time the stock lax/flax conv path.")

IMAGE = (28, 28, 1)
NUM_CLASSES = 10


def peak_matmul(repeats: int) -> dict[str, Any]:
    mm = jax.jit(jnp.matmul)
    out = {}
    for n in (2048, 4096):
        a = jax.random.normal(jax.random.key(n), (n, n), jnp.float32)
        t = median_interleaved({"mm": lambda a=a: mm(a, a)}, repeats)["mm"]
        out[str(n)] = {"seconds": t, "gflops_per_s": 2 * n**3 / t / 1e9}
    return {"by_size": out, "gflops_per_s": max(v["gflops_per_s"] for v in out.values())}


def _problem(size: str, n_s: int):
    c = distill_config.get_config(size)
    feature = nets.ConvNetConfig(**c.feature.to_dict(), num_classes=NUM_CLASSES)
    gen_config = gen_lib.GeneratorConfig(**c.generator.to_dict(), image_channels=IMAGE[-1])
    acfg = adapt.AdaptConfig.from_config(c.adapt.to_dict(), feature, (n_s // NUM_CLASSES,))
    n_t = acfg.batch_size
    ks = jax.random.split(jax.random.key(0), 8)
    x_t = jax.random.normal(ks[0], (n_t, *IMAGE))
    x_s = jax.random.normal(ks[1], (n_s, *IMAGE))
    l_t = jnp.arange(n_t) % NUM_CLASSES
    l_s = jnp.arange(n_s) % NUM_CLASSES
    params = gen_lib.init_generator(ks[2], IMAGE, gen_config)
    # Off the identity init (zero last conv), so that every layer has a gradient to compare.
    leaves, tree = jax.tree.flatten(params)
    params = jax.tree.unflatten(tree, [p + 0.02 * jax.random.normal(k, p.shape) for p, k in
                                       zip(leaves, jax.random.split(ks[3], len(leaves)))])
    theta = nets.init_feature_params(ks[4], IMAGE, feature)
    p = feature.feature_dim(IMAGE)
    label_model = labels.LabelModel(theta=theta, weights=0.01 * jax.random.normal(ks[5], (p, 10)))
    batch = {"x_t": x_t, "l_t": l_t, "x_s": x_s, "l_s": l_s, "ipc": jnp.float32(n_s // 10)}
    return {"config": c, "feature": feature, "gen_config": gen_config, "adapt": acfg,
            "params": params, "theta": theta, "label_model": label_model, "batch": batch,
            "key": ks[6], "y_s": krr.centred_onehot(l_s, NUM_CLASSES),
            "y_t": krr.centred_onehot(l_t, NUM_CLASSES)}


def _build(pb: dict, repeats_scan: int) -> dict[str, Any]:
    """Jitted callables of one variant (traced in the caller's conv.implementation)."""
    feature, gcfg, acfg, b = pb["feature"], pb["gen_config"], pb["adapt"], pb["batch"]
    ipc = b["ipc"]
    loss_fn = functools.partial(objective.generator_krr_loss, gen_config=gcfg, feature=feature,
                                reg=acfg.reg)
    args = (pb["params"], b["x_s"], pb["y_s"], b["x_t"], pb["y_t"], ipc, pb["key"])
    loss_grad = jax.jit(jax.value_and_grad(loss_fn))
    compiled = loss_grad.lower(*args).compile()
    t0 = time.perf_counter()
    out = jax.block_until_ready(loss_grad(*args))
    first_call = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost

    theta = pb["theta"]
    f_t = nets.conv_features(theta, b["x_t"], feature)
    x_gen = gen_lib.apply_generator(pb["params"], b["x_s"], ipc, gcfg)
    f_s = nets.conv_features(theta, x_gen, feature)
    init_theta = jax.jit(lambda k: nets.init_feature_params(k, IMAGE, feature))
    target = jax.jit(lambda th, x: nets.conv_features(th, x, feature))

    @jax.jit
    def synthetic(th, x, g):
        f, vjp = jax.vjp(lambda x: nets.conv_features(th, x, feature), x)
        return f, vjp(g)[0]

    @jax.jit
    def generator(p, x, g):
        y, vjp = jax.vjp(lambda p: gen_lib.apply_generator(p, x, ipc, gcfg), p)
        return y, vjp(g)[0]

    krr_part = jax.jit(jax.value_and_grad(
        lambda fs, ft: krr.krr_loss(fs, pb["y_s"], ft, pb["y_t"], acfg.reg)))

    step = adapt.make_adapt_step(gcfg, acfg, NUM_CLASSES)
    holder = {"state": adapt.init_adapt_state(pb["params"], acfg)}

    def full_step():
        holder["state"], m = step(holder["state"], pb["key"], pb["label_model"], b,
                                  onehot=False)
        return m

    parts = {
        "theta_init": (init_theta, (pb["key"],)),
        "target_features": (target, (theta, b["x_t"])),
        "synthetic_features_fwd_bwd": (synthetic, (theta, x_gen, f_s)),
        "generator_fwd_bwd": (generator, (pb["params"], b["x_s"], x_gen)),
        "krr_loss_and_grad": (krr_part, (f_s, f_t)),
    }
    fns = {"loss_and_grad": lambda: loss_grad(*args), "full_adapt_step": full_step}
    fns.update({name: functools.partial(f, *a) for name, (f, a) in parts.items()})
    part_gflops = {name: cost_flops(f, *a) / 1e9 for name, (f, a) in parts.items()}
    if repeats_scan:
        vg = jax.value_and_grad(loss_fn)

        @jax.jit
        def scanned(params):
            def body(p, i):
                loss, g = vg(p, b["x_s"], pb["y_s"], b["x_t"], pb["y_t"], ipc,
                             jax.random.fold_in(pb["key"], i))
                return jax.tree.map(lambda a, d: a - 1e-4 * d, p, g), loss
            return jax.lax.scan(body, params, jnp.arange(repeats_scan))

        fns["scan_per_step"] = lambda: scanned(pb["params"])
    return {"fns": fns, "out": out, "flops": float(cost["flops"]), "part_gflops": part_gflops,
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "compile_and_first_call_s": first_call}


def measure(size: str, impls: list[str], peak: float) -> list[dict[str, Any]]:
    pb = _problem(size, _N_S.value)
    built = {}
    for impl in impls:
        with conv.implementation(impl):
            built[impl] = _build(pb, _SCAN.value)
            for f in built[impl]["fns"].values():  # trace and compile inside the context
                jax.block_until_ready(f())
        print(f"[{size}] built {impl}", flush=True)
    # Interleave all variants' callables, round by round.
    flat = {(impl, name): f for impl in impls for name, f in built[impl]["fns"].items()}
    med = median_interleaved({f"{i}/{n}": f for (i, n), f in flat.items()}, _REPEATS.value)
    ref_loss, ref_grad = built[impls[0]]["out"]
    rows = []
    for impl in impls:
        t = {n: med[f"{impl}/{n}"] for n in built[impl]["fns"]}
        if "scan_per_step" in t:
            t["scan_per_step"] /= _SCAN.value
        loss, grad = built[impl]["out"]
        rel = max(float(jnp.max(jnp.abs(a - r)) / (jnp.max(jnp.abs(r)) + 1e-30))
                  for a, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)))
        gflops = built[impl]["flops"] / 1e9
        sec = t["loss_and_grad"]
        split = {k: t[k] for k in ("theta_init", "target_features", "synthetic_features_fwd_bwd",
                                   "generator_fwd_bwd", "krr_loss_and_grad")}
        rows.append({
            "config": size,
            "conv_implementation": impl,
            "baseline": impl == "lax",
            "device": str(jax.devices()[0]),
            "sizes": {"generator_width": pb["gen_config"].width,
                      "feature_width": pb["feature"].width, "feature_depth": pb["feature"].depth,
                      "feature_norm": pb["feature"].norm, "n_t": pb["adapt"].batch_size,
                      "n_s": _N_S.value, "image": list(IMAGE)},
            "gflops": gflops,
            "bytes_accessed_gb": built[impl]["bytes_accessed"] / 1e9,
            "seconds_per_step": sec,
            "achieved_gflops_per_s": gflops / sec,
            "peak_gflops_per_s": peak,
            "fraction_of_peak": gflops / sec / peak,
            "full_adapt_step_s": t["full_adapt_step"],
            "scan_seconds_per_step": t.get("scan_per_step"),
            "split_s": split,
            "split_sum_s": sum(split.values()),
            # Each part's own FLOPs and share of the peak: the target features are XLA's stock
            # forward convolutions (no custom code), i.e. what its conv library attains here.
            "split_gflops": built[impl]["part_gflops"],
            "split_fraction_of_peak": {
                k: built[impl]["part_gflops"][k] / split[k] / peak for k in split},
            "compile_and_first_call_s": built[impl]["compile_and_first_call_s"],
            "check_vs_" + impls[0]: {"loss": float(loss), "loss_ref": float(ref_loss),
                                     "grad_max_rel_diff": rel},
        })
        print(f"[{size}/{impl}] {gflops:.2f} GFLOP  loss+grad {sec*1e3:.0f} ms = "
              f"{gflops/sec:.0f} GFLOP/s = {100*gflops/sec/peak:.0f}% of peak; full step "
              f"{t['full_adapt_step']*1e3:.0f} ms; in scan {1e3*(t.get('scan_per_step') or 0):.0f}"
              f" ms/step; split " + ", ".join(f"{k} {v*1e3:.0f}" for k, v in split.items())
              + f" ms; grad rel diff {rel:.1e}", flush=True)
    return rows


def main(argv):
    del argv
    cli.quiet_library_logs()
    impls = ["lax", "chunked"] if _BASELINE.value else ["chunked"]
    peak = peak_matmul(max(5, _REPEATS.value))
    print(f"peak float32 matmul: {peak['gflops_per_s']:.0f} GFLOP/s", flush=True)
    rows = []
    for size in _CONFIGS.value:
        rows.extend(measure(size, impls, peak["gflops_per_s"]))
    peak_after = peak_matmul(max(5, _REPEATS.value))
    outputs.write_json(_OUT.value, {
        "machine": machine_info(), "peak_matmul": peak, "peak_matmul_after": peak_after,
        "repeats": _REPEATS.value, "results": rows,
        "note": ("seconds_per_step / gflops: the jitted Eq. 1 loss + generator gradient; "
                 "fraction_of_peak against the float32 matmul peak measured in the same run "
                 "(peak_matmul, before; peak_matmul_after, after). Timings are medians of "
                 "interleaved repeats; other processes on the machine inflate them alike."),
    })
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
