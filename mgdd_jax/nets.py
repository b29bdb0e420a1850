"""FRePo's ConvNet in Flax linen: the random feature network θ of Eq. 1 / Eq. 3 and the
evaluation network; and the unseen evaluation architectures of MGDD Tab. 4 (AlexNet, VGG11,
ResNet18) in the variants FRePo evaluates with (``lib/models/networks.py`` of yongchaoz/FRePo,
read for the definitions; our own code):

* ``alexnet``: conv 5×5 128 → pool → conv 5×5 192 → pool → conv 3×3 256 → conv 3×3 192 →
  conv 3×3 192 → pool → dense, ReLU after every conv, no normalisation (FRePo's and DC's
  AlexNet have none).
* ``vgg11``: VGG11's layout (8 convs 3×3, 5 pools) with every conv 128 wide, FRePo's variant
  (not the 64…512 widths of the original), ``norm`` after every conv.
* ``resnet18``: stem conv 3×3 64 (stride 1), four stages of two basic blocks (64, 128, 256, 512;
  strides 1, 2, 2, 2; 1×1 projection shortcuts where the shape changes), convs without bias,
  the flattened map to the dense layer (no global pooling), as FRePo's ``ResNet18``.

Pools are 2×2 averages (FRePo's ``script/eval.py`` passes ``pooling='avg'``) with 'SAME'
padding, so odd sizes shrink by ceil. Grey inputs: the first conv of AlexNet and VGG11 pads 2
more pixels per side, so a 28×28 image maps as a 32×32 one (as FRePo and DC do). FRePo's ResNet
blocks never receive the normalisation argument; ours apply ``norm`` in every block (the
evaluation protocols use ``norm="none"``, where the two agree).

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
ARCHS: tuple[str, ...] = ("convnet", "alexnet", "vgg11", "resnet18")


@dataclasses.dataclass(frozen=True)
class ConvNetConfig:
    """Architecture of the ConvNet.

    Attributes:
      width: channels of the first block.
      depth: number of conv blocks (3 in FRePo and MGDD).
      double_width: widths ``w, 2w, 4w, ...`` when True, constant ``w`` when False.
      norm: ``"none"``, ``"batch"``, ``"instance"`` or ``"layer"``.
      num_classes: size of the logits layer.
      arch: ``"convnet"`` (this ConvNet; ``width``, ``depth`` and ``double_width`` apply) or an
        unseen evaluation architecture of Tab. 4 (``ARCHS``; fixed widths, see the module
        docstring).
    """

    width: int = 128
    depth: int = 3
    double_width: bool = False
    norm: str = "instance"
    num_classes: int = 10
    arch: str = "convnet"

    def __post_init__(self):
        if self.width < 1 or self.depth < 1 or self.num_classes < 1:
            raise ValueError(
                f"width, depth and num_classes must be >= 1, got width={self.width}, "
                f"depth={self.depth}, num_classes={self.num_classes}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose from {ARCHS}")
        if self.arch == "alexnet" and self.norm != "none":
            raise ValueError(f"alexnet has no normalisation layers (as FRePo's and DC's); use "
                             f"norm='none', got {self.norm!r}")

    def widths(self) -> tuple[int, ...]:
        return tuple(self.width * (2**i if self.double_width else 1) for i in range(self.depth))

    def feature_dim(self, image_shape: Sequence[int]) -> int:
        """``p``, the length of ``f_θ(x)`` for ``(H, W, C)`` images ('SAME' pooling: ceil)."""
        if self.arch != "convnet":
            x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
            variables = jax.eval_shape(lambda: init_feature_params(jax.random.key(0),
                                                                   tuple(image_shape), self))
            feats = jax.eval_shape(lambda v, x: conv_features(v, x, self), variables, x)
            return int(feats.shape[-1])
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
                        conv_general_dilated=conv.default_conv())(x)
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


def _pool(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)


def _first_padding(x: jax.Array, kernel: int) -> Any:
    """'SAME', plus 2 pixels per side for grey inputs (FRePo's AlexNet / VGG / Conv)."""
    if x.shape[-1] == 1:
        p = kernel // 2 + 2
        return ((p, p), (p, p))
    return "SAME"


def _maybe_norm(x: jax.Array, norm: str, train: bool) -> jax.Array:
    layer = _norm_layer(norm, train)
    return x if layer is None else layer(x)


class AlexNet(nn.Module):
    """Tab. 4's AlexNet (module docstring). ``__call__(x, train)`` -> ``(features, logits)``."""

    config: ConvNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        x = _pool(nn.relu(nn.Conv(128, (5, 5), padding=_first_padding(x, 5))(x)))
        x = _pool(nn.relu(nn.Conv(192, (5, 5), padding="SAME")(x)))
        x = nn.relu(nn.Conv(256, (3, 3), padding="SAME")(x))
        x = nn.relu(nn.Conv(192, (3, 3), padding="SAME")(x))
        x = _pool(nn.relu(nn.Conv(192, (3, 3), padding="SAME")(x)))
        features = x.reshape((x.shape[0], -1))
        return features, nn.Dense(self.config.num_classes)(features)


VGG11_LAYOUT: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512,
                                       512, "M")


