"""Per-dataset settings for the launchers: the library's one table, as plain dicts.

The table itself is :data:`mgdd_jax.data.settings.DATASET_SETTINGS` (preprocessing and the
evaluation's flip rule, keyed by the names the loaders take); edit it there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mgdd_jax.data import settings as _settings


def settings_for(name: str) -> dict[str, Any]:
    """The table row of ``name`` as a dict (``zca``, ``image_size``, ``flip``)."""
    return dataclasses.asdict(_settings.settings_for(name))
