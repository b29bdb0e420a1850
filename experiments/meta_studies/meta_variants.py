r"""Compare meta-learning variants on their validation bank (issue 10, item 2).

    python -m experiments.meta_studies.meta_variants \
        --runs=reptile:runs/split_reptile,fomaml:runs/split_fomaml,maml:runs/split_maml,alg1:runs/split_alg1 \
        --out=results/meta_studies/meta_variants_fmnist_0-4

Reads each meta-training workdir's ``metrics.jsonl`` and ``config.json`` (runs of
``experiments/configs/meta_fmnist_split.py``'s or ``meta_sources.py``'s variants share one
validation bank: same ``val`` subtree and bank dataset, ``val.source`` or else the run's) and
writes ``comparison.json`` (per run: the bank's ``val_gap`` and ``val_ratio`` at every
scored step, meta step time, mean ``grad_agreement`` and ``inner_displacement``),
``comparison.md`` (the table at the steps all runs reached) and ``comparison.png``
(``val_ratio`` against meta steps and against wall time). Refuses runs whose banks differ.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from experiments import cli
from mgdd_jax import meta, outputs

MEAN_LAST = 4  # scores after step 0 averaged in the table's last column

_RUNS = flags.DEFINE_list("runs", None, "name:workdir pairs.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")


def parse_runs(items: list[str]) -> dict[str, str]:
    runs = {}
    for item in items:
        name, sep, path = item.partition(":")
        if not sep or not name or not path:
            raise ValueError(f"--runs item {item!r} must be name:workdir")
        if name in runs:
            raise ValueError(f"--runs names {name!r} twice")
        if not os.path.isfile(os.path.join(path, "metrics.jsonl")):
            raise ValueError(f"{path} has no metrics.jsonl; is it a meta_train --workdir?")
        runs[name] = path
    return runs


def cumulative_time(rows: list[dict]) -> list[dict]:
    """``time_s`` counts from the start of each (resumed) run of a workdir; make it count
    across runs: a row whose time is below its predecessor's starts a new run, offset by the
    previous run's last logged time (its setup and compile before the first step are not
    counted)."""
    out, offset, prev = [], 0.0, 0.0
    for r in rows:
        if r["time_s"] < prev:
            offset += prev
        prev = r["time_s"]
        out.append({**r, "time_s": r["time_s"] + offset})
    return out


def summarise(name: str, path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    rows = cumulative_time(outputs.read_jsonl(os.path.join(path, "metrics.jsonl")))
    val = [r for r in rows if "val_gap" in r]
    train = [r for r in rows if "meta_loss" in r]
    times = np.diff([r["time_s"] for r in train])
    steps = np.diff([r["step"] for r in train])
    per_step = float(np.median(times[1:] / steps[1:])) if len(times) > 1 else float("nan")
    return {
        "name": name, "workdir": path, "meta": config["meta"], "val_config": config["val"],
        "source": config["source"],
        # the bank's own dataset: val.source ("" or absent in older runs: the run's source)
        "bank_source": config["val"].get("source") or config["source"],
        "val": [{k: r[k] for k in ("step", "time_s", "val_loss", "val_identity", "val_gap",
                                   "val_ratio")} for r in val],
        "seconds_per_meta_step": per_step,
        "mean_grad_agreement": float(np.mean([r["grad_agreement"] for r in train
                                              if "grad_agreement" in r] or [np.nan])),
        "mean_inner_displacement": float(np.mean([r["inner_displacement"] for r in train
                                                  if "inner_displacement" in r] or [np.nan])),
        "last_step": rows[-1]["step"] if rows else 0,
        # one score is noisy (4 tasks): the mean of the last few (not step 0's 1) says more
        "mean_last_ratio": float(np.mean([r["val_ratio"] for r in val if r["step"] > 0
                                          ][-MEAN_LAST:] or [np.nan])),
    }


def markdown(result: dict) -> str:
    runs = result["runs"]
    common = sorted(set.intersection(*[{v["step"] for v in r["val"]} for r in runs]))
    head = ("| variant | source | order | inner steps | support | initial set | ω at step 0 (λ) | "
            "tasks/step | outer lr | "
            "s/step | "
            "grad agreement | ‖ω'−ω‖ | " + " | ".join(f"ratio @ {s}" for s in common)
            + f" | last ratio (step) | mean of last {MEAN_LAST} |")
    lines = [head, "|" + "---|" * (14 + len(common))]
    for r in runs:
        m = meta.with_added_fields(r["meta"])  # older runs: the values they ran with
        by = {v["step"]: v for v in r["val"]}
        lines.append(
            f"| {r['name']} | {r['source']} | {m['order']} | {m['inner_steps']} × "
            f"{m['inner_opt']} α={m['inner_lr']:g} | "
            f"{m['support']} | {'fixed' if m['fixed_init'] else 'varied'} | "
            f"{m['init']} ({m['start_weight']:g}) | "
            f"{m['tasks_per_step']} | {m['outer_lr']:g} | "
            f"{r['seconds_per_meta_step']:.1f} | {r['mean_grad_agreement']:.3f} | "
            f"{r['mean_inner_displacement']:.3g} | "
            + " | ".join(f"{by[s]['val_ratio']:.4f}" for s in common)
            + f" | {r['val'][-1]['val_ratio']:.4f} ({r['val'][-1]['step']}) | "
            f"{r['mean_last_ratio']:.4f} |")
    v = runs[0]["val_config"]
    lines.append("")
    lines.append(f"ratio = bank loss after K = {v['steps']} adaptation steps (Adam, lr "
                 f"{v['learning_rate']:g}) from the meta generator / the same from the "
                 f"identity generator; {v['tasks']} tasks from {runs[0]['bank_source']}. "
                 "Below 1: adapting from it is ahead.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    plt = outputs.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for r in result["runs"]:
        steps = [v["step"] for v in r["val"]]
        ratio = [v["val_ratio"] for v in r["val"]]
        axes[0].plot(steps, ratio, "o-", label=r["name"], lw=1)
        axes[1].plot([v["time_s"] / 60 for v in r["val"]], ratio, "o-", label=r["name"], lw=1)
    for ax, xl in zip(axes, ("meta step", "meta-training wall time (min)")):
        ax.axhline(1.0, color="gray", ls=":", lw=1)
        ax.set_xlabel(xl)
        ax.set_ylabel("bank loss after K steps / identity's")
        ax.legend(fontsize=8)
    fig.suptitle(f"validation bank, {result['runs'][0]['bank_source']}", fontsize=10)
    outputs.save_figure(fig, path)


def compare(runs: dict[str, str]) -> dict:
    summaries = [summarise(n, p) for n, p in runs.items()]
    banks = {json.dumps([{k: v for k, v in s["val_config"].items() if k != "source"},
                         s["bank_source"]], sort_keys=True) for s in summaries}
    if len(banks) > 1:
        raise ValueError("the runs were scored on different validation banks (val subtree or "
                         "the bank's dataset differ); compare runs of one config file's "
                         "variants")
    if any(not s["val"] for s in summaries):
        raise ValueError("a run has no validation rows (val.tasks=0, or stopped before "
                         "val.every steps)")
    return {"runs": summaries}


def main(argv):
    del argv
    with cli.exit_on_bad_input():
        runs = parse_runs(_RUNS.value)
        out = outputs.check_output_dir(_OUT.value, overwrite=_OVERWRITE.value)
        result = compare(runs)
    with outputs.atomic_dir(out) as tmp:
        outputs.write_json(os.path.join(tmp, "comparison.json"), result)
        outputs.write_text(os.path.join(tmp, "comparison.md"), markdown(result))
        plot(result, os.path.join(tmp, "comparison.png"))
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
