r"""The house-move check: SHA-256 of every ``ipc*.npz`` of a fixed set of short distill runs.

    python -m experiments.smoke_fingerprints --write   # record the reference (before a move)
    python -m experiments.smoke_fingerprints           # compare against it (after); rc 1 on a change

A move of code (files, packages, configs) must leave these bytes as they were: the same seeds
give the same synthetic sets. The runs are the ``smoke`` preset on two datasets, a multi-IPC
run, and two steps from the shipped meta generator (the asset loads as before). The reference
is ``results/smoke_fingerprints/fingerprints.json``; it holds for one machine kind and one set
of library versions (XLA:CPU here), so record it again before a move on another machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from mgdd_jax.configs.distill import SHIPPED_META_CHECKPOINT

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "results", "smoke_fingerprints", "fingerprints.json")

# name -> the launcher's arguments (the config is given by name so that it survives a move).
RUNS: dict[str, list[str]] = {
    "smoke_digits_ipc2": ["--config=smoke", "--dataset=digits", "--ipc=2"],
    "smoke_fmnist_ipc1_10": ["--config=smoke", "--dataset=fashion_mnist", "--ipc=1,10"],
    "shipped_fmnist_ipc1_2steps": [
        "--config=size=cpu,eval=smoke", "--dataset=fashion_mnist", "--ipc=1", "--steps=2",
        "--config.eval.enabled=False", f"--meta_checkpoint={SHIPPED_META_CHECKPOINT}"],
}

flags.DEFINE_bool("write", False, "Record the reference instead of comparing against it.")
flags.DEFINE_string("config_file", "",
                    "The distill config file the --config=NAME arguments refer to; '' = the "
                    "launcher's built-in variants.")


def _args(args: list[str]) -> list[str]:
    if not flags.FLAGS.config_file:
        return args
    return [f"--config={flags.FLAGS.config_file}:{a.split('=', 1)[1]}"
            if a.startswith("--config=") else a for a in args]


def fingerprints() -> dict[str, dict[str, str]]:
    found = {}
    for name, args in RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run")
            subprocess.run([sys.executable, "-m", "experiments.distill", *_args(args),
                            f"--out={out}"], check=True, stdout=subprocess.DEVNULL)
            found[name] = {f: hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest()
                           for f in sorted(os.listdir(out)) if f.endswith(".npz")}
        print(f"{name}: {found[name]}", file=sys.stderr)
    return found


def main(argv: list[str]) -> None:
    del argv
    found = fingerprints()
    if flags.FLAGS.write:
        os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
        with open(REFERENCE, "w") as f:
            json.dump({"runs": RUNS, "sha256": found}, f, indent=1)
        print(f"wrote {REFERENCE}", file=sys.stderr)
        return
    with open(REFERENCE) as f:
        want = json.load(f)["sha256"]
    bad = [n for n in want if found.get(n) != want[n]]
    if bad:
        print(f"error: ipc*.npz bytes changed for {bad}", file=sys.stderr)
        sys.exit(1)
    print(f"identical: {len(want)} runs, {sum(map(len, want.values()))} files", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
