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

The starts: ``fresh`` (identity at step 0; ``--nofresh`` drops it), ``meta`` (the config's
``meta_checkpoint``, when set), ``scratch`` (``--scratch``: ``generator.random_generator``,
random channel adaptors), ``core_s{s}`` for each ``--core_scales`` value (``mgdd_jax.start``:
the set's random core with the fixed adaptors, output residual × s; ``core_s1`` is scratch
with fixed adaptors, and each set draws its own core), ``searched_<name>`` (``--search``: the
winner of :mod:`experiments.meta_studies.start_search`, on its one fixed core), and with ``--v2_controls`` the meta
checkpoint's own random start (``meta_start``: ω at its meta step 0, from its run seed) and
that start plus isotropic Gaussian noise of the checkpoint's per-tensor rms displacement
(``meta_noise``): if ``meta`` and ``meta_noise`` adapt alike, meta-training added nothing but
a random walk.
Resumable per (learning rate, set): each finished cell is written to ``cells/`` at once, and
a rerun of the same command skips it. Writes ``controls.json``, ``controls.md``,
``controls.png``.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from absl import app, flags

from experiments import cli, distill
from experiments.meta_studies import start_search
from experiments.paper import adaptation_curve
from mgdd_jax import checkpoint, outputs, start
from mgdd_jax import generator as gen_lib


def across_sets(per_set: list[float]) -> dict:
    """Mean and std (ddof=1; 0 for one set) of per-set accuracies, with the values."""
    v = np.asarray(per_set, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"across_sets needs a non-empty list of accuracies, got {per_set!r}")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "per_set": [float(a) for a in v]}


def meta_controls(meta_checkpoint: str, image_shape: tuple[int, int, int],
                  config: gen_lib.GeneratorConfig) -> dict[str, object]:
    """``{"meta_start", "meta_noise"}`` for a meta-training checkpoint (module docstring).

    ``meta_start`` is ``generator.random_generator`` of the run's seed (the ``meta.init =
    "random"`` start); ``meta_noise`` adds to each tensor Gaussian noise whose rms is that
    tensor's rms displacement between the start and the checkpoint. Both are mapped to
    ``image_shape``'s channels like the checkpoint (fixed adaptors).
    """
    _, meta = checkpoint.read_meta(meta_checkpoint)
    info = meta.get("info", {})
    if info.get("meta", {}).get("init") != "random":
        raise ValueError(f"--v2_controls needs a checkpoint meta-trained from a random start "
                         f"(meta.init=random); {meta_checkpoint} has "
                         f"{info.get('meta', {}).get('init')!r}")
    stored = gen_lib.GeneratorConfig.from_dict(meta["generator"])
    src_shape = (*image_shape[:2], stored.image_channels)
    k_init = jax.random.split(jax.random.key(int(info["seed"])))[0]
    s0 = jax.jit(gen_lib.random_generator, static_argnums=(1, 2))(k_init, src_shape, stored)
    trained, _ = checkpoint.load_generator(meta_checkpoint, stored, src_shape)
    leaves, tree = jax.tree.flatten(s0)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [a + jax.numpy.sqrt(jax.numpy.mean((b - a) ** 2)) * jax.random.normal(k, a.shape)
             for a, b, k in zip(leaves, jax.tree.leaves(trained), keys)]
    return {name: gen_lib.with_image_channels(p, image_shape, config)
            for name, p in (("meta_start", s0),
                            ("meta_noise", jax.tree.unflatten(tree, noisy)))}


def searched_start(search_json: str) -> tuple[str, int, float, float, float]:
    """``(name, core_seed, s, m, α)`` of a :mod:`experiments.meta_studies.start_search` winner."""
    with open(search_json) as fh:
        found = json.load(fh)
    best = found["best"]
    return (f"searched_{best['name']}", int(found["core_seed"]), float(best["scale"]),
            float(best["multiplier"]), float(best["learning_rate"]))


def starts_of(core_scales: list[float], v2_controls: bool, meta_checkpoint: str,
              search_json: str = ""):
    """``curve``'s ``extra_starts`` for the flags (module docstring)."""
    def extra(keys, ds, fit):
        found = {}
        if search_json:  # the searched start: the fixed core of the search, not the set's
            name, core_seed, s, m, _ = searched_start(search_json)
            found[name] = start_search.family_start(core_seed, ds.image_shape, fit.gen_config,
                                                    s, m)
        if core_scales:
            core = start.random_core(keys["generator"], ds.image_shape, fit.gen_config)
            for s in core_scales:
                found[f"core_s{s:g}"] = start.make_start(core, fit.gen_config, scale=s)
        if v2_controls:
            found.update(meta_controls(meta_checkpoint, ds.image_shape, fit.gen_config))
        return found
    return extra


