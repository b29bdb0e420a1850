"""Per-dataset settings, in one table (not if-chains across scripts).

A row holds what differs between datasets: preprocessing (ZCA, resize) and the evaluation
protocol's variant. ``settings_for(name)`` falls back to the ``"tfds:*"`` or ``"npz:*"`` row
for names not listed, and to ``"default"`` otherwise.
"""

from __future__ import annotations

from typing import Any

DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    # FRePo / MGDD: ZCA for the RGB benchmarks; none for MNIST-like grey data.
    "fashion_mnist": {"zca": False, "image_size": 0},
    "digits": {"zca": False, "image_size": 0},
    "tfds:mnist": {"zca": False, "image_size": 0},
    "tfds:fashion_mnist": {"zca": False, "image_size": 0},
    "tfds:cifar10": {"zca": True, "image_size": 0},
    "tfds:cifar100": {"zca": True, "image_size": 0},
    "tfds:svhn_cropped": {"zca": True, "image_size": 0},
    "tfds:imagenet_resized/32x32": {"zca": False, "image_size": 0},
    "tfds:*": {"zca": False, "image_size": 0},
    "npz:*": {"zca": False, "image_size": 0},
    "default": {"zca": False, "image_size": 0},
}


def settings_for(name: str) -> dict[str, Any]:
    """The table row of ``name`` (a copy)."""
    if name in DATASET_SETTINGS:
        return dict(DATASET_SETTINGS[name])
    prefix = name.split(":", 1)[0] + ":*" if ":" in name else "default"
    return dict(DATASET_SETTINGS.get(prefix, DATASET_SETTINGS["default"]))
