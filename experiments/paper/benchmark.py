r"""The baselines benchmark (issue 9): methods × IPC, accuracy against steps and wall time.

    python -m experiments.paper.benchmark --config=mgdd_jax/configs/benchmark.py:cpu
    python -m experiments.paper.benchmark --config=mgdd_jax/configs/benchmark.py:paper   # a GPU
    python -m experiments.paper.benchmark --config=mgdd_jax/configs/benchmark.py:smoke \
        --dataset=digits --out=/tmp/bench_smoke                                     # seconds

For each IPC and each method of ``mgdd_jax.baselines`` (``random``, ``frepo``, ``scratch``,
``identity``, ``mgdd``), one run of the method with the same key yields its synthetic set at the
snapshot steps (``config.snapshot_steps``, plus 2000 with ``--config.long``) and its own wall
time at each; every snapshot is then evaluated with the config's protocol and
``eval.num_seeds`` networks (the same evaluation keys for every method and step). Evaluation
time is not counted in a method's time.

Writes into ``--out`` (default ``results/paper/<dataset>/``), each file atomically:
``benchmark.json`` (``runs``: one entry per method, IPC and snapshot with ``method``,
``ipc``, ``steps``, ``seconds``, ``acc_mean``, ``acc_std``, ``per_seed``, ``timing``; and
``summary``: the tables below), ``benchmark.md`` (a Tab. 12-like accuracy table with the
paper's Fashion-MNIST figures beside ours, a Tab. 1-like timing table, time-to-accuracy and the
cost of a new IPC), ``benchmark_curves.png`` (accuracy against steps and against wall time,
Fig. 4 / Fig. 9 style) and ``benchmark_samples_ipc<K>.png`` (the final set of each method). The
``paper`` and ``smoke`` variants write ``benchmark_paper.*`` / ``benchmark_smoke.*``.

Resumable and progressive: the files are rewritten after every finished (method, IPC)
(``"complete": false`` and the ``pending`` runs in the JSON, "partial" in the Markdown), so a
long run shows its results as they come, and the JSON (which holds its config) is the record
a later run resumes from: running the same command again skips the (method, IPC) runs it
holds. ``--ipc`` and ``--methods`` may differ, e.g. ``--ipc=1,10,50`` after a ``--ipc=1``
run adds IPC 10 and 50 to it. Results made with another config are refused (pass
``--overwrite`` to start again).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import cli, distill
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import api, baselines, checkpoint, data, evaluation, outputs
from mgdd_jax.configs import benchmark as benchmark_config
from mgdd_jax.progress import stage

_DEFAULT_CONFIG = benchmark_config.__file__
SHORTHANDS = (("dataset", "dataset"), ("out", "out"), ("ipc", "ipc"), ("methods", "methods"),
              ("seed", "seed"), ("overwrite", "overwrite"))
LONG_STEP = 2000

# Fashion-MNIST accuracies (%) of the paper, by IPC 1 / 10 / 50: Tab. 12 (MGDD, FRePo) and
# Tab. 8 (random real images).
PAPER_FASHION_MNIST = {
    "mgdd": {1: 71.9, 10: 83.4, 50: 87.2},
    "frepo": {1: 61.5, 10: 81.2, 50: 85.9},
    "random": {1: 51.4, 10: 73.8, 50: 82.5},
}
PAPER_IMAGE_SIZE = 28  # the paper's Fashion-MNIST figures are at its native 28x28
METHOD_LABELS = {"random": "random real", "frepo": "FRePo", "scratch": "scratch (w/o meta)",
                 "identity": "fresh (identity init)", "mgdd": "MGDD (meta generator)",
                 "pixel": "pixel space (same objective)"}


def define_flags() -> None:
    """``--config`` and its shorthands; called by the launcher, not at import."""
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                    "Benchmark config: benchmark.py:cpu|paper|smoke.",
                                    lock_config=True)
    flags.DEFINE_string("dataset", None, "Shorthand for --config.dataset.")
    flags.DEFINE_string("out", None, "Shorthand for --config.out (default results/paper/<dataset>).")
    flags.DEFINE_string("ipc", None, "Shorthand for --config.ipc, e.g. 1,10,50.")
    flags.DEFINE_string("methods", None, "Shorthand for --config.methods.")
    flags.DEFINE_integer("seed", None, "Shorthand for --config.seed.")
    flags.DEFINE_bool("overwrite", None, "Shorthand for --config.overwrite.")


def config_from_flags() -> ml_collections.ConfigDict:
    return cli.apply_shorthands(flags.FLAGS.config, SHORTHANDS)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated benchmark with its data loaded: nothing fails on bad input after this."""

    config: ml_collections.ConfigDict
    out: str
    stem: str
    methods: tuple[str, ...]
    ipcs: tuple[int, ...]
    snapshot_steps: tuple[int, ...]
    dataset: data.Dataset
    protocol: evaluation.EvalProtocol

    def path(self, suffix: str) -> str:
        return os.path.join(self.out, self.stem + suffix)