def summarise(cells: dict[str, dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """``{start: {lr: {step: across_sets(...)}}}`` from cells keyed ``"[tag__]lr{lr}_set{r}"``,
    each an ``adaptation_curve.curve`` result. A (start, lr, set) that several cells hold
    (e.g. ``fresh`` run beside other starts) counts once."""
    table: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    for name in sorted(cells):
        lr, r = name.split("__")[-1][len("lr"):].split("_set")
        for start_name, c in cells[name]["curves"].items():
            for p in c["points"]:
                table.setdefault(start_name, {}).setdefault(lr, {}).setdefault(
                    str(p["step"]), {})[int(r)] = 100 * p["mean"]
    return {s: {lr: {step: across_sets([v[k] for k in sorted(v)])
                     for step, v in sorted(t.items(), key=lambda i: int(i[0]))}
                for lr, t in sorted(by_lr.items(), key=lambda i: float(i[0]))}
            for s, by_lr in sorted(table.items())}


def markdown(result: dict) -> str:
    steps = sorted({int(k) for s in result["table"].values() for t in s.values() for k in t})
    lines = [f"# {result['dataset']}, IPC {result['ipc']}: accuracy (%) after N steps, "
             f"complete runs, mean ± std across {result['sets']} distilled sets",
             "", "| start | α | " + " | ".join(str(s) for s in steps) + " |",
             "|---" * (len(steps) + 2) + "|"]
    for start_name, by_lr in result["table"].items():
        for lr, t in by_lr.items():
            row = [f"{t[str(s)]['mean']:.2f} ± {t[str(s)]['std']:.2f}" if str(s) in t else ""
                   for s in steps]
            lines.append(f"| {start_name} | {lr} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for start_name, by_lr in result["table"].items():
        for lr, t in by_lr.items():
            steps = sorted(int(s) for s in t)
            ax.errorbar(steps, [t[str(s)]["mean"] for s in steps],
                        yerr=[t[str(s)]["std"] for s in steps], fmt="o-", capsize=3,
                        label=f"{start_name}, α={lr}")
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
        core_scales = [float(a) for a in f.core_scales]
        if not at or at[0] < 0 or not lrs or min(lrs) <= 0 or f.sets < 1:
            raise ValueError("--at must list steps >= 0, --lrs rates > 0, --sets >= 1")
        if f.v2_controls and not config.meta_checkpoint:
            raise ValueError("--v2_controls needs --meta_checkpoint (a random-start meta run)")
        # The cells of one set of starts; "fresh" alone keeps the bare names.
        tag = "+".join(["fresh"] * f.fresh + [f"core{s:g}" for s in core_scales]
                       + ["searched"] * bool(f.search)
                       + ["meta"] * bool(config.meta_checkpoint) + ["scratch"] * f.scratch
                       + ["v2controls"] * f.v2_controls)
        if not tag:
            raise ValueError("no start to run: give --fresh, --core_scales, --scratch or a "
                             "--meta_checkpoint")
        if f.search:
            searched_start(f.search)  # an unreadable file fails here
        extra = starts_of(core_scales, f.v2_controls, config.meta_checkpoint, f.search)
        out = config.out
        outputs.check_resumable_out(out)
        cells_dir = os.path.join(out, "cells")
        os.makedirs(cells_dir, exist_ok=True)
    cells = {}
    base_seed = int(config.seed)
    for lr in lrs:
        for r in range(f.sets):
            name = ("" if tag == "fresh" else f"{tag}__") + f"lr{lr:g}_set{r}"
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
                cells[name] = adaptation_curve.curve(
                    prep, at, schedule="complete", scratch=f.scratch, random_real=False,
                    extra_starts=extra, fresh=f.fresh)
            outputs.write_json(path, cells[name])
            print(f"cell {name} done", file=sys.stderr, flush=True)
    # The summary covers every cell of --out, this invocation's and earlier ones'.
    for fname in sorted(os.listdir(cells_dir)):
        if fname.endswith(".json") and fname[:-5] not in cells:
            with open(os.path.join(cells_dir, fname)) as fh:
                cells[fname[:-5]] = json.load(fh)
    ipc = next(iter(cells.values()))["ipc"]
    result = {"dataset": config.dataset, "ipc": ipc, "at": at, "lrs": lrs, "sets": f.sets,
              "base_seed": base_seed, "meta_checkpoint": config.meta_checkpoint,
              "table": summarise(cells)}
    # Each summary file is written atomically beside cells/ (the cells stay for reruns).
    cli.write_summary(out, "controls", result, markdown, plot)


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_list("at", ["50", "100", "200"], "Step counts, each a complete run.")
    flags.DEFINE_list("lrs", ["1e-4"], "Adaptation learning rates α.")
    flags.DEFINE_integer("sets", 3, "Distilled sets R (seeds --seed .. --seed+R-1).")
    flags.DEFINE_bool("scratch", False, "Also adapt from a random generator.")
    flags.DEFINE_bool("fresh", True, "Adapt from the fresh (identity) generator.")
    flags.DEFINE_list("core_scales", [], "Output-residual scales s of core starts "
                      "(mgdd_jax.start), e.g. 1 for scratch with fixed adaptors.")
    flags.DEFINE_string("search", "", "Also the winner of this start_search search.json "
                        "(its fixed core, s and m; the rate is --lrs').")
    flags.DEFINE_bool("v2_controls", False, "Also the meta checkpoint's own random start and "
                      "that start plus noise of its per-tensor rms displacement.")
    app.run(main, argv=cli.with_config_names(sys.argv, distill.DEFAULT_CONFIG))
