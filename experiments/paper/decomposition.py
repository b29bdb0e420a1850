r"""Issue 31: where the gap to Tab. 12 comes from, one factor at a time from ``cpu`` to ``paper``.

    python -m experiments.paper.decomposition --dataset=fashion_mnist --ipc=1 --sets=3 \
        --out=results/paper/decomposition_fmnist_ipc1

Every *cell* is the fresh start adapted for ``--steps`` complete steps (Alg. 2) on ``--sets``
distilled sets (seed ``--seed + r``: its own θ, initial set and θ* stream), each evaluated by
the cell's protocol (3 networks), and reports the mean over sets ± the std across them
(:func:`experiments.meta_studies.start_controls.across_sets`). The factors (``--factors``,
names of :data:`FACTORS`) each change the base config (``--config``, ``cpu`` by default)
in one place:

* ``cpu``: the base itself;
* ``eval``: FRePo's width-128 evaluation protocol (``eval.protocol=frepo``);
* ``feature``: feature networks of width 128 (``feature.width``);
* ``n_t``: 1024 real images per step (``adapt.batch_size``);
* ``generator``: the paper-size generator (width 64);
* ``alpha``: Tab. 7's adaptation rate 1e-4 instead of the default 1e-3;
* ``paper``: every size factor and the evaluation at once (the ``paper`` preset).

Resumable per (factor, set): each finished cell is written to ``cells/`` at once and a rerun
skips it. Writes ``decomposition.json`` (``cells``: per factor the across-sets statistics and
the difference from ``cpu``), ``decomposition.md`` and ``decomposition.png``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments import cli, distill
from experiments.meta_studies import start_controls
from experiments.paper import adaptation_curve
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import outputs

# factor -> {config path: value}, applied to the base config (module docstring)
FACTORS: dict[str, dict[str, object]] = {
    "cpu": {},
    "eval": {"eval.protocol": "frepo"},
    "feature": {"feature.width": 128},
    "n_t": {"adapt.batch_size": 1024},
    "generator": {"generator.width": 64},
    "alpha": {"adapt.learning_rate": 1e-4},
    "paper": {"eval.protocol": "frepo", "feature.width": 128, "adapt.batch_size": 1024,
              "generator.width": 64},
}


def apply_factor(config, factor: str) -> None:
    """Set ``FACTORS[factor]`` on ``config`` in place (a locked config: only existing keys)."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; the factors are {sorted(FACTORS)}")
    for path, value in FACTORS[factor].items():
        node = config
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value


def summarise(per_set: dict[str, dict[int, float]]) -> dict[str, dict]:
    """``{factor: across_sets + {"minus_cpu"}}``; the difference is of the means."""
    out = {f: start_controls.across_sets([v[r] for r in sorted(v)]) for f, v in per_set.items()}
    base = out.get("cpu", {}).get("mean")
    for cell in out.values():
        cell["minus_cpu"] = None if base is None else cell["mean"] - base
    return out


def markdown(result: dict) -> str:
    lines = [f"# {result['dataset']}, IPC {result['ipc']}: fresh start, {result['steps']} "
             f"complete steps, mean ± std across {result['sets']} distilled sets", "",
             "| factor | changes | accuracy (%) | − cpu |", "|---|---|---|---|"]
    for f, c in result["cells"].items():
        change = ", ".join(f"{k}={v}" for k, v in FACTORS[f].items()) or "(base)"
        diff = "" if c["minus_cpu"] is None or f == "cpu" else f"{c['minus_cpu']:+.2f}"
        lines.append(f"| {f} | {change} | {c['mean']:.2f} ± {c['std']:.2f} | {diff} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    names = list(result["cells"])
    ax.errorbar(range(len(names)), [result["cells"][n]["mean"] for n in names],
                yerr=[result["cells"][n]["std"] for n in names], fmt="o", capsize=3,
                label=f"IPC {result['ipc']}")
    ax.set_xticks(range(len(names)), names)
    outputs.finish_line_plot(fig, ax, path, xlabel="factor changed from cpu",
                             ylabel="test accuracy (%)",
                             title=f"{result['dataset']}, IPC {result['ipc']}, "
                                   f"± across {result['sets']} sets")


def main(argv):
    del argv
    cli.quiet_library_logs()
    f = flags.FLAGS
    with cli.exit_on_bad_input():
        config = distill.config_from_flags()
        factors = list(dict.fromkeys(f.factors))
        for name in factors:
            if name not in FACTORS:
                raise ValueError(f"unknown factor {name!r}; the factors are {sorted(FACTORS)}")
        if f.sets < 1 or f.decomposition_steps < 1:
            raise ValueError("--sets and --decomposition_steps must be >= 1")
        out = outputs.check_resumable_out(config.out)
        cells_dir = os.path.join(out, "cells")
        os.makedirs(cells_dir, exist_ok=True)
    base_seed = int(config.seed)
    per_set: dict[str, dict[int, float]] = {}
    for name in factors:
        for r in range(f.sets):
            path = os.path.join(cells_dir, f"{name}_set{r}.json")
            if not os.path.exists(path):
                cell_config = config.copy_and_resolve_references()
                with cell_config.unlocked():
                    apply_factor(cell_config, name)
                    cell_config.seed = base_seed + r
                    cell_config.overwrite = True
                    cell_config.meta_checkpoint = ""
                with cli.exit_on_bad_input():
                    prep = distill.prepare(cell_config)
                with cli.exit_on_failed_run(out):
                    res = adaptation_curve.curve(prep, [f.decomposition_steps],
                                                 schedule="complete", random_real=False)
                point = res["curves"]["fresh"]["points"][0]
                outputs.write_json(path, {"accuracy": 100 * point["mean"], "factor": name,
                                          "set": r, "per_seed": point["per_seed"],
                                          "eval_protocol": res["eval_protocol"],
                                          "seconds_per_step":
                                              res["curves"]["fresh"]["seconds_per_step"]})
                print(f"cell {name} set {r} done", file=sys.stderr, flush=True)
            with open(path) as fh:
                per_set.setdefault(name, {})[r] = json.load(fh)["accuracy"]
    ipc = adapt_lib.parse_ipcs(config.ipc)[0]
    result = {"dataset": config.dataset, "ipc": ipc, "steps": f.decomposition_steps,
              "sets": f.sets, "base_seed": base_seed, "factors": {n: FACTORS[n] for n in factors},
              "cells": summarise(per_set)}
    cli.write_summary(out, "decomposition", result, markdown, plot)


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_list("factors", list(FACTORS), "Factors to run (module docstring).")
    flags.DEFINE_integer("sets", 3, "Distilled sets per factor (seeds --seed .. --seed+R-1).")
    flags.DEFINE_integer("decomposition_steps", 1000, "Adaptation steps (complete runs).")
    app.run(main, argv=cli.with_config_names(sys.argv, distill.DEFAULT_CONFIG))
