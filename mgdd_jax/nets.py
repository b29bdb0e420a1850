"""FRePo's ConvNet in Flax linen: the random feature network θ of Eq. 1 / Eq. 3 and the
evaluation network.

``depth`` blocks of [3×3 conv → norm → ReLU → 2×2 average pool], widths ``w`` constant or
doubling per block (``w, 2w, 4w``), then the flattened map is the feature vector ``f_θ(x)`` and
a dense layer gives the logits. Alg. 1 line 5 and Alg. 2 line 10 draw a fresh θ* at every step:
that is :func:`init_feature_params` with a new key.

Reference: Zhou et al., "Dataset Distillation using Neural Feature Regression" (FRePo), 2022,
the ``Conv`` model; MGDD Sec. 4.2 uses the same 3-layer ConvNet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mgdd_jax import conv

NORMS: tuple[str, ...] = ("none", "batch", "instance", "layer")


@dataclasses.dataclass(frozen=True)
class ConvNetConfig:
    """Architecture of the ConvNet.

    Attributes:
      width: channels of the first block.
      depth: number of conv blocks (3 in FRePo and MGDD).
      double_width: widths ``w, 2w, 4w, ...`` when True, constant ``w`` when False.
      norm: ``"none"``, ``"batch"``, ``"instance"`` or ``"layer"``.
      num_classes: size of the logits layer.
    """

    width: int = 128
    depth: int = 3
    double_width: bool = False
    norm: str = "instance"
    num_classes: int = 10

    def __post_init__(self):
        if self.width < 1 or self.depth < 1 or self.num_classes < 1:
            raise ValueError(
                f"width, depth and num_classes must be >= 1, got width={self.width}, "
                f"depth={self.depth}, num_classes={self.num_classes}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    def widths(self) -> tuple[int, ...]:
        return tuple(self.width * (2**i if self.double_width else 1) for i in range(self.depth))

    def feature_dim(self, image_shape: Sequence[int]) -> int:
        """``p``, the length of ``f_θ(x)`` for ``(H, W, C)`` images ('SAME' pooling: ceil)."""
        h, w = image_shape[0], image_shape[1]
        for _ in range(self.depth):
            h, w = -(-h // 2), -(-w // 2)
        return h * w * self.widths()[-1]


def _norm_layer(norm: str, train: bool) -> nn.Module | None:
    if norm == "none":
        return None
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9)
    if norm == "instance":
        return nn.InstanceNorm()
    return nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=-1)


class ConvNet(nn.Module):
    """FRePo ConvNet. ``__call__(x, train)`` returns ``(features, logits)``.

    Batch norm uses batch statistics when ``train=True`` (feature sampling and evaluation
    training) and running averages otherwise; the other norms act per sample.
    """

    config: ConvNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        for width in self.config.widths():
            x = nn.Conv(width, (3, 3), padding="SAME",
                        conv_general_dilated=conv.conv_general_dilated)(x)
            norm = _norm_layer(self.config.norm, train)
            if norm is not None:
                x = norm(x)
            x = nn.relu(x)
            x = nn.avg_pool(
                x, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False
            )
        features = x.reshape((x.shape[0], -1))
        logits = nn.Dense(self.config.num_classes)(features)
        return features, logits


def _check_images(x: Any, what: str = "images") -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(
            f"{what} must be a 4-D NHWC batch, got shape {getattr(x, 'shape', None)}; "
            "add a batch axis (x[None]) or a channel axis (x[..., None])."
        )


def init_feature_params(
    key: chex.PRNGKey, input_shape: Sequence[int], config: ConvNetConfig
) -> dict[str, Any]:
    """Draw a fresh random network θ (Alg. 1 line 5, Alg. 2 line 10).

    Args:
      key: PRNG key; a new key gives a new θ.
      input_shape: ``(H, W, C)`` of one image.
      config: the architecture.

    Returns:
      The flax variables dict (``{"params": ...}`` plus ``"batch_stats"`` for batch norm).
      Pure and jit-able (``input_shape`` and ``config`` static).
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    return ConvNet(config).init(key, dummy, train=False)


def conv_features(
    variables: dict[str, Any], x: chex.Array, config: ConvNetConfig
) -> jax.Array:
    """``f_θ(x)``: flattened penultimate features ``(n, p)`` (batch norm: batch statistics)."""
    _check_images(x)
    if config.norm == "batch":
        (features, _), _ = ConvNet(config).apply(
            variables, x, train=True, mutable=["batch_stats"]
        )
    else:
        features, _ = ConvNet(config).apply(variables, x, train=False)
    return features


def conv_logits(
    variables: dict[str, Any], x: chex.Array, config: ConvNetConfig
) -> jax.Array:
    """The ConvNet's logits ``(n, num_classes)`` (batch norm: batch statistics), e.g. for the
    cross-entropy of DC's gradient matching (:func:`mgdd_jax.objective.dc_objective`)."""
    _check_images(x)
    if config.norm == "batch":
        (_, logits), _ = ConvNet(config).apply(
            variables, x, train=True, mutable=["batch_stats"]
        )
    else:
        _, logits = ConvNet(config).apply(variables, x, train=False)
    return logits
