r"""Tab. 4 on the benchmark's sets: each method's final set trained on unseen architectures.

    python -m experiments.paper.cross_arch --bench=results/paper/fashion_mnist --ipc=1 \
        --methods=frepo,mgdd --archs=convnet,alexnet,vgg11,resnet18 \
        --out=results/paper/fashion_mnist_cross_arch

``experiments.paper.benchmark`` keeps the last set of every (method, IPC) it ran in
``<bench>/benchmark_sets/<method>_ipc<K>.npz`` (images, labels, steps; ``benchmark_<V>_sets``
for ``--variant=V`` other than ``cpu``). This script trains
``eval.num_seeds`` networks of each architecture of ``--archs`` on each of those sets, under
the benchmark's own evaluation protocol (its ``config`` in ``benchmark.json``: protocol,
seeds, steps table, augmentation; only the network changes, ``nets.ARCHS``), with the
benchmark's evaluation keys (``fold_in(eval key, IPC)``, the same for every method and
architecture). So the ``convnet`` cell of a set is the benchmark's figure for it again (float
tolerance): a check that the sets and the protocol are the ones the benchmark measured.
The sets were made with ConvNet random features (KRR, FRePo's pool): every other
architecture is unseen, as in the paper's Tab. 4.

Cost on a CPU: AlexNet, VGG11 and ResNet18 are one to two orders of magnitude heavier per
training step than the width-32 ConvNet, so each of their cells takes minutes to tens of
minutes per set on the 2-core CPU (``seconds`` in each cell); ``seeds="auto"`` trains them
with the per-step loop there (:func:`mgdd_jax.evaluation.resolve_seeds` says why).

Writes into ``--out``, each file atomically and rewritten after every (set, architecture)
cell, so a long run shows its cells as they come and resumes: ``cross_arch.json`` (``cells``:
one entry per method, IPC and architecture with ``acc_mean``, ``acc_std``, ``per_seed``,
``seconds``; ``pending``; ``complete``), ``cross_arch.md`` (a Tab. 4-like table, IPC × method
rows, one column per architecture) and ``cross_arch.png``. Running the same command again
skips the cells it holds; ``--methods``, ``--ipc`` and ``--archs`` may grow. Results made from
another benchmark config are refused (``--overwrite`` starts again).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from experiments import cli, distill
from experiments.paper import benchmark
from mgdd_jax import adapt as adapt_lib
from mgdd_jax import api, checkpoint, data, evaluation, nets, outputs
from mgdd_jax.progress import format_seconds, stage

STEM = "cross_arch"


def define_flags() -> None:
    """Defined by the launcher only (not at import: tests import this module with others)."""
    flags.DEFINE_string("bench", None, "A benchmark's output directory (benchmark.json and "
                        "benchmark_sets/), e.g. results/paper/fashion_mnist.")
    flags.DEFINE_string("methods", "frepo,mgdd", "Comma list of the benchmark's methods.")
    flags.DEFINE_string("ipc", "1", "Comma list of IPCs the benchmark ran.")
    flags.DEFINE_string("archs", ",".join(nets.ARCHS),
                        f"Comma list of evaluation architectures from {nets.ARCHS}.")
    flags.DEFINE_string("variant", "cpu", "The benchmark's variant: cpu reads benchmark.json "
                        "and benchmark_sets/, another V benchmark_V.json and benchmark_V_sets/.")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_bool("overwrite", False, "Discard earlier cells in --out and start again.")


def benchmark_config(bench: str, variant: str = "cpu") -> ml_collections.ConfigDict:
    """The config stored in ``<bench>/<stem>.json`` (fields added since it was written at
    their "as before" value, :data:`checkpoint.ADDED_FIELDS`)."""
    name = benchmark.output_stem(variant) + ".json"
    path = os.path.join(bench, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--bench={bench} has no {name}: pass the --out of an "
                                "experiments.paper.benchmark run (and its --variant), e.g. "
                                "results/paper/fashion_mnist")
    try:
        with open(path) as f:
            stored = json.load(f)["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a benchmark result with a config ({e}); rerun the "
                         "benchmark") from None
    config = ml_collections.ConfigDict(stored)
    for dotted, default in checkpoint.ADDED_FIELDS.items():
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part, None)
            if node is None:
                break
        if node is not None and last not in node:
            node[last] = default
    return config


def parse_archs(text: str) -> tuple[str, ...]:
    """``--archs`` as a tuple of :data:`nets.ARCHS` names (same rules as ``--eval_arch``)."""
    return distill.eval_archs(ml_collections.ConfigDict({"eval": {"archs": text}}))


def set_path(bench: str, method: str, ipc: int, variant: str = "cpu") -> str:
    return os.path.join(bench, f"{benchmark.output_stem(variant)}_sets",
                        f"{method}_ipc{ipc}.npz")


def load_set(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(images, labels, steps) of a benchmark set file."""
    with np.load(path) as z:
        missing = {"images", "labels", "steps"} - set(z.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}: it is not a benchmark set "
                             "(images, labels, steps); rerun the benchmark for it")
        return np.asarray(z["images"]), np.asarray(z["labels"]), int(z["steps"])


