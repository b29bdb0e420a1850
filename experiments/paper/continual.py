r"""MGDD Fig. 5: class-incremental learning with a synthetic buffer, per mode of making it.

    python -m experiments.paper.continual --config=experiments/configs/continual.py:cpu \
        --out=results/paper/continual_fmnist

Each mode (``mgdd_jax.continual``: adapt from the meta generator at every task, from the
previous task's generator, only on the first task, or FRePo per task) streams the tasks; after
each task a network trained on the whole buffer is tested on all classes seen so far. Writes
``continual.json`` (per mode and task: accuracy mean ± std, buffer size, distillation
seconds), ``continual.md`` (the table) and ``continual.png`` (accuracy against classes seen),
all at once, plus each task's adapted generator under ``generators/<mode>/task<t>/``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import cli, distill
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import api, continual, data, outputs
from mgdd_jax.progress import stage

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                               "continual.py")
SHORTHANDS = (("out", "out"), ("modes", "modes"), ("dataset", "dataset"), ("ipc", "ipc"),
              ("steps", "adapt.steps"))


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Continual config file.",
                                    lock_config=True)
    flags.DEFINE_string("out", None, "Shorthand for --config.out (required).")
    flags.DEFINE_string("modes", None, "Shorthand for --config.modes, e.g. meta,first.")
    flags.DEFINE_string("dataset", None, "Shorthand for --config.dataset.")
    flags.DEFINE_string("ipc", None, "Shorthand for --config.ipc (buffer images per class).")
    flags.DEFINE_integer("steps", None, "Shorthand for --config.adapt.steps (per task).")


def prepare(config: Any) -> dict[str, Any]:
    """Validate everything and load the data; writes nothing."""
    if not config.out:
        raise ValueError("--out is required: the directory the results are written to.")
    modes = continual.parse_modes(config.modes)
    ipcs = adapt_lib.parse_ipcs(config.ipc, "ipc")
    if len(ipcs) != 1:
        raise ValueError(f"--ipc={config.ipc!r}: the buffer has one size; give one IPC")
    ipc = ipcs[0]
    out = outputs.check_output_dir(config.out, overwrite=config.overwrite)
    meta = config.meta_checkpoint if any(m != "frepo" for m in modes) else ""
    fit = api.FitConfig.from_config(config, (ipc,), meta)  # single init at the buffer IPC
    protocol = distill.eval_protocol(config, config.dataset)
    ds = distill.load_data(config)
    tasks = continual.split_tasks(ds.num_classes, config.num_tasks)
    for classes in tasks:
        task = continual.task_dataset(ds, classes)
        data.check_per_class(task, ipc, what="IPC")
        fit.bind(task)  # the real batch per class, on every task
    return {"config": config, "out": out, "modes": modes, "ipc": ipc, "fit": fit,
            "protocol": protocol, "dataset": ds, "tasks": tasks}


def run(prep: dict[str, Any], workdir: str) -> dict[str, Any]:
    config, ds = prep["config"], prep["dataset"]
    key = jax.random.key(config.seed)
    result: dict[str, Any] = {
        "dataset": config.dataset, "ipc": prep["ipc"], "tasks": [list(t) for t in prep["tasks"]],
        "steps_per_task": prep["fit"].adapt.steps, "meta_checkpoint": prep["fit"].meta_checkpoint,
        "eval_protocol": prep["protocol"].to_dict(), "device": str(jax.devices()[0]),
        "config": config.to_dict(), "modes": {}}
    for mode in prep["modes"]:
        stage(f"mode {mode}: {len(prep['tasks'])} tasks, {prep['ipc']} images per class")
        # The same key for every mode: the same θ, real batches and initial images per task.
        res = continual.run_stream(key, ds, prep["tasks"], prep["ipc"], mode, prep["fit"], config,
                                   prep["protocol"], os.path.join(workdir, "generators", mode),
                                   say=stage)
        result["modes"][mode] = res.tasks
    return result


def markdown(result: dict[str, Any]) -> str:
    modes = list(result["modes"])
    lines = [f"{result['dataset']}: class-incremental, {len(result['tasks'])} tasks, "
             f"{result['ipc']} buffer images per class, {result['steps_per_task']} steps per "
             "task; test accuracy (%) on all classes seen so far, mean ± std over "
             f"{result['eval_protocol']['num_seeds']} networks.", "",
             "| classes seen | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for t in range(len(result["tasks"])):
        row = [result["modes"][m][t] for m in modes]
        lines.append(f"| {row[0]['seen_classes']} | " + " | ".join(
            f"{100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f}" for r in row) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str) -> None:
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for mode, rows in result["modes"].items():
        ax.errorbar([r["seen_classes"] for r in rows], [100 * r["acc_mean"] for r in rows],
                    yerr=[100 * r["acc_std"] for r in rows], fmt="o-", capsize=3, label=mode)
    outputs.finish_line_plot(fig, ax, path, xlabel="classes seen", ylabel="test accuracy (%)",
                             title=f"{result['dataset']}: continual learning (cf. MGDD Fig. 5)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        prep = prepare(cli.apply_shorthands(flags.FLAGS.config, SHORTHANDS))
    with cli.exit_on_failed_run(prep["out"]):
        with outputs.atomic_dir(prep["out"]) as tmp:
            result = run(prep, tmp)
            outputs.write_json(os.path.join(tmp, "continual.json"), result)
            outputs.write_text(os.path.join(tmp, "continual.md"), markdown(result))
            plot(result, os.path.join(tmp, "continual.png"))
    print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
