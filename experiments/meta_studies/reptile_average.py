r"""Issue 30, item 3: long-horizon Reptile by averaging, from the searched start.

    python -m experiments.meta_studies.reptile_average --ipc=1 \
        --search=results/meta_studies/start_search_ipc1/search.json \
        --out=results/meta_studies/reptile_average_ipc1

From the start ω₀ of ``--search``'s winner (``mgdd_jax.start``: core ``core_seed``, scale s,
kernel multiplier m, learning rate α), ``--runs`` ordinary Alg. 2 adaptations (complete runs of
``--reptile_steps`` steps: Adam, α, cosine, the IPC's label mode) on the source tasks
``--train_tasks`` (grey glyph tasks of :mod:`experiments.meta_studies.start_search`; run i is
task ``train_tasks[i % len]`` with distilled-set seed ``seed_base + i``) give ω_i. Then:

1. **Agreement first.** The mean pairwise cosine of Δ_i = ω_i − ω₀, over all parameters and
   per top-level layer (:func:`mgdd_jax.start.delta_agreement`). The average is only moved
   along layers whose agreement reaches ``--agree_threshold`` (all of them when the whole
   vector does): elsewhere the mean of unrelated Δ_i is noise of size ‖Δ‖/√n.
2. **β by a 1-D search on held-out source tasks.** ω_β = ω₀ + β·mean_i Δ_i
   (:func:`mgdd_jax.start.reptile_average`) for each β of ``--betas`` (β = 0 is the start), each
   scored on ``--holdout_tasks`` × ``--holdout_seeds`` (accuracy after a complete run of
   ``--reptile_steps`` steps, ``--config.eval.num_seeds`` networks), the same runs for every β.

Resumable: each adaptation's ω_i is a generator checkpoint under ``runs/``, each held-out score a
JSON under ``scores/``. Writes ``reptile.json``, ``reptile.md``, ``reptile.png`` and the best
ω_β (``best/``, a ``--meta_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import numpy as np
from absl import app, flags

from experiments import cli, distill
from experiments.meta_studies import start_controls, start_search
from experiments.paper import adaptation_curve
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import api, checkpoint, labels, outputs, start


def _prepare(config, dataset: str, seed: int, lr: float):
    with config.unlocked():
        config.dataset, config.seed = dataset, seed
        config.adapt.learning_rate = lr
        config.overwrite, config.meta_checkpoint = True, ""
    with cli.exit_on_bad_input():
        return distill.prepare(config)


def adapted_run(prep, seed: int, omega0, steps: int):
    """ω_i: one complete Alg. 2 run of the prepared job ``prep`` (its data and rate) from
    ``omega0``, keyed by ``seed`` (as the main job adapts, single init)."""
    ds, fit = prep.dataset, prep.fit
    keys = api.job_keys(jax.random.key(seed))
    cfg = dataclasses.replace(fit.adapt, steps=steps, init_mode="single",
                              ipcs=(prep.ipcs[0],))
    label_model = labels.fit_label_model(keys["labels"], ds.x_train, ds.y_train,
                                         ds.num_classes, cfg.feature, reg=fit.label_reg,
                                         chunk_size=fit.label_chunk_size)
    res = adapt_lib.adapt(keys["adapt"], omega0, ds, label_model, fit.gen_config, cfg,
                          progress=False)
    return res.params


def main(argv):
    del argv
    cli.quiet_library_logs()
    f = flags.FLAGS
    with cli.exit_on_bad_input():
        config = distill.config_from_flags()
        with open(f.search) as fh:
            best = json.load(fh)
        _, core_seed, s, m, lr = start_controls.searched_start(f.search)
        if int(best["ipc"]) != int(config.ipc):
            raise ValueError(f"{f.search} was searched at IPC {best['ipc']}; run with "
                             f"--ipc={best['ipc']}")
        train_tasks = [int(t) for t in f.train_tasks]
        holdout = [int(t) for t in f.holdout_tasks]
        if set(train_tasks) & set(holdout):
            raise ValueError("--train_tasks and --holdout_tasks must be disjoint")
        betas = sorted({float(b) for b in f.betas} | {0.0})
        if f.runs < 2 or min(betas) < 0:
            raise ValueError("--runs must be >= 2 and --betas >= 0")
        out = outputs.check_resumable_out(config.out)
        tasks = start_search.make_tasks(f.task_dir, max(train_tasks + holdout) + 1, f.corpus)
    # the start, in this task family's image shape (run 0's job, reused by run 0)
    first = _prepare(config, tasks[train_tasks[0]], f.seed_base, lr)
    gen_config, image_shape = first.fit.gen_config, first.dataset.image_shape
    omega0 = start_search.family_start(core_seed, image_shape, gen_config, s, m)
    adapted = []
    for i in range(f.runs):
        run_dir = os.path.join(out, "runs", f"run{i}")
        t = train_tasks[i % len(train_tasks)]
        if checkpoint.latest_step(run_dir) is not None:
            adapted.append(checkpoint.load_generator(run_dir, gen_config, image_shape)[0])
            continue
        prep = first if i == 0 else _prepare(config, tasks[t], f.seed_base + i, lr)
        with cli.exit_on_failed_run(out):
            params = adapted_run(prep, f.seed_base + i, omega0, f.reptile_steps)
        checkpoint.save_generator(run_dir, f.reptile_steps, params, gen_config,
                                  {"task": tasks[t], "seed": f.seed_base + i})
        adapted.append(params)
        print(f"run {i} (task {t}) adapted", file=sys.stderr, flush=True)
    agreement = start.delta_agreement(omega0, adapted)
    if agreement["all"] >= f.agree_threshold:
        mask = None
    else:
        mask = {k: v >= f.agree_threshold for k, v in agreement.items() if k != "all"}
    scores_dir = os.path.join(out, "scores")
    os.makedirs(scores_dir, exist_ok=True)
    scores: dict[str, list[float]] = {}
    for beta in betas:
        omega = start.reptile_average(omega0, adapted, beta, mask=mask)
        scores[f"{beta:g}"] = []
        for t in holdout:
            for r in range(f.holdout_seeds):
                path = os.path.join(scores_dir, f"beta{beta:g}_task{t}_seed{r}.json")
                if os.path.exists(path):
                    with open(path) as fh:
                        scores[f"{beta:g}"].append(json.load(fh)["accuracy"])
                    continue
                prep = _prepare(config, tasks[t], f.holdout_seed_base + r, lr)
                with cli.exit_on_failed_run(out):
                    res = adaptation_curve.curve(
                        prep, [f.reptile_steps], schedule="complete", random_real=False,
                        extra_starts=lambda *_, omega=omega: {"w": omega}, fresh=False)
                acc = 100 * res["curves"]["w"]["points"][0]["mean"]
                outputs.write_json(path, {"accuracy": acc, "beta": beta, "task": tasks[t]})
                scores[f"{beta:g}"].append(acc)
                print(f"beta {beta:g} task {t} seed {r}: {acc:.2f}%", file=sys.stderr,
                      flush=True)
    means = {b: float(np.mean(v)) for b, v in scores.items()}
    base = np.asarray(scores["0"])
    best_beta = max(means, key=means.get)
    result = {"ipc": int(config.ipc), "start": best["best"], "core_seed": core_seed,
              "runs": f.runs, "reptile_steps": f.reptile_steps, "train_tasks": train_tasks,
              "holdout_tasks": holdout, "holdout_seeds": f.holdout_seeds,
              "agreement": agreement, "agree_threshold": f.agree_threshold,
              "mask": mask, "delta_rms": float(np.sqrt(np.mean(np.concatenate([
                  np.ravel(np.asarray(a) - np.asarray(b)) for a, b in zip(
                      jax.tree.leaves(adapted[0]), jax.tree.leaves(omega0))]) ** 2))),
              "scores": scores, "mean": means,
              # paired differences against β = 0 (same held-out runs)
              "vs_start": {b: start_controls.across_sets(list(np.asarray(v) - base))
                           for b, v in scores.items()},
              "best_beta": float(best_beta)}
    best_dir = os.path.join(out, "best")
    if checkpoint.latest_step(best_dir) is None:
        checkpoint.save_generator(best_dir, 0, start.reptile_average(
            omega0, adapted, float(best_beta), mask=mask), gen_config,
            {"reptile": {k: result[k] for k in ("start", "runs", "reptile_steps", "best_beta",
                                                "mask")}})
    cli.write_summary(out, "reptile", result, markdown, plot)


def markdown(result: dict) -> str:
    a = result["agreement"]
    lines = [f"# Long-horizon Reptile by averaging, IPC {result['ipc']}",
             "", f"Start: {result['start']['name']} (core seed {result['core_seed']}); "
             f"{result['runs']} complete runs of {result['reptile_steps']} steps on glyph "
             f"tasks {result['train_tasks']}; rms of one Δ_i: {result['delta_rms']:.4f}.",
             "", "Mean pairwise cosine of Δ_i:", "", "| layer | cosine |", "|---|---|"]
    lines += [f"| {k} | {v:+.3f} |" for k, v in a.items()]
    moved = ("every layer" if result["mask"] is None else
             ", ".join(k for k, v in result["mask"].items() if v) or "no layer")
    lines += ["", f"Moved: {moved} (threshold {result['agree_threshold']}).", "",
              f"Held-out tasks {result['holdout_tasks']} × {result['holdout_seeds']} seeds, "
              f"accuracy (%) after {result['reptile_steps']} steps:", "",
              "| β | mean | − start (paired) |", "|---|---|---|"]
    for b, v in result["mean"].items():
        d = result["vs_start"][b]
        lines.append(f"| {b} | {v:.2f} | {d['mean']:+.2f} ± {d['std']:.2f} |")
    lines += ["", f"Best β: {result['best_beta']:g}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    bs = sorted(result["vs_start"], key=float)
    ax.errorbar([float(b) for b in bs], [result["vs_start"][b]["mean"] for b in bs],
                yerr=[result["vs_start"][b]["std"] for b in bs], fmt="o-", capsize=3,
                label="ω₀ + β·mean Δ, minus the start")
    ax.axhline(0, color="gray", lw=1, ls=":")
    outputs.finish_line_plot(fig, ax, path, xlabel="β", ylabel="accuracy gain (points)",
                             title=f"Reptile by averaging, IPC {result['ipc']}, held-out tasks")


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_string("search", None, "start_search's search.json (its winner is ω₀).")
    flags.DEFINE_integer("runs", 16, "Adaptations averaged.")
    flags.DEFINE_integer("reptile_steps", 100, "Steps of each adaptation (complete runs).")
    flags.DEFINE_list("train_tasks", [str(t) for t in range(8)], "Source tasks averaged over.")
    flags.DEFINE_list("holdout_tasks", ["8", "9"], "Source tasks β is chosen on.")
    flags.DEFINE_integer("holdout_seeds", 2, "Distilled sets per held-out task.")
    flags.DEFINE_list("betas", ["0.5", "1", "2"], "Step sizes β (0, the start, is added).")
    flags.DEFINE_float("agree_threshold", 0.1, "Least mean pairwise cosine of a moved layer.")
    flags.DEFINE_integer("seed_base", 2000, "Run i's distilled-set seed is seed_base + i.")
    flags.DEFINE_integer("holdout_seed_base", 3000, "Held-out seeds start here.")
    flags.DEFINE_string("task_dir", "runs/start_search_tasks", "Where the tasks' npz live.")
    flags.DEFINE_string("corpus", start_search.CORPUS, "The glyph corpus of the tasks.")
    flags.mark_flag_as_required("search")
    app.run(main, argv=cli.with_config_names(sys.argv, distill.DEFAULT_CONFIG))