def output_stem(variant: str) -> str:
    """The files' stem in ``--out``: ``benchmark`` for the ``cpu`` variant, else
    ``benchmark_<variant>`` (its sets: ``<stem>_sets/<method>_ipc<K>.npz``)."""
    return "benchmark" if variant == "cpu" else f"benchmark_{variant}"


def parse_methods(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in str(text).split(","))
    if not names or any(not n for n in names):
        raise ValueError(f"--config.methods={text!r} has an empty item; e.g. random,frepo,mgdd")
    unknown = [n for n in names if n not in baselines.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(baselines.METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--config.methods={text!r} names a method twice")
    return names


def parse_steps(text: str, long: bool) -> tuple[int, ...]:
    try:
        steps = [int(s) for s in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--config.snapshot_steps={text!r} must be a comma list of "
                         "integers, e.g. 0,50,100,200,500,1000") from None
    if long and (not steps or steps[-1] < LONG_STEP):
        steps.append(LONG_STEP)
    return baselines.check_snapshot_steps(steps)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What earlier results must share with this run to be reused (not out, overwrite, and
    the lists of methods and IPCs); compared with :func:`checkpoint.config_differences`, so
    fields added since (``checkpoint.ADDED_FIELDS``) at their old meaning match absence."""
    d = json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)
    for k in ("out", "overwrite", "methods", "ipc"):
        d.pop(k, None)
    return d


def prepare(config: ml_collections.ConfigDict) -> Prepared:
    """Validate the config, the output files and the data, in that order; writes nothing."""
    methods = parse_methods(config.methods)
    ipcs = adapt_lib.parse_ipcs(config.ipc)
    steps = parse_steps(config.snapshot_steps, config.long)
    if "mgdd" in methods:
        api.FitConfig.from_config(config, ipcs, config.meta_checkpoint)  # checkpoint matches
    from mgdd_jax.data import sources
    sources.resolve_source(config.dataset)  # unknown names fail here, before loading
    out = outputs.check_resumable_out(config.out or os.path.join("results", "paper",
                                                                 _slug(config.dataset)))
    stem = output_stem(config.variant)
    if config.adapt.ds_factor != 1:
        raise ValueError("--config.adapt.ds_factor (the DS parameterisation) is a distill "
                         "option; the benchmark's methods store full-resolution sets")
    if config.reinit_seed != -1:
        raise ValueError("--config.reinit_seed is a distill option (generation from another "
                         "initial set); the benchmark draws its sets from --config.seed")
    if len(distill.eval_archs(config)) != 1:
        raise ValueError(f"the benchmark evaluates on one architecture, got --config.eval.archs="
                         f"{config.eval.archs!r}; run it once per architecture with its own "
                         "--out")
    protocol = distill.eval_protocol(config, config.dataset)
    ds = distill.load_data(config)
    for k in ipcs:
        data.check_per_class(ds, k, what="IPC")
    prep = Prepared(config, out, stem, methods, ipcs, steps, ds, protocol)
    _previous_runs(prep)  # results of another config are refused here, before any work
    return prep


def _previous_runs(prep: Prepared) -> tuple[list[dict[str, Any]], float]:
    """The runs of earlier results in ``--out`` made with this config, and the seconds of the
    invocations that made them (([], 0.0) with --overwrite or none)."""
    path = prep.path(".json")
    if prep.config.overwrite or not os.path.exists(path):
        return [], 0.0
    try:
        with open(path) as f:
            previous = json.load(f)
        same = not checkpoint.config_differences(_fingerprint(previous["config"]),
                                                 _fingerprint(prep.config))
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        raise ValueError(f"{path} holds results made with another config; pass --overwrite to "
                         "replace them, choose another --out, or rerun with that run's flags")
    # Files written before seconds_all_invocations existed hold one invocation's seconds.
    earlier = previous.get("seconds_all_invocations", previous.get("seconds_this_invocation"))
    return previous["runs"], float(earlier or 0.0)


def run(prep: Prepared) -> dict[str, Any]:
    """Every (IPC, method) not in earlier results, then the summary and files; returns the JSON."""
    config, ds, protocol = prep.config, prep.dataset, prep.protocol
    runs, earlier_seconds = _previous_runs(prep)
    have = {(r["method"], r["ipc"]) for r in runs}
    key = jax.random.key(config.seed)
    k_eval = api.job_keys(key)["eval"]
    t_all = time.perf_counter()
    for ipc in prep.ipcs:
        for method in prep.methods:
            if (method, ipc) in have:
                stage(f"{method} IPC {ipc}: from the earlier results")
                continue
            stage(f"{method} IPC {ipc}: running to step {prep.snapshot_steps[-1]}")
            load_before = os.getloadavg()[0]
            snaps = baselines.run_method(method, key, ds, ipc, prep.snapshot_steps, config)
            load = [load_before, os.getloadavg()[0]]  # other work on the machine, 1-min avg
            t_eval = time.perf_counter()
            results = evaluation.evaluate_many(
                jax.random.fold_in(k_eval, ipc), [(s.x, s.y) for s in snaps], ds.x_test,
                ds.y_test, protocol, num_classes=ds.num_classes, progress=False)
            eval_s = time.perf_counter() - t_eval
            entries = []
            for s, res in zip(snaps, results):
                entries.append({"method": method, "ipc": ipc, "steps": s.steps,
                                "seconds": s.seconds, "acc_mean": res["mean"],
                                "acc_std": res["std"], "per_seed": res["per_seed"],
                                "timing": s.timing, "load_average_before_after": load,
                                "eval_seconds_of_run": eval_s})
                stage(f"  {method} IPC {ipc} step {s.steps}: {100 * res['mean']:.2f} ± "
                      f"{100 * res['std']:.2f}% at {s.seconds:.1f}s")
            runs.extend(entries)
            last = snaps[-1]
            outputs.write_npz(_set_path(prep, method, ipc), images=last.x, labels=last.y,
                              steps=np.int64(last.steps))
            _write_outputs(prep, runs, time.perf_counter() - t_all, earlier_seconds,
                           complete=False)
    result = _write_outputs(prep, runs, time.perf_counter() - t_all, earlier_seconds,
                            complete=True)
    print(markdown(result), file=sys.stderr)
    return result


def _write_outputs(prep: Prepared, runs: list[dict[str, Any]], seconds: float,
                   earlier_seconds: float, *, complete: bool) -> dict[str, Any]:
    """The JSON, Markdown and PNGs of ``runs`` (each file atomic; ``complete`` False while a
    long run is still going: the files then show the (method, IPC) runs finished so far).
    ``seconds``: this invocation so far; ``earlier_seconds``: the invocations before it."""
    config = prep.config
    ipcs = sorted(set(prep.ipcs) | {r["ipc"] for r in runs})
    methods = list(prep.methods) + sorted({r["method"] for r in runs} - set(prep.methods))
    done = {(r["method"], r["ipc"]) for r in runs}
    result = {
        "dataset": config.dataset, "variant": config.variant,
        "pending": [[m, k] for k in ipcs for m in methods if (m, k) not in done],
        "methods": methods, "ipcs": ipcs,
        "snapshot_steps": list(prep.snapshot_steps), "eval_protocol": prep.protocol.to_dict(),
        "device": str(jax.devices()[0]), "config": json.loads(config.to_json()),
        "runs": runs, "summary": summarise(runs, prep.snapshot_steps[-1], config.dataset,
                                            config.adapt.objective, config.image_size),
        "seconds_this_invocation": seconds,
        "seconds_all_invocations": earlier_seconds + seconds,
    }
    result["complete"] = complete and not result["pending"]
    plot_curves(result, prep.path("_curves.png"))
    for ipc in ipcs:
        plot_samples(prep, methods, ipc, prep.path(f"_samples_ipc{ipc}.png"))
    outputs.write_text(prep.path(".md"), markdown(result))
    outputs.write_json(prep.path(".json"), result)
    return result


def _set_path(prep: Prepared, method: str, ipc: int) -> str:
    """The final set of ``method`` at ``ipc`` (images, labels, steps), kept with the results."""
    return os.path.join(prep.out, f"{prep.stem}_sets", f"{method}_ipc{ipc}.npz")


# ------------------------------------------------------------------------------ summary
def _at(runs: list[dict[str, Any]], method: str, ipc: int) -> list[dict[str, Any]]:
    return sorted((r for r in runs if r["method"] == method and r["ipc"] == ipc),
                  key=lambda r: r["steps"])


def _final(runs: list[dict[str, Any]], method: str, ipc: int) -> dict[str, Any] | None:
    rows = _at(runs, method, ipc)
    return rows[-1] if rows else None


def summarise(runs: list[dict[str, Any]], final_step: int, dataset: str,
              objective: str = "krr", image_size: int = 0) -> dict[str, Any]:
    """Tab. 12 / Tab. 1-like figures, time-to-accuracy and new-IPC cost, from ``runs``.

    * ``accuracy``: per method and IPC, the last snapshot (``final_step``; ``random`` has
      only step 0) as mean ± std, with the paper's figure where it has one (Fashion-MNIST,
      KRR objective, ``image_size`` 0 (the dataset's own) or 28: the paper's tables are of KRR
      adaptation at 28x28).
    * ``timing``: per method and IPC, the last snapshot's parts (label solve, distillation /
      adaptation, generation) and total seconds.
    * ``time_to_accuracy``: per IPC, the target is FRePo's last-snapshot mean accuracy; per
      method, the wall time of its first snapshot whose mean reaches it (None: never), and
      ``frepo_over_mgdd``, FRePo's time over MGDD's (the paper: 22×).
    * ``new_ipc_cost``: per IPC, MGDD's forward pass for a new IPC (its warm generation time)
      against re-running FRePo for that IPC (FRePo's total time), and their ratio (the paper:
      1650×, forward pass only).
    """
    methods = sorted({r["method"] for r in runs})
    ipcs = sorted({r["ipc"] for r in runs})
    paper = (PAPER_FASHION_MNIST if dataset in ("fashion_mnist", "tfds:fashion_mnist")
             and objective == "krr" and image_size in (0, PAPER_IMAGE_SIZE) else {})
    acc: dict[str, dict[str, Any]] = {}
    timing: dict[str, dict[str, Any]] = {}
    for m in methods:
        for k in ipcs:
            f = _final(runs, m, k)
            if f is None:
                continue
            acc.setdefault(m, {})[str(k)] = {
                "steps": f["steps"], "mean": f["acc_mean"], "std": f["acc_std"],
                "paper": paper.get(m, {}).get(k)}
            timing.setdefault(m, {})[str(k)] = {"steps": f["steps"], "seconds": f["seconds"],
                                                **f["timing"]}
    tta: dict[str, Any] = {}
    cost: dict[str, Any] = {}
    for k in ipcs:
        ref = _final(runs, "frepo", k)
        if ref is None:
            continue
        target = ref["acc_mean"]
        reached = {}
        for m in methods:
            hit = next((r for r in _at(runs, m, k) if r["acc_mean"] >= target), None)
            reached[m] = None if hit is None else {"steps": hit["steps"],
                                                   "seconds": hit["seconds"]}
        ratio = None
        if reached.get("frepo") and reached.get("mgdd"):
            ratio = reached["frepo"]["seconds"] / max(reached["mgdd"]["seconds"], 1e-9)
        tta[str(k)] = {"target_acc": target, "target": f"frepo at step {ref['steps']}",
                       "reached": reached, "frepo_over_mgdd": ratio}
        mg = _final(runs, "mgdd", k)
        if mg is not None and mg["timing"].get("warm_generation_s"):
            fwd = mg["timing"]["warm_generation_s"]
            cost[str(k)] = {"mgdd_forward_s": fwd, "frepo_rerun_s": ref["seconds"],
                            "ratio": ref["seconds"] / fwd}
    return {"final_step": final_step, "accuracy": acc, "timing": timing,
            "time_to_accuracy": tta, "new_ipc_cost": cost}


def _fmt_acc(a: dict[str, Any] | None) -> str:
    if a is None:
        return "–"
    return f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The summary as Markdown tables (what the README quotes)."""
    s = result["summary"]
    ipcs = [str(k) for k in result["ipcs"]]
    methods = result["methods"]
    proto = result["eval_protocol"]
    status = "" if result.get("complete", True) else (
        " — **partial**: still to run " + ", ".join(f"{m} IPC {k}" for m, k in result["pending"]))
    objective = result.get("config", {}).get("adapt", {}).get("objective", "krr")
    lines = [f"## {result['dataset']}, variant `{result['variant']}` ({result['device']})"
             + status, "",
             *([f"Adaptation objective: **{objective}** (the generator methods and `pixel` "
                "optimise it; Tab. 3).", ""] if objective != "krr" else []),
             f"Test accuracy (%) at step {s['final_step']} (random: step 0), mean ± std over "
             f"{proto['num_seeds']} evaluation networks ({proto['name']} protocol); the paper's "
             "figure in brackets where it has one.", "",
             "| method | " + " | ".join(f"IPC {k}" for k in ipcs) + " |",
             "|---|" + "---|" * len(ipcs)]
    for m in methods:
        cells = []
        for k in ipcs:
            a = s["accuracy"].get(m, {}).get(k)
            cell = _fmt_acc(a)
            if a is not None and a.get("paper") is not None:
                cell += f" ({a['paper']:.1f})"
            cells.append(cell)
        lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time of each method at its last snapshot, same machine, same run: "
              "label solve (s) / distillation or adaptation (s) / generation (ms), and the "
              "total (s), evaluation excluded.", "",
              "| method | " + " | ".join(f"IPC {k}" for k in ipcs) + " |",
              "|---|" + "---|" * len(ipcs)]
    for m in methods:
        cells = []
        for k in ipcs:
            t = s["timing"].get(m, {}).get(k)
            if t is None:
                cells.append("–")
                continue
            cells.append(f"{t.get('label_solve_s', 0.0):.1f} / {t.get('distill_s', 0.0):.1f} / "
                         f"{1e3 * t.get('generation_s', 0.0):.1f} ms ({t['seconds']:.1f})")
        lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    if s["time_to_accuracy"]:
        lines += ["", "Time to reach FRePo's last-snapshot accuracy (s; steps):", "",
                  "| IPC | target | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods)
                  + " | FRePo / MGDD |", "|---|---|" + "---|" * (len(methods) + 1)]
        for k, t in s["time_to_accuracy"].items():
            cells = []
            for m in methods:
                r = t["reached"].get(m)
                cells.append("not reached" if r is None else f"{r['seconds']:.1f} ({r['steps']})")
            ratio = "–" if t["frepo_over_mgdd"] is None else f"{t['frepo_over_mgdd']:.1f}×"
            lines.append(f"| {k} | {100 * t['target_acc']:.1f}% | " + " | ".join(cells)
                         + f" | {ratio} |")
    if s["new_ipc_cost"]:
        lines += ["", "Cost of a new IPC: MGDD's forward pass vs re-running FRePo:", "",
                  "| IPC | MGDD forward (ms) | FRePo rerun (s) | ratio |", "|---|---|---|---|"]
        for k, c in s["new_ipc_cost"].items():
            lines.append(f"| {k} | {1e3 * c['mgdd_forward_s']:.1f} | {c['frepo_rerun_s']:.1f} "
                         f"| {c['ratio']:.0f}× |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ figures
def plot_curves(result: dict[str, Any], path: str) -> None:
    """Accuracy against steps (top) and against wall time (bottom), one column per IPC."""
    plt = outputs.pyplot()
    ipcs = result["ipcs"]
    fig, axes = plt.subplots(2, len(ipcs), figsize=(4.2 * len(ipcs), 6.5), squeeze=False)
    for j, k in enumerate(ipcs):
        for m in result["methods"]:
            rows = _at(result["runs"], m, k)
            if not rows:
                continue
            acc = [100 * r["acc_mean"] for r in rows]
            err = [100 * r["acc_std"] for r in rows]
            label = METHOD_LABELS.get(m, m)
            if len(rows) == 1:  # random: a level
                for ax in axes[:, j]:
                    ax.axhline(acc[0], ls="--", lw=1, color="grey", label=label)
                continue
            axes[0, j].errorbar([r["steps"] for r in rows], acc, yerr=err, marker="o", ms=3,
                                lw=1, capsize=2, label=label)
            axes[1, j].errorbar([max(r["seconds"], 1e-2) for r in rows], acc, yerr=err,
                                marker="o", ms=3, lw=1, capsize=2, label=label)
        axes[0, j].set_title(f"IPC {k}")
        axes[0, j].set_xlabel("optimisation steps")
        axes[1, j].set_xlabel("wall time (s, log)")
        axes[1, j].set_xscale("log")
        for ax in axes[:, j]:
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{result['dataset']} ({result['variant']}, {result['device']})")
    fig.tight_layout()
    outputs.save_figure(fig, path)


def plot_samples(prep: Prepared, methods: Sequence[str], ipc: int, path: str,
                 per_class: int = 10) -> None:
    """Each method's final set at ``ipc`` (up to ``per_class`` images per class, a row each)."""
    plt = outputs.pyplot()
    ds = prep.dataset
    shown = (lambda x: x) if ds.preprocessing.zca is not None else ds.preprocessing.invert
    panels = []
    for m in methods:
        p = _set_path(prep, m, ipc)
        if not os.path.exists(p):
            continue
        with np.load(p) as z:
            x, y, steps = z["images"], z["labels"], int(z["steps"])
        cls = np.argmax(y, axis=1)
        order = [i for c in range(ds.num_classes) for i in np.flatnonzero(cls == c)[:per_class]]
        x = np.asarray(shown(x[order]), np.float32)
        lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-8)
        per_row = ds.num_classes if ipc == 1 else min(ipc, per_class)  # IPC 1: classes in a row
        panels.append((m, steps, outputs.image_grid(x, per_row)))
    if not panels:
        return
    if ipc == 1:  # one wide row per method
        fig, axes = plt.subplots(len(panels), 1, figsize=(6.0, 1.0 * len(panels)), squeeze=False)
        axes = axes.T
    else:
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0),
                                 squeeze=False)
    for ax, (m, steps, grid) in zip(axes[0], panels):
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.set_title(f"{METHOD_LABELS.get(m, m)}\nstep {steps}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    outputs.save_figure(fig, path)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        prep = prepare(config_from_flags())
    try:
        run(prep)
    except FloatingPointError as e:  # a NaN loss mid-run: one line; finished runs are kept
        print(f"error: {e} The (method, IPC) runs finished so far are in {prep.path('.json')}; "
              "the same command resumes after them.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main, argv=cli.with_config_names(sys.argv, _DEFAULT_CONFIG))
