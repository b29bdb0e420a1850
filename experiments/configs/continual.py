r"""Config of the continual-learning experiment (`python -m experiments.paper.continual`, Fig. 5).

    python -m experiments.paper.continual --config=experiments/configs/continual.py:cpu \
        --out=results/paper/continual_fmnist

Built on the benchmark config of the same variant (the distill sizes and evaluation protocol,
FRePo's settings for the ``frepo`` buffer baseline), plus the stream: ``num_tasks`` equal
class groups in class order, ``ipc`` buffer images per class, the ``modes`` to compare
(``mgdd_jax.continual.MODES``). ``adapt.steps`` is each task's adaptation (or FRePo) budget.
"""

from __future__ import annotations

import ml_collections

from mgdd_jax.configs import benchmark as benchmark_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    c = benchmark_config.get_config(variant)
    for unused in ("methods", "snapshot_steps", "long"):
        del c[unused]
    c.num_tasks = 5  # Fashion-MNIST: 5 tasks of 2 classes (CIFAR-100: 10 tasks of 10)
    c.ipc = "10"  # buffer images per class
    c.modes = "meta,previous,first,frepo"
    c.out = ""  # required
    if variant == "smoke":
        c.ipc = "1"
        c.dataset = "digits"
    return c
