"""The one optimiser factory of the library: Adam with cosine decay (Tab. 7).

Adaptation (Alg. 2 l. 12, α) and the meta update (Alg. 1 l. 19, β) both use it.
"""

from __future__ import annotations

import optax


def adam_cosine(learning_rate: float, steps: int, final_lr_fraction: float, b1: float = 0.9,
                b2: float = 0.999) -> optax.GradientTransformation:
    """Adam whose learning rate decays by a cosine from ``learning_rate`` to
    ``final_lr_fraction * learning_rate`` over ``steps`` (Tab. 7: η = 0.1)."""
    schedule = optax.cosine_decay_schedule(learning_rate, max(int(steps), 1),
                                           alpha=final_lr_fraction)
    return optax.adam(schedule, b1=b1, b2=b2)
