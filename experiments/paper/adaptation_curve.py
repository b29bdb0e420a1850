r"""MGDD Fig. 4: test accuracy after 0..T adaptation steps, meta generator vs fresh generator.

    python -m experiments.paper.adaptation_curve --dataset=fashion_mnist --ipc=10 \
        --at=0,100,200,500,1000 --out=results/paper/adaptation_curve_fmnist_ipc10

Both starts use the same seed: the same label model, initial images, real batches and θ*
draws, and the same evaluation keys; only the generator's starting parameters differ (the
config's ``meta_checkpoint`` vs a fresh identity-at-init generator; the default config's is
empty since issue 30, so pass ``--meta_checkpoint=mgdd_jax/assets/meta_generator`` for the
shipped v2 meta generator).
Writes ``curve.json`` and ``curve.png``. Takes the distill config (``--config``, variants
cpu / paper / smoke) and its shorthands.

``--meta_at`` evaluates the meta start at other steps than ``--at`` (default: the same),
e.g. only up to 200 when the question is whether it reaches the fresh start's 1000-step
accuracy sooner.

``--scratch`` adds a third start, a *random* generator (the paper's "w/o Meta", Tab. 2 and
Fig. 4; :func:`mgdd_jax.generator.random_generator`, the benchmark's ``scratch``),
evaluated at ``--at``'s steps like the fresh one.

``--schedule`` says what a point at step N is. ``snapshots`` (default, as Fig. 4 plots it):
each start makes one run, ``max`` of its steps long, and is evaluated on the way (a point
before the end sits mid-cosine, at a high learning rate). ``complete``: every point is its own
run of N steps whose cosine ends at N, i.e. what a user who adapts for N steps gets; the
question "does N steps from the meta generator reach fresh's 1000-step accuracy" is asked
of those. The runs of one start share the seed, so they differ only in length.

    python -m experiments.paper.adaptation_curve --dataset='fashion_mnist#classes=5-9' --ipc=10 \
        --meta_checkpoint=results/meta_studies/mechanism_fomaml_fmnist_0-4_to_5-9_ipc10/meta_run/checkpoints \
        --at=0,50,100,200,1000 --meta_at=0,50,100,200 --schedule=complete \
        --out=results/meta_studies/mechanism_fomaml_fmnist_0-4_to_5-9_ipc10
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags

from experiments import cli, distill
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import api, checkpoint, data, evaluation, krr, labels, outputs
from mgdd_jax import generator as gen_lib

SCHEDULES = ("snapshots", "complete")


def curve(prep: distill.Prepared, at: list[int], meta_at: list[int] | None = None,
          schedule: str = "snapshots", scratch: bool = False,
          random_real: bool = True,
          extra_starts: Callable[[dict, data.Dataset, Any], dict[str, Any]] | None = None,
          fresh: bool = True) -> dict:
    """Fig. 4's curves (module docstring): accuracy after N adaptation steps, per start;
    ``random_real``: also evaluate the initial real images with one-hot labels;
    ``extra_starts(keys, dataset, fit)``: more starts ``{name: params}``, evaluated at ``at``
    like the fresh one (``keys``: the job's :func:`~mgdd_jax.job.job_keys`); ``fresh``: include
    the fresh start."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    ds, fit = prep.dataset, prep.fit
    config = prep.config
    ipc = prep.ipcs[0]
    steps_of = collections.defaultdict(lambda: at, meta=meta_at or at)
    adapt_cfg = dataclasses.replace(fit.adapt, steps=max(at), init_mode="single", ipcs=(ipc,))
    keys = api.job_keys(jax.random.key(config.seed))
    c = ds.num_classes
    label_model = labels.fit_label_model(keys["labels"], ds.x_train, ds.y_train, c,
                                         adapt_cfg.feature, reg=fit.label_reg,
                                         chunk_size=fit.label_chunk_size)
    starts = {}
    if fresh:
        starts["fresh"] = gen_lib.init_generator(keys["generator"], ds.image_shape,
                                                 fit.gen_config)
    if fit.meta_checkpoint:
        starts["meta"] = checkpoint.load_generator(fit.meta_checkpoint, fit.gen_config,
                                                   ds.image_shape, key=keys["generator"])[0]
    if scratch:
        starts["scratch"] = gen_lib.random_generator(keys["generator"], ds.image_shape,
                                                     fit.gen_config)
    if extra_starts is not None:
        starts.update(extra_starts(keys, ds, fit))
    result = {"dataset": config.dataset, "ipc": ipc, "at": at, "meta_at": steps_of["meta"],
              "schedule": schedule,
              "meta_checkpoint": fit.meta_checkpoint, "eval_protocol": prep.protocol.to_dict(),
              "device": str(jax.devices()[0]), "curves": {}}
    # The fixed initial set adapt() will use, known before adapting (so step 0 is evaluated).
    x_init, l_init = adapt_lib.single_init_set(keys["adapt"], ds, ipc)
    y_syn = labels.initial_labels(label_model, x_init, l_init, c, adapt_cfg.feature,
                                  adapt_cfg.label_mode, ipc)
    for name, params in starts.items():
        points = []

        def on_step(step, p, name=name, points=points):
            x_syn = gen_lib.generate(p, x_init, ipc, fit.gen_config)
            res = evaluation.evaluate_synthetic(keys["eval"], x_syn, y_syn, ds.x_test, ds.y_test,
                                              prep.protocol, num_classes=c, progress=False)
            points.append({"step": step, "mean": res["mean"], "std": res["std"],
                           "per_seed": res["per_seed"]})
            print(f"{name}: step {step}: {100 * res['mean']:.2f} ± {100 * res['std']:.2f}%",
                  file=sys.stderr, flush=True)

        # snapshots: one run, evaluated on the way; complete: one run per point (step 0 is
        # the start itself, no run)
        runs = ([steps_of[name]] if schedule == "snapshots" else
                [[n] for n in steps_of[name]])
        lengths, per_step = [], []
        for evaluate_at in runs:
            if max(evaluate_at) == 0:
                on_step(0, params)
                continue
            cfg = dataclasses.replace(adapt_cfg, steps=max(evaluate_at))
            res = adapt_lib.adapt(keys["adapt"], params, ds, label_model, fit.gen_config, cfg,
                                  progress=False, callback=on_step,
                                  callback_steps=evaluate_at)
            lengths.append(cfg.steps)
            per_step.append(res.seconds_per_step)
        result["curves"][name] = {"points": points, "adapt_steps": lengths,
                                  "seconds_per_step": max(per_step, default=0.0)}
    if not random_real:
        return result
    base = evaluation.evaluate_synthetic(keys["eval"], x_init, krr.centred_onehot(l_init, c),
                                       ds.x_test, ds.y_test, prep.protocol, num_classes=c,
                                       progress=False)
    result["random_real"] = {"mean": base["mean"], "std": base["std"],
                             "per_seed": base["per_seed"]}
    return result


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, style in (("meta", "o-"), ("fresh", "s--"), ("scratch", "^:")):
        if name not in result["curves"]:
            continue
        pts = result["curves"][name]["points"]
        ax.errorbar([p["step"] for p in pts], [100 * p["mean"] for p in pts],
                    yerr=[100 * p["std"] for p in pts], fmt=style, capsize=3,
                    label={"meta": "from the meta generator",
                           "fresh": "from a fresh generator (identity)",
                           "scratch": "from a random generator (w/o meta)"}[name])
    rr = result["random_real"]
    ax.axhline(100 * rr["mean"], color="gray", lw=1, ls=":", label="random real images")
    outputs.finish_line_plot(
        fig, ax, path, xlabel="adaptation steps", ylabel="test accuracy (%)",
        title=f"{result['dataset']}, IPC {result['ipc']} (cf. MGDD Fig. 4)")


def main(argv):
    del argv
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        prep = distill.prepare(distill.config_from_flags())
        at = sorted({int(a) for a in flags.FLAGS.at})
        meta_at = sorted({int(a) for a in flags.FLAGS.meta_at or flags.FLAGS.at})
        if not at or at[0] < 0 or meta_at[0] < 0:
            raise ValueError("--at and --meta_at must list non-negative steps")
    with cli.exit_on_failed_run(prep.out):
        result = curve(prep, at, meta_at, flags.FLAGS.schedule, flags.FLAGS.scratch)
    cli.write_result(prep.out, "curve", result, plot)


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_list("at", ["0", "100", "200", "500", "1000"], "Steps to evaluate at.")
    flags.DEFINE_list("meta_at", [], "Steps to evaluate the meta start at (default: --at).")
    flags.DEFINE_enum("schedule", "snapshots", list(SCHEDULES),
                      "snapshots: one run per start, evaluated on the way (Fig. 4); complete: "
                      "each point is its own run of that many steps (module docstring).")
    flags.DEFINE_bool("scratch", False, "Also adapt from a random generator (the paper's "
                      "'w/o Meta'), at --at's steps.")
    app.run(main, argv=cli.with_config_names(sys.argv, distill.DEFAULT_CONFIG))
