"""The one bridge from an explicit JAX key to NumPy randomness (host-side sampling)."""

from __future__ import annotations

import chex
import jax
import numpy as np


def numpy_rng(key: chex.PRNGKey, *tags: int) -> np.random.Generator:
    """A NumPy ``Generator`` seeded from ``key``'s data and optional integer ``tags``.

    Deterministic in (key, tags), no global state: the same key always gives the same stream.
    """
    data = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel().tolist()
    return np.random.default_rng([*data, *(int(t) for t in tags)])