def _fingerprint(bench: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"bench": os.path.abspath(bench), "config": json.loads(config.to_json())}


def previous_cells(out: str, fingerprint: dict[str, Any], overwrite: bool) -> list[dict]:
    """Cells of an earlier run in ``out`` from the same benchmark and config ([] with
    ``overwrite`` or none); another benchmark's cells are refused."""
    path = os.path.join(out, f"{STEM}.json")
    if overwrite or not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            previous = json.load(f)
        same = (previous["bench"] == fingerprint["bench"]
                and not checkpoint.config_differences(previous["benchmark_config"],
                                                      fingerprint["config"]))
        cells = list(previous["cells"])
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        raise ValueError(f"{path} holds cells of another benchmark or config; pass --overwrite "
                         "to replace them, or choose another --out")
    return cells


def markdown(result: dict[str, Any]) -> str:
    """Tab. 4-like table: accuracy (%) mean ± std per (IPC, method) and architecture."""
    archs = result["archs"]
    by = {(c["method"], c["ipc"], c["arch"]): c for c in result["cells"]}
    proto = result["eval_protocol"]
    lines = [(f"{result['dataset']}, the benchmark's final sets ({result['bench']}), "
              f"{proto['name']} protocol, {proto['num_seeds']} networks per architecture; made "
              "with ConvNet random features, so every architecture but convnet is unseen."), "",
             "| IPC | method | steps | " + " | ".join(archs) + " |",
             "|---|---|---|" + "---|" * len(archs)]
    for ipc in result["ipcs"]:
        for m in result["methods"]:
            cells = [by.get((m, ipc, a)) for a in archs]
            steps = next((c["set_steps"] for c in cells if c), None)
            text = [f"{100 * c['acc_mean']:.2f} ± {100 * c['acc_std']:.2f}" if c else "–"
                    for c in cells]
            lines.append(f"| {ipc} | {benchmark.METHOD_LABELS.get(m, m)} | "
                         f"{'–' if steps is None else steps} | " + " | ".join(text) + " |")
    if result["pending"]:
        lines += ["", f"Partial: {len(result['pending'])} cells pending."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str) -> None:
    """Grouped bars: one group per architecture, one bar per (method, IPC), ± std."""
    plt = outputs.pyplot()
    archs, by = result["archs"], {(c["method"], c["ipc"], c["arch"]): c for c in result["cells"]}
    series = [(m, k) for k in result["ipcs"] for m in result["methods"]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(archs), 3.8))
    width = 0.8 / max(len(series), 1)
    for i, (m, k) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(archs))]
        cells = [by.get((m, k, a)) for a in archs]
        ax.bar(xs, [100 * c["acc_mean"] if c else np.nan for c in cells], width,
               yerr=[100 * c["acc_std"] if c else 0.0 for c in cells], capsize=2,
               label=f"{benchmark.METHOD_LABELS.get(m, m)}, IPC {k}")
    ax.set_xticks(range(len(archs)), archs)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title(f"{result['dataset']}: sets made with ConvNet features, trained on each "
                 "architecture", fontsize=9)
    fig.tight_layout()
    outputs.save_figure(fig, path)


def _write(out: str, result: dict[str, Any]) -> None:
    os.makedirs(out, exist_ok=True)
    plot(result, os.path.join(out, f"{STEM}.png"))
    outputs.write_text(os.path.join(out, f"{STEM}.md"), markdown(result))
    outputs.write_json(os.path.join(out, f"{STEM}.json"), result)


