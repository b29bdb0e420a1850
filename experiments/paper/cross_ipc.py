r"""MGDD Fig. 3: adapt once with multi-initialisation on some IPCs, then generate other IPCs.

    python -m experiments.paper.cross_ipc --dataset=fashion_mnist --ipc=10,50 \
        --generate=1,5,10,20,30,50 --steps=1000 --out=results/paper/cross_ipc_fmnist

The generator (from the config's ``meta_checkpoint``: the default start, fresh since issue 30;
``--meta_checkpoint=mgdd_jax/assets/meta_generator`` for the shipped v2 one) is adapted
with multi-initialisation over the ``--ipc`` sizes; every ``--generate`` IPC is then produced
by one forward pass of a fresh class-balanced initial set, with Eq. 3 labels (one-hot at
IPC 1), and evaluated; random real images of the same IPC are evaluated alongside. Writes
``cross_ipc.json`` and ``cross_ipc.png``.

``--ablate_size_embedding`` is Fig. 3's yellow curve in the same run: a second generator,
identical but for ``generator.size_embedding=False`` (fed size 0 for every set), is adapted
with the same key and its sets are evaluated with the same evaluation keys
(``generated_no_size_embedding`` in the JSON):

    python -m experiments.paper.cross_ipc --dataset=fashion_mnist --ipc=10,20 \
        --generate=1,5,10,15,20 --steps=500 --ablate_size_embedding \
        --out=results/paper/cross_ipc_size_embedding_fmnist
"""

from __future__ import annotations

import dataclasses
import sys

import jax
from absl import app, flags

from experiments import cli, distill
from mgdd_jax import api, data, evaluation, krr, outputs


# The JSON keys of the curves and their plot labels, in plot order.
CURVES = {"generated": "generator adapted on IPC {seen}",
          "generated_no_size_embedding": "the same without size embedding (Fig. 3 ablation)",
          "random_real": "random real images"}


def check_ablation(prep: distill.Prepared, ablate_size_embedding: bool) -> None:
    """Bad input of ``--ablate_size_embedding``, before any work."""
    if ablate_size_embedding and not prep.fit.gen_config.size_embedding:
        raise ValueError("--ablate_size_embedding compares with and without the size "
                         "embedding; drop --config.generator.size_embedding=False")


def run(prep: distill.Prepared, generate: list[int], *,
        ablate_size_embedding: bool = False) -> dict:
    """Fig. 3: adapt once on ``prep.ipcs`` (multi-initialisation), evaluate every ``generate``
    IPC; with ``ablate_size_embedding``, also the same run without the size embedding.
    ``adapt_seconds`` maps each generator's curve key to its adaptation time."""
    ds, config = prep.dataset, prep.config
    fit = dataclasses.replace(prep.fit, adapt=dataclasses.replace(
        prep.fit.adapt, init_mode="multi", ipcs=prep.ipcs))
    check_ablation(prep, ablate_size_embedding)
    fits = {"generated": fit}
    if ablate_size_embedding:
        fits["generated_no_size_embedding"] = dataclasses.replace(
            fit, gen_config=dataclasses.replace(fit.gen_config, size_embedding=False))
    key = jax.random.key(config.seed)
    distillers = {name: api.fit_dataset(ds, f, key, progress=False) for name, f in fits.items()}
    k_eval = api.job_keys(key)["eval"]
    c = ds.num_classes
    out = {"dataset": config.dataset, "adapted_on": list(prep.ipcs), "steps": fit.adapt.steps,
           "meta_checkpoint": fit.meta_checkpoint, "eval_protocol": prep.protocol.to_dict(),
           "device": str(jax.devices()[0]),
           "adapt_seconds": {name: d.info["timing"]["adaptation_s"]
                             for name, d in distillers.items()},
           "results": {}}
    first = distillers["generated"]
    for ipc in generate:
        k = jax.random.fold_in(k_eval, ipc)
        x_init, l_init = first.initial_set(ipc)
        sets = {name: d.generate(ipc) for name, d in distillers.items()}
        sets["random_real"] = (x_init, krr.centred_onehot(l_init, c))
        row = {"seen_in_adaptation": ipc in prep.ipcs}
        for name, (x, y) in sets.items():
            res = evaluation.evaluate_synthetic(k, x, y, ds.x_test, ds.y_test, prep.protocol,
                                                num_classes=c, progress=False)
            row[name] = {k2: res[k2] for k2 in ("mean", "std", "per_seed")}
        out["results"][str(ipc)] = row
        print(f"IPC {ipc:3d} ({'seen' if row['seen_in_adaptation'] else 'unseen'}): " + ", ".join(
            f"{name} {100 * row[name]['mean']:.2f} ± {100 * row[name]['std']:.2f}%"
            for name in sets), file=sys.stderr, flush=True)
    return out


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    ipcs = sorted(int(k) for k in result["results"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    seen = ",".join(map(str, result["adapted_on"]))
    first = result["results"][str(ipcs[0])]
    for (key, label), style in zip(CURVES.items(), ("o-", "^-", "s--")):
        if key not in first:
            continue
        vals = [result["results"][str(i)][key] for i in ipcs]
        ax.errorbar(ipcs, [100 * v["mean"] for v in vals], yerr=[100 * v["std"] for v in vals],
                    fmt=style, capsize=3, label=label.format(seen=seen))
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
        check_ablation(prep, flags.FLAGS.ablate_size_embedding)
    with cli.exit_on_failed_run(prep.out):
        result = run(prep, generate,
                     ablate_size_embedding=flags.FLAGS.ablate_size_embedding)
    cli.write_result(prep.out, "cross_ipc", result, plot)


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_list("generate", ["1", "5", "10", "20", "30", "50"],
                      "IPCs to generate after adaptation.")
    flags.DEFINE_bool("ablate_size_embedding", False,
                      "Also adapt and evaluate the same generator without the size embedding "
                      "(Fig. 3's ablation), same keys.")
    app.run(main, argv=cli.with_config_names(sys.argv, distill.DEFAULT_CONFIG))
