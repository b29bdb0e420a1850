r"""Issue 30, item 2: learn the start's few numbers (s, m, α) per IPC on source tasks only.

    python -m experiments.meta_studies.start_search --ipc=1 --out=results/meta_studies/start_search_ipc1

The start family is :mod:`mgdd_jax.start`: one fixed random core C (drawn from
``--core_seed``, the core a shipped start would carry), its output residual × s and every
block's kernel × m (one multiplier for all six blocks: a per-block search is 6× the
candidates this CPU cannot afford), adapted at learning rate α. The grid is
``--scales`` × ``--multipliers`` × ``--lrs``.

**Source tasks, never the target.** Task k is 10 glyph classes (characters of the installed
fonts, :mod:`mgdd_jax.data.glyphs`), classes 10k..10k+9 of one 100-class corpus at 28×28,
as the corpus's grey masks (bright glyph on a dark ground, like the target's images; the
``glyphs`` source's random colours make IPC 1 near chance), so that the core sees the
target's channels through the same fixed adaptors: written once to ``--task_dir`` as ``npz``
files (150 train / 50 test images per class, flips off). Fashion-MNIST is never read.

**The score is what users get:** test accuracy of the task after a complete Alg. 2 run of
``--steps`` steps at the IPC's label mode (``label_mode=auto``: one-hot at IPC 1, Eq. 3
above), evaluated by ``--config.eval.num_seeds`` networks of the cpu protocol (1 by default
here: the noise is averaged over tasks instead).

**Successive halving** (Jamieson & Talwalkar 2016, η = ``--eta``): round 0 scores every
candidate on ``--first_tasks`` tasks; each later round keeps the best 1/η by the mean over all
tasks it has seen and adds ``--more_tasks`` new tasks. Chosen over an evolution strategy
because the score is expensive (a whole distillation and a network trained from scratch) and
noisy (50 test images per class, one network): halving spends the evaluations on the contenders, and with
a 3-number grid there is no gradient-like structure for an ES to exploit.

Resumable per (task, α): the scores of one task's candidates at one α are written to
``cells/`` as soon as that group is done. Writes
``search.json``, ``search.md`` and ``search.png``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys

import jax
import numpy as np
from absl import app, flags

from experiments import cli, distill
from experiments.paper import adaptation_curve
from mgdd_jax import outputs, start
from mgdd_jax.data import glyph_format, glyphs, sources

CORPUS = "glyphs:classes=100,per_class=200,size=28"
CLASSES_PER_TASK = 10
TEST_FRACTION = 0.25
TASK_SPLIT_SEED = 30


def make_tasks(task_dir: str, n_tasks: int, corpus_name: str = CORPUS) -> list[str]:
    """``npz:`` dataset names of ``n_tasks`` grey 10-class glyph tasks (module docstring) of
    the glyph corpus ``corpus_name``, written to ``task_dir`` on first use (a task file
    already there is kept: give each corpus its own ``task_dir``)."""
    spec = glyphs.parse_spec(corpus_name.partition(":")[2])
    max_tasks = spec.num_classes // CLASSES_PER_TASK
    if not 1 <= n_tasks <= max_tasks:
        raise ValueError(f"the glyph corpus holds {max_tasks} tasks of {CLASSES_PER_TASK} "
                         f"classes; asked for {n_tasks}")
    os.makedirs(task_dir, exist_ok=True)
    names = []
    corpus = None
    for k in range(n_tasks):
        path = os.path.abspath(os.path.join(task_dir, f"glyph_task{k}.npz"))
        if not os.path.exists(path):
            if corpus is None:
                sources.load_raw(corpus_name)  # renders the corpus into the cache once
                corpus, _ = glyphs.load_corpus(glyph_format.default_corpus_path(
                    spec.num_classes, spec.per_class, spec.image_size, spec.seed))
                train, test = glyphs.split_per_class(glyph_format.corpus_key(TASK_SPLIT_SEED),
                                                     corpus.labels, TEST_FRACTION)
            lo = k * CLASSES_PER_TASK
            arrays = {}
            for split, idx in (("train", train), ("test", test)):
                y = corpus.labels[idx]
                keep = idx[(y >= lo) & (y < lo + CLASSES_PER_TASK)]
                arrays[f"x_{split}"] = corpus.masks[keep]
                arrays[f"y_{split}"] = (corpus.labels[keep] - lo).astype(np.int32)
            with outputs.atomic_path(path, ".npz") as tmp:
                np.savez(tmp, **arrays)
        names.append(f"npz:{path},flip=0")
    return names


def family_start(core_seed: int, image_shape: tuple[int, int, int], gen_config,
                 s: float, m: float):
    """The searched family's ω₀: core ``core_seed``, residual × ``s``, every block's kernel
    × ``m`` (:func:`mgdd_jax.start.make_start`)."""
    core = start.random_core(jax.random.key(core_seed), image_shape, gen_config)
    return start.make_start(core, gen_config, scale=s, multipliers=dict.fromkeys(start.BLOCKS, m))


def candidate_name(s: float, m: float, lr: float) -> str:
    return f"s{s:g}_m{m:g}_lr{lr:g}"


def halving_rounds(n_candidates: int, eta: int, first: int, more: int, n_tasks: int
                   ) -> list[tuple[int, int]]:
    """``[(candidates scored, tasks seen), ...]`` of successive halving: the last round is
    the one whose 1/eta would leave a single candidate (the best of it wins), or the one
    that has seen every task."""
    if eta < 2 or first < 1 or more < 1 or n_candidates < 1:
        raise ValueError("--eta must be >= 2, --first_tasks and --more_tasks >= 1")
    rounds, kept, seen = [], n_candidates, min(first, n_tasks)
    while True:
        rounds.append((kept, seen))
        if math.ceil(kept / eta) == 1 or seen >= n_tasks:
            return rounds
        kept, seen = math.ceil(kept / eta), min(n_tasks, seen + more)


def main(argv):
    del argv
    cli.quiet_library_logs()
    f = flags.FLAGS
    with cli.exit_on_bad_input():
        config = distill.config_from_flags()
        grid = [(float(s), float(m), float(lr)) for s, m, lr in itertools.product(
            f.scales, f.multipliers, f.lrs)]
        if not grid or min(g[1] for g in grid) <= 0 or min(g[2] for g in grid) <= 0 \
                or min(g[0] for g in grid) < 0:
            raise ValueError("--scales must be >= 0, --multipliers and --lrs > 0, none empty")
        rounds = halving_rounds(len(grid), f.eta, f.first_tasks, f.more_tasks, f.tasks)
        out = outputs.check_resumable_out(config.out)
        cells_dir = os.path.join(out, "cells")
        os.makedirs(cells_dir, exist_ok=True)
        tasks = make_tasks(f.task_dir, f.tasks, f.corpus)
    scores: dict[str, dict[int, float]] = {candidate_name(*g): {} for g in grid}
    alive = list(grid)
    history = []
    for r, (n_keep, n_seen) in enumerate(rounds):
        if r > 0:  # keep the best n_keep by the mean over the tasks seen so far
            alive.sort(key=lambda g: -np.mean(list(scores[candidate_name(*g)].values())))
            alive = alive[:n_keep]
        for t in range(n_seen):
            for lr in sorted({g[2] for g in alive}):
                todo = [g for g in alive if g[2] == lr]
                paths = {g: os.path.join(cells_dir, f"task{t}__{candidate_name(*g)}.json")
                         for g in todo}
                for g, p in paths.items():
                    if os.path.exists(p):
                        with open(p) as fh:
                            scores[candidate_name(*g)][t] = json.load(fh)["accuracy"]
                missing = [g for g in todo if t not in scores[candidate_name(*g)]]
                if not missing:
                    continue
                with config.unlocked():
                    config.dataset = tasks[t]
                    config.seed = int(f.seed_base) + t
                    config.adapt.learning_rate = lr
                    config.overwrite = True
                    config.meta_checkpoint = ""  # the family's starts only
                with cli.exit_on_bad_input():
                    prep = distill.prepare(config)

                def extra(keys, ds, fit, missing=missing):
                    return {candidate_name(*g): family_start(f.core_seed, ds.image_shape,
                                                             fit.gen_config, g[0], g[1])
                            for g in missing}

                with cli.exit_on_failed_run(out):
                    res = adaptation_curve.curve(prep, [f.search_steps], schedule="complete",
                                                 random_real=False, extra_starts=extra,
                                                 fresh=False)
                for g in missing:
                    name = candidate_name(*g)
                    acc = 100 * res["curves"][name]["points"][0]["mean"]
                    scores[name][t] = acc
                    outputs.write_json(paths[g], {"accuracy": acc, "task": tasks[t],
                                                  "candidate": name, "steps": f.search_steps,
                                                  "seed": config.seed})
                    print(f"round {r} task {t} {name}: {acc:.2f}%", file=sys.stderr,
                          flush=True)
        history.append({"round": r, "tasks_seen": n_seen,
                        "candidates": {candidate_name(*g): float(np.mean(
                            [scores[candidate_name(*g)][t] for t in range(n_seen)]))
                            for g in alive}})
    best = max(alive, key=lambda g: np.mean(list(scores[candidate_name(*g)].values())))
    result = {"ipc": int(config.ipc), "steps": f.search_steps, "core_seed": f.core_seed,
              "tasks": tasks, "grid": [candidate_name(*g) for g in grid],
              "eval_networks": int(config.eval.num_seeds), "rounds": history,
              "scores": {k: {str(t): v for t, v in sorted(d.items())}
                         for k, d in scores.items()},
              "best": {"name": candidate_name(*best), "scale": best[0], "multiplier": best[1],
                       "learning_rate": best[2]}}
    cli.write_summary(out, "search", result, markdown, plot)


def markdown(result: dict) -> str:
    lines = [f"# Start search on grey glyph tasks, IPC {result['ipc']}, {result['steps']} "
             f"steps, {result['eval_networks']} evaluation network(s) per task",
             "", "Mean test accuracy (%) over the tasks each round saw; one row per candidate "
             "(s: output-residual scale, m: kernel multiplier of every block, lr: α).", "",
             "| candidate | " + " | ".join(f"round {h['round']} ({h['tasks_seen']} tasks)"
                                           for h in result["rounds"]) + " |",
             "|---" * (len(result["rounds"]) + 1) + "|"]
    # the rounds a candidate survived first (survival is nested), then its round-0 mean
    order = sorted(result["grid"], key=lambda n: (
        -sum(n in h["candidates"] for h in result["rounds"]),
        -result["rounds"][0]["candidates"][n]))
    for name in order:
        cells = [f"{h['candidates'][name]:.2f}" if name in h["candidates"] else ""
                 for h in result["rounds"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Best: **{result['best']['name']}**."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in result["grid"]:
        xs = [h["round"] for h in result["rounds"] if name in h["candidates"]]
        ys = [h["candidates"][name] for h in result["rounds"] if name in h["candidates"]]
        ax.plot(xs, ys, "o-", lw=1, ms=3, label=name if len(xs) > 1 else None)
    ax.set_xticks(range(len(result["rounds"])))
    outputs.finish_line_plot(fig, ax, path, xlabel="halving round",
                             ylabel="mean task accuracy (%)",
                             title=f"start search, IPC {result['ipc']}, {result['steps']} steps")


if __name__ == "__main__":
    distill.define_flags()
    flags.DEFINE_list("scales", ["0", "0.3", "1"], "Output-residual scales s.")
    flags.DEFINE_list("multipliers", ["0.3", "1", "3"], "Kernel multipliers m (all blocks).")
    flags.DEFINE_list("lrs", ["1e-3", "3e-3"], "Adaptation learning rates α.")
    flags.DEFINE_integer("search_steps", 100, "Adaptation steps of each scored run (complete).")
    flags.DEFINE_integer("tasks", 10, "Source tasks available (at most 10).")
    flags.DEFINE_integer("first_tasks", 2, "Tasks of round 0.")
    flags.DEFINE_integer("more_tasks", 3, "Tasks added by each later round.")
    flags.DEFINE_integer("eta", 3, "Successive halving keeps 1/eta per round.")
    flags.DEFINE_integer("core_seed", 0, "Seed of the fixed random core.")
    flags.DEFINE_integer("seed_base", 1000, "Task t's distilled-set seed is seed_base + t.")
    flags.DEFINE_string("task_dir", "runs/start_search_tasks", "Where the tasks' npz live.")
    flags.DEFINE_string("corpus", CORPUS, "The glyph corpus the tasks are cut from.")
    app.run(main, argv=cli.with_config_names(sys.argv, distill.DEFAULT_CONFIG))