def run(bench: str, methods: Sequence[str], ipcs: Sequence[int], archs: Sequence[str],
        out: str, overwrite: bool = False, variant: str = "cpu") -> dict[str, Any]:
    """Validate everything (sets, config, data, earlier cells), then evaluate each pending
    (method, IPC, architecture) cell, rewriting the files after each; returns the JSON."""
    config = benchmark_config(bench, variant)
    sets = {}
    for ipc in ipcs:
        for m in methods:
            path = set_path(bench, m, ipc, variant)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} does not exist: the benchmark in {bench} did "
                                        f"not run {m} at IPC {ipc}; run it with --methods={m} "
                                        f"--ipc={ipc} first")
            sets[(m, ipc)] = load_set(path)
    out = outputs.check_resumable_out(out)
    fingerprint = _fingerprint(bench, config)
    cells = previous_cells(out, fingerprint, overwrite)
    protocols = {a: distill.eval_protocol(config, config.dataset, a) for a in archs}
    ds = distill.load_data(config)
    for (m, ipc), (x, y, _) in sets.items():
        data.check_per_class(ds, ipc, what="IPC")
        if x.shape[1:] != ds.x_test.shape[1:] or y.shape[-1] != ds.num_classes:
            raise ValueError(f"{set_path(bench, m, ipc, variant)} holds images {x.shape} / "
                             f"labels {y.shape}, but {config.dataset} has images "
                             f"{ds.x_test.shape[1:]} and {ds.num_classes} classes")
    k_eval = api.job_keys(jax.random.key(config.seed))["eval"]
    all_methods = list(methods) + sorted({c["method"] for c in cells} - set(methods))
    all_ipcs = sorted(set(ipcs) | {c["ipc"] for c in cells})
    all_archs = list(archs) + [a for a in nets.ARCHS
                               if a not in archs and any(c["arch"] == a for c in cells)]
    t0 = time.perf_counter()

    def result(complete: bool) -> dict[str, Any]:
        have = {(c["method"], c["ipc"], c["arch"]) for c in cells}
        pending = [[m, k, a] for k in all_ipcs for m in all_methods for a in all_archs
                   if (m, k, a) not in have and (m, k) in sets]
        return {"dataset": config.dataset, "bench": fingerprint["bench"],
                "benchmark_config": fingerprint["config"], "methods": all_methods,
                "ipcs": all_ipcs, "archs": all_archs,
                "eval_protocol": protocols[archs[0]].to_dict(),
                "device": str(jax.devices()[0]), "cells": cells, "pending": pending,
                "complete": complete and not pending,
                "seconds_this_invocation": time.perf_counter() - t0}

    have = {(c["method"], c["ipc"], c["arch"]) for c in cells}
    for ipc in ipcs:
        for m in methods:
            x, y, steps = sets[(m, ipc)]
            for a in archs:
                if (m, ipc, a) in have:
                    stage(f"{m} IPC {ipc} on {a}: from the earlier results")
                    continue
                stage(f"{m} IPC {ipc} on {a}: {protocols[a].num_seeds} networks, "
                      f"{protocols[a].steps_for(len(x))} steps")
                load_before = os.getloadavg()[0]
                res = evaluation.evaluate_synthetic(
                    jax.random.fold_in(k_eval, ipc), x, y, ds.x_test, ds.y_test, protocols[a],
                    num_classes=ds.num_classes, progress=False)
                cells.append({"method": m, "ipc": ipc, "arch": a, "set_steps": steps,
                              "acc_mean": res["mean"], "acc_std": res["std"],
                              "per_seed": res["per_seed"], "seconds": res["seconds"],
                              "eval_steps": res["steps"],
                              "load_average_before_after": [load_before,
                                                            os.getloadavg()[0]]})
                stage(f"  {100 * res['mean']:.2f} ± {100 * res['std']:.2f}% "
                      f"({format_seconds(res['seconds'])})")
                _write(out, result(complete=False))
    final = result(complete=True)
    _write(out, final)
    return final


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f.bench or not f.out:
        raise app.UsageError("--bench and --out are required")
    cli.quiet_library_logs()
    with cli.exit_on_bad_input():
        methods = benchmark.parse_methods(f.methods)
        ipcs = adapt_lib.parse_ipcs(f.ipc)
        archs = parse_archs(f.archs)
        result = run(f.bench, methods, ipcs, archs, f.out, f.overwrite, f.variant)
    print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