class VGG11(nn.Module):
    """Tab. 4's VGG11, FRePo's variant: every conv 128 wide (module docstring)."""

    config: ConvNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        first = True
        for item in VGG11_LAYOUT:
            if item == "M":
                x = _pool(x)
                continue
            x = nn.Conv(128, (3, 3), padding=_first_padding(x, 3) if first else "SAME")(x)
            first = False
            x = nn.relu(_maybe_norm(x, self.config.norm, train))
        features = x.reshape((x.shape[0], -1))
        return features, nn.Dense(self.config.num_classes)(features)


class _BasicBlock(nn.Module):
    features: int
    stride: int
    norm: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = (self.stride, self.stride)
        h = nn.Conv(self.features, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False)(x)
        h = nn.relu(_maybe_norm(h, self.norm, train))
        h = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(h)
        h = _maybe_norm(h, self.norm, train)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), strides=s, use_bias=False)(x)
            x = _maybe_norm(x, self.norm, train)
        return nn.relu(h + x)


class ResNet18(nn.Module):
    """Tab. 4's ResNet18 as FRePo's: stride-1 stem, no global pooling (module docstring)."""

    config: ConvNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        norm = self.config.norm
        x = nn.Conv(64, (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.relu(_maybe_norm(x, norm, train))
        for i, width in enumerate((64, 128, 256, 512)):
            for j in range(2):
                x = _BasicBlock(width, 2 if (i > 0 and j == 0) else 1, norm)(x, train)
        features = x.reshape((x.shape[0], -1))
        return features, nn.Dense(self.config.num_classes)(features)


def build_model(config: ConvNetConfig) -> nn.Module:
    """The flax module of ``config.arch``; every one maps ``(x, train)`` to
    ``(features, logits)``."""
    return {"convnet": ConvNet, "alexnet": AlexNet, "vgg11": VGG11,
            "resnet18": ResNet18}[config.arch](config)


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
    return build_model(config).init(key, dummy, train=False)


def _apply(variables: dict[str, Any], x: chex.Array,
           config: ConvNetConfig) -> tuple[jax.Array, jax.Array]:
    """``(features, logits)`` of ``config``'s network (batch norm: batch statistics)."""
    _check_images(x)
    if config.norm == "batch":
        out, _ = build_model(config).apply(variables, x, train=True, mutable=["batch_stats"])
        return out
    return build_model(config).apply(variables, x, train=False)


def conv_features(
    variables: dict[str, Any], x: chex.Array, config: ConvNetConfig
) -> jax.Array:
    """``f_θ(x)``: flattened penultimate features ``(n, p)`` (batch norm: batch statistics)."""
    return _apply(variables, x, config)[0]


def conv_logits(
    variables: dict[str, Any], x: chex.Array, config: ConvNetConfig
) -> jax.Array:
    """The ConvNet's logits ``(n, num_classes)`` (batch norm: batch statistics), e.g. for the
    cross-entropy of DC's gradient matching (:func:`mgdd_jax.objective.dc_objective`)."""
    return _apply(variables, x, config)[1]
