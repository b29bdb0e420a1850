r"""Issue 30's target table, ``start_targets.json``, from start_controls results.

    python -m experiments.meta_studies.start_targets \
        --controls=results/meta_studies/start_controls_fmnist_ipc1/controls.json,... \
        --start=fresh@0.001 --out=results/meta_studies/start_targets.json

For each IPC found in the ``--controls`` files (``experiments.meta_studies.start_controls``
outputs; several files of one IPC are merged, a (start, α, steps) cell present twice must
agree), three rows of ``{steps: [mean, std]}`` (accuracy in percent, std across distilled
sets) at 50, 100, 200 and 1000 steps:

* ``start``: the shipped start, ``--start=NAME@α`` (a start name of the controls and its rate);
* ``fresh``: the fresh start at α = 1e-4 (the old default);
* ``fresh_best_alpha``: the fresh start at the α with the best mean at 100 steps (its α is
  recorded), evaluated at every step count.

A cell not measured is ``null``: the table says what is missing rather than fill it in.
Also writes ``start_targets.md`` beside it, with each target's verdict.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments import cli
from mgdd_jax import outputs

STEPS = ("50", "100", "200", "1000")
FRESH_ALPHA = "0.0001"


def merge(tables: list[dict]) -> dict[int, dict]:
    """``{ipc: {start: {α: {steps: cell}}}}`` from controls.json payloads."""
    merged: dict[int, dict] = {}
    for t in tables:
        ipc = int(t["ipc"])
        for s, by_lr in t["table"].items():
            for lr, cells in by_lr.items():
                key = f"{float(lr):g}"
                for steps, cell in cells.items():
                    slot = merged.setdefault(ipc, {}).setdefault(s, {}).setdefault(key, {})
                    if steps in slot and slot[steps]["per_set"] != cell["per_set"]:
                        raise ValueError(f"IPC {ipc}, {s}, α={lr}, {steps} steps: two "
                                         "controls files disagree; pass one of them")
                    slot[steps] = cell
    return merged


def row(cells: dict | None) -> dict[str, list[float] | None]:
    cells = cells or {}
    return {n: [round(cells[n]["mean"], 2), round(cells[n]["std"], 2)] if n in cells else None
            for n in STEPS}


def targets(merged: dict[int, dict], start_name: str, start_lr: float,
            ipcs: tuple[int, ...] = (1, 10, 50)) -> dict:
    """Rows for every IPC of ``ipcs`` and of ``merged`` (an unmeasured IPC is all ``null``)."""
    out = {}
    for ipc in sorted(set(ipcs) | set(merged)):
        starts = merged.get(ipc, {})
        fresh = starts.get("fresh", {})
        at100 = {lr: c["100"]["mean"] for lr, c in fresh.items() if "100" in c}
        best = max(at100, key=at100.get) if at100 else None
        out[str(ipc)] = {
            "start": row(starts.get(start_name, {}).get(f"{start_lr:g}")),
            "fresh": row(fresh.get(f"{float(FRESH_ALPHA):g}")),
            "fresh_best_alpha": row(fresh.get(best)) if best else row(None),
            "best_alpha": float(best) if best else None,
            "start_name": start_name, "start_alpha": start_lr}
    return out


def verdicts(table: dict) -> list[str]:
    """The issue's two statements per IPC, as far as the cells allow."""
    lines = []
    for ipc, t in table.items():
        s, f, b = t["start"], t["fresh"], t["fresh_best_alpha"]
        if s["100"] and f["1000"]:
            ok = s["100"][0] >= f["1000"][0]
            lines.append(f"IPC {ipc}: start at 100 ({s['100'][0]:.2f}) "
                         f"{'>=' if ok else '<'} fresh α=1e-4 at 1000 ({f['1000'][0]:.2f}): "
                         f"{'met' if ok else 'missed'}")
        else:
            lines.append(f"IPC {ipc}: start at 100 vs fresh α=1e-4 at 1000: not measured")
        for n in ("50", "100", "200"):
            if s[n] and b[n]:
                gap = s[n][0] - b[n][0]
                ok = gap > max(s[n][1], b[n][1])
                lines.append(f"IPC {ipc}, {n} steps: start − best-α fresh = {gap:+.2f} "
                             f"(std {s[n][1]:.2f} / {b[n][1]:.2f}): "
                             f"{'met' if ok else 'missed'}")
            else:
                lines.append(f"IPC {ipc}, {n} steps: start vs best-α fresh: not measured")
    return lines


def markdown(table: dict) -> str:
    lines = ["# Issue 30's target table (accuracy %, mean ± std across distilled sets)", "",
             "| IPC | row | α | " + " | ".join(STEPS) + " |", "|---" * (len(STEPS) + 3) + "|"]
    for ipc, t in table.items():
        for name, alpha in (("start", t["start_alpha"]), ("fresh", float(FRESH_ALPHA)),
                            ("fresh_best_alpha", t["best_alpha"])):
            cells = [f"{v[0]:.2f} ± {v[1]:.2f}" if v else "—" for v in t[name].values()]
            label = f"start ({t['start_name']})" if name == "start" else name
            shown = f"{alpha:g}" if alpha is not None else "—"
            lines.append(f"| {ipc} | {label} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *[f"- {v}" for v in verdicts(table)]]) + "\n"


def main(argv):
    del argv
    f = flags.FLAGS
    with cli.exit_on_bad_input():
        name, _, lr = f.start.partition("@")
        if not name or not lr:
            raise ValueError(f"--start must be NAME@ALPHA, e.g. fresh@0.001; got {f.start!r}")
        tables = []
        for path in f.controls:
            with open(path) as fh:
                tables.append(json.load(fh))
        table = targets(merge(tables), name, float(lr), tuple(int(i) for i in f.ipcs))
    outputs.write_json(f.out, table)
    outputs.write_text(os.path.splitext(f.out)[0] + ".md", markdown(table))
    print(markdown(table), file=sys.stderr)


if __name__ == "__main__":
    flags.DEFINE_list("controls", [], "start_controls controls.json files.")
    flags.DEFINE_string("start", "fresh@0.001", "The shipped start's name and α, NAME@ALPHA.")
    flags.DEFINE_list("ipcs", ["1", "10", "50"], "IPCs the table always has (null if unmeasured).")
    flags.DEFINE_string("out", "results/meta_studies/start_targets.json", "Output JSON.")
    app.run(main)
