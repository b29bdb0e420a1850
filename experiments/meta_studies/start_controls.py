r"""Issue 30's controls: whole distillations repeated over R distilled-set seeds.

    python -m experiments.meta_studies.start_controls --dataset=fashion_mnist --ipc=1 --at=50,100,200 \
        --lrs=1e-4,3e-4,1e-3,3e-3 --sets=3 --meta_checkpoint= \
        --out=results/meta_studies/start_controls_fmnist_ipc1

Each *distilled set* r = 0..R-1 is a whole job with seed ``--seed + r``: its own label model θ,
initial real set, generator start and θ* stream (``api.job_keys``). For every adaptation
learning rate of ``--lrs`` and every step count of ``--at``, a *complete* run (its cosine
ends at that step, what a user who asks for N steps gets) is trained and its set evaluated by
the protocol's networks (3 by default). A cell reports the mean over sets of each set's
evaluation mean, and the std **across sets** (ddof=1): the run-to-run spread that decides
whether two starts differ, not the spread of evaluation networks on one set.

The starts are those of ``experiments.paper.adaptation_curve``: ``fresh`` (identity at step 0),
``meta`` (the config's ``meta_checkpoint``, when set) and ``scratch`` (``--scratch``).
Resumable per (learning rate, set): each finished cell is written to ``cells/`` at once, and
a rerun of the same command skips it. Writes ``controls.json``, ``controls.md``,
``controls.png``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from experiments import cli, distill
from experiments.paper import adaptation_curve
from mgdd_jax import outputs


def across_sets(per_set: list[float]) -> dict:
    """Mean and std (ddof=1; 0 for one set) of per-set accuracies, with the values."""
    v = np.asarray(per_set, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"across_sets needs a non-empty list of accuracies, got {per_set!r}")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "per_set": [float(a) for a in v]}


def summarise(cells: dict[str, dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """``{start: {lr: {step: across_sets(...)}}}`` from cells keyed ``"lr{lr}_set{r}"``, each
    an ``adaptation_curve.curve`` result."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in sorted(cells):
        lr = name.split("_set")[0][len("lr"):]
        for start, c in cells[name]["curves"].items():
            for p in c["points"]:
                table.setdefault(start, {}).setdefault(lr, {}).setdefault(
                    str(p["step"]), []).append(100 * p["mean"])
    return {s: {lr: {step: across_sets(v) for step, v in sorted(t.items(), key=lambda i:
                                                                 int(i[0]))}
                for lr, t in sorted(by_lr.items(), key=lambda i: float(i[0]))}
            for s, by_lr in table.items()}


def markdown(result: dict) -> str:
    steps = sorted({int(k) for s in result["table"].values() for t in s.values() for k in t})
    lines = [f"# {result['dataset']}, IPC {result['ipc']}: accuracy (%) after N steps, "
             f"complete runs, mean ± std across {result['sets']} distilled sets",
             "", "| start | α | " + " | ".join(str(s) for s in steps) + " |",
             "|---" * (len(steps) + 2) + "|"]
    for start, by_lr in result["table"].items():
        for lr, t in by_lr.items():
            row = [f"{t[str(s)]['mean']:.2f} ± {t[str(s)]['std']:.2f}" if str(s) in t else ""
                   for s in steps]
            lines.append(f"| {start} | {lr} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for start, by_lr in result["table"].items():
        for lr, t in by_lr.items():
            steps = sorted(int(s) for s in t)
            ax.errorbar(steps, [t[str(s)]["mean"] for s in steps],
                        yerr=[t[str(s)]["std"] for s in steps], fmt="o-", capsize=3,
                        label=f"{start}, α={lr}")
    outputs.finish_line_plot(
        fig, ax, path, xlabel="adaptation steps (complete runs)", ylabel="test accuracy (%)",
        title=f"{result['dataset']}, IPC {result['ipc']}, ± across {result['sets']} sets")


def main(argv):
    del argv
    cli.quiet_library_logs()
    f = flags.FLAGS
    with cli.exit_on_bad_input():
        config = distill.config_from_flags()
        at = sorted({int(a) for a in f.at})
        lrs = [float(a) for a in f.lrs]
        if not at or at[0] < 0 or not lrs or min(lrs) <= 0 or f.sets < 1:
            raise ValueError("--at must list steps >= 0, --lrs rates > 0, --sets >= 1")
        out = config.out
        outputs.check_resumable_out(out)
        cells_dir = os.path.join(out, "cells")
        os.makedirs(cells_dir, exist_ok=True)
    cells = {}
    base_seed = int(config.seed)
    for lr in lrs:
        for r in range(f.sets):
            name = f"lr{lr:g}_set{r}"
            path = os.path.join(cells_dir, name + ".json")
            if os.path.exists(path):
                with open(path) as fh:
                    cells[name] = json.load(fh)
                continue
            with config.unlocked():
                config.seed = base_seed + r
                config.adapt.learning_rate = lr
                config.overwrite = True
            with cli.exit_on_bad_input():
                prep = distill.prepare(config)
            with cli.exit_on_failed_run(out):
                cells[name] = adaptation_curve.curve(prep, at, schedule="complete",
                                                     scratch=f.scratch, random_real=False)
            outputs.write_json(path, cells[name])
            print(f"cell {name} done", file=sys.stderr, flush=True)
    ipc = next(iter(cells.values()))["ipc"]
    result = {"dataset": config.dataset, "ipc": ipc, "at": at, "lrs": lrs, "sets": f.sets,
              "base_seed": base_seed, "meta_checkpoint": config.meta_checkpoint,
              "table": summarise(cells)}
    # Each summary file is written atomically beside cells/ (the cells stay for reruns).
    outputs.write_json(os.path.join(out, "controls.json"), result)
    outputs.write_text(os.path.join(out, "controls.md"), markdown(result))
    plot(result, os.path.join(out, "controls.png"))
    print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_list("at", ["50", "100", "200"], "Step counts, each a complete run.")
    flags.DEFINE_list("lrs", ["1e-4"], "Adaptation learning rates α.")
    flags.DEFINE_integer("sets", 3, "Distilled sets R (seeds --seed .. --seed+R-1).")
    flags.DEFINE_bool("scratch", False, "Also adapt from a random generator.")
    app.run(main, argv=cli.with_config_names(sys.argv, distill.DEFAULT_CONFIG))
