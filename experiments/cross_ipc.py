r"""MGDD Fig. 3: adapt once with multi-initialisation on some IPCs, then generate other IPCs.

    python -m experiments.cross_ipc --dataset=fashion_mnist --ipc=10,50 \
        --generate=1,5,10,20,30,50 --steps=1000 --out=results/cross_ipc_fmnist

The generator (from the config's ``meta_checkpoint``, default the shipped one) is adapted
with multi-initialisation over the ``--ipc`` sizes; every ``--generate`` IPC is then produced
by one forward pass of a fresh class-balanced initial set, with Eq. 3 labels (one-hot at
IPC 1), and evaluated; random real images of the same IPC are evaluated alongside. Writes
``cross_ipc.json`` and ``cross_ipc.png``.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
from absl import app, flags

from experiments import cli, distill
from mgdd_jax import api, data, evaluation, krr, outputs


def run(prep: distill.Prepared, generate: list[int]) -> dict:
    ds, config = prep.dataset, prep.config
    fit = dataclasses.replace(prep.fit, adapt=dataclasses.replace(
        prep.fit.adapt, init_mode="multi", ipcs=prep.ipcs))
    key = jax.random.key(config.seed)
    distiller = api.fit_dataset(ds, fit, key, progress=False)
    k_eval = api.job_keys(key)["eval"]
    c = ds.num_classes
    out = {"dataset": config.dataset, "adapted_on": list(prep.ipcs), "steps": fit.adapt.steps,
           "meta_checkpoint": fit.meta_checkpoint, "eval_protocol": prep.protocol.to_dict(),
           "device": str(jax.devices()[0]),
           "adapt_seconds": distiller.info["timing"]["adaptation_s"], "results": {}}
    for ipc in generate:
        x_init, l_init = distiller.initial_set(ipc)
        x_syn, y_syn = distiller.generate(ipc)
        k = jax.random.fold_in(k_eval, ipc)
        gen_res = evaluation.evaluate_synthetic(k, x_syn, y_syn, ds.x_test, ds.y_test,
                                              prep.protocol, num_classes=c, progress=False)
        real = evaluation.evaluate_synthetic(k, x_init, krr.centred_onehot(l_init, c), ds.x_test,
                                           ds.y_test, prep.protocol, num_classes=c,
                                           progress=False)
        out["results"][str(ipc)] = {
            "seen_in_adaptation": ipc in prep.ipcs,
            "generated": {k2: gen_res[k2] for k2 in ("mean", "std", "per_seed")},
            "random_real": {k2: real[k2] for k2 in ("mean", "std", "per_seed")}}
        print(f"IPC {ipc:3d} ({'seen' if ipc in prep.ipcs else 'unseen'}): generated "
              f"{100 * gen_res['mean']:.2f} ± {100 * gen_res['std']:.2f}%, random real "
              f"{100 * real['mean']:.2f} ± {100 * real['std']:.2f}%", file=sys.stderr, flush=True)
    return out


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    ipcs = sorted(int(k) for k in result["results"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, style, label in (("generated", "o-", "generator adapted on IPC "
                               + ",".join(map(str, result["adapted_on"]))),
                              ("random_real", "s--", "random real images")):
        vals = [result["results"][str(i)][key] for i in ipcs]
        ax.errorbar(ipcs, [100 * v["mean"] for v in vals], yerr=[100 * v["std"] for v in vals],
                    fmt=style, capsize=3, label=label)
    for i in result["adapted_on"]:
        ax.axvline(i, color="gray", lw=0.8, ls=":")
    outputs.finish_line_plot(
        fig, ax, path, xlabel="images per class (dotted: seen in adaptation)",
        ylabel="test accuracy (%)", title=f"{result['dataset']}: cross-IPC (cf. MGDD Fig. 3)")


def main(argv):
    del argv
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        prep = distill.prepare(distill.config_from_flags())
        generate = sorted({int(g) for g in flags.FLAGS.generate})
        for g in generate:
            data.check_per_class(prep.dataset, g, what="IPC (--generate)")
    with cli.exit_on_failed_run(prep.out):
        result = run(prep, generate)
    cli.write_result(prep.out, "cross_ipc", result, plot)


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_list("generate", ["1", "5", "10", "20", "30", "50"],
                      "IPCs to generate after adaptation.")
    app.run(main)
