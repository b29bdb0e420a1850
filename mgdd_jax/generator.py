"""The synthetic-sample generator g_ω of MGDD (Sec. 3.3, App. A Fig. 7).

An encoder of three Conv-Norm-ReLU blocks with two 2×2 average-pool downsamplings, a size
embedding concatenated to the bottleneck, and a symmetric decoder with two upsamplings:

    x ─ [adaptor C→3] ─ enc(w) ─ pool ─ enc(2w) ─ pool ─ enc(4w) ─ ⊕ size emb ─ dec(2w) ─ up ─
        dec(w) ─ up ─ dec(w) ─ conv → r ─ [adaptor 3→C] ─ + x ─ out

Design choices (each documented where it is made):

* **Near identity at init.** The generator predicts a residual: ``g(x) = x + A_out(r(A_in x))``
  and the last convolution of ``r`` starts at zero, so a fresh generator is exactly the
  identity map and "from scratch" starts from the real initial images, as the meta generator
  does. Gradients still reach every layer from the second step on (the last conv gets a
  gradient at step one, as in zero-initialised residual branches).
* **Batch independence.** Normalisation is per sample (instance norm by default; the paper's
  Fig. 7 says BatchNorm, but Sec. 4.1 processes "each sample independently", and batch
  statistics would make a sample's output depend on its batch-mates).
* **Size embedding.** The synthetic-set size (images per class, a float) goes through
  sinusoids as in diffusion time-step embeddings, then a learnable MLP, and is broadcast over
  the bottleneck's positions and concatenated to it.
* **Any H×W.** Pools use 'SAME' padding (ceil) and upsampling resizes to the exact shape
  recorded on the way down, so odd sizes such as 27×29 work.
* **Channel adaptors (App. B).** With ``image_channels != core_channels`` a 1×1 conv maps
  C→3 at the input and 3→C at the output. They start as replicate (C→3) and average (3→C), so
  a grey image enters the core as the grey RGB image it was trained on, and
  ``A_out ∘ A_in = I`` for C = 1 (App. B draws them uniformly at random instead).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mgdd_jax import conv

GEN_NORMS: tuple[str, ...] = ("instance", "layer", "none")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator.

    Attributes:
      width: channels of the first encoder block (``w``; blocks use ``w, 2w, 4w`` when
        ``double_width`` else ``w, w, w``).
      double_width: widen the encoder per block.
      norm: per-sample normalisation, one of ``GEN_NORMS``.
      embed_dim: size of the sinusoidal size encoding.
      embed_channels: channels of the size embedding concatenated at the bottleneck.
      core_channels: channels the core works in (3: the meta generator is trained on RGB).
      image_channels: channels of the target images; adaptors are added when they differ.
      size_embedding: feed the IPC to the size embedding. False is Fig. 3's "w/o size
        embedding" ablation: the size input is 0 for every set, so the generator cannot tell
        sizes apart; the parameters are the same, so checkpoints load either way.
    """

    width: int = 64
    double_width: bool = False
    norm: str = "instance"
    embed_dim: int = 32
    embed_channels: int = 16
    core_channels: int = 3
    image_channels: int = 3
    size_embedding: bool = True

    def __post_init__(self):
        if min(self.width, self.embed_dim, self.embed_channels) < 1:
            raise ValueError("width, embed_dim and embed_channels must be >= 1")
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sin and cos halves), got {self.embed_dim}")
        if self.core_channels < 1 or self.image_channels < 1:
            raise ValueError("core_channels and image_channels must be >= 1")
        if self.norm not in GEN_NORMS:
            raise ValueError(f"generator norm must be one of {GEN_NORMS}, got {self.norm!r}")

    @property
    def has_adaptors(self) -> bool:
        return self.image_channels != self.core_channels

    def widths(self) -> tuple[int, int, int]:
        m = (1, 2, 4) if self.double_width else (1, 1, 1)
        return tuple(self.width * k for k in m)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        return cls(**d)


def size_encoding(size: chex.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal encoding of the synthetic-set size (as diffusion time-step embeddings).

    Args:
      size: images per class, scalar or ``(b,)`` (floats allowed).
      dim: even output size; half sines, half cosines over geometric frequencies.
      max_period: the slowest period.

    Returns:
      ``(b, dim)`` (or ``(1, dim)`` for a scalar) encodings.
    """
    size = jnp.atleast_1d(jnp.asarray(size, jnp.float32))
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = size[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class _Block(nn.Module):
    """Conv 3×3 → per-sample norm → ReLU."""

    features: int
    norm: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), padding="SAME",
                    conv_general_dilated=conv.default_conv())(x)
        if self.norm == "instance":
            x = nn.InstanceNorm()(x)
        elif self.norm == "layer":
            x = nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=-1)(x)
        return nn.relu(x)


def _replicate_init(key, shape, dtype=jnp.float32):
    """1×1 kernel (1, 1, C_in, C_out) mapping C→3: output k copies input k mod C (scaled)."""
    del key
    c_in, c_out = shape[-2], shape[-1]
    k = jnp.zeros((c_in, c_out), dtype)
    for o in range(c_out):
        k = k.at[o % c_in, o].set(1.0)
    # Each input channel feeds ceil(c_out / c_in) outputs; columns are plain copies.
    return k.reshape(shape)


def _average_init(key, shape, dtype=jnp.float32):
    """1×1 kernel mapping 3→C: output k averages the inputs that were copies of channel k."""
    del key
    c_in, c_out = shape[-2], shape[-1]
    k = jnp.zeros((c_in, c_out), dtype)
    for i in range(c_in):
        k = k.at[i, i % c_out].set(1.0)
    k = k / jnp.maximum(k.sum(axis=0, keepdims=True), 1.0)
    return k.reshape(shape)


class Generator(nn.Module):
    """g_ω(x, size) → synthetic images of the same shape as ``x`` (Fig. 7)."""

    config: GeneratorConfig

    @nn.compact
    def __call__(self, x: jax.Array, size: chex.Array) -> jax.Array:
        cfg = self.config
        w1, w2, w3 = cfg.widths()
        z = x
        if cfg.has_adaptors:
            z = nn.Conv(cfg.core_channels, (1, 1), use_bias=False, kernel_init=_replicate_init,
                        name="adaptor_in")(z)
        shape0 = z.shape[1:3]
        h = _Block(w1, cfg.norm, name="enc0")(z)
        h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)
        shape1 = h.shape[1:3]
        h = _Block(w2, cfg.norm, name="enc1")(h)
        h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)
        h = _Block(w3, cfg.norm, name="enc2")(h)

        # Size embedding: sinusoids → MLP, broadcast over the bottleneck's positions.
        e = size_encoding(size if cfg.size_embedding else jnp.zeros_like(size), cfg.embed_dim)
        e = nn.Dense(4 * cfg.embed_dim, name="embed_fc0")(e)
        e = nn.Dense(cfg.embed_channels, name="embed_fc1")(nn.silu(e))
        e = jnp.broadcast_to(e[:, None, None, :], (h.shape[0], *h.shape[1:3], e.shape[-1]))
        h = jnp.concatenate([h, e.astype(h.dtype)], axis=-1)

        h = _Block(w2, cfg.norm, name="dec0")(h)
        h = jax.image.resize(h, (h.shape[0], *shape1, h.shape[-1]), "nearest")
        h = _Block(w1, cfg.norm, name="dec1")(h)
        h = jax.image.resize(h, (h.shape[0], *shape0, h.shape[-1]), "nearest")
        h = _Block(w1, cfg.norm, name="dec2")(h)
        r = nn.Conv(cfg.core_channels, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros,
                    conv_general_dilated=conv.default_conv(), name="out")(h)
        if cfg.has_adaptors:
            r = nn.Conv(cfg.image_channels, (1, 1), use_bias=False, kernel_init=_average_init,
                        name="adaptor_out")(r)
        return x + r


def _check_inputs(x: Any, config: GeneratorConfig) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(
            f"generator input must be a 4-D NHWC batch, got shape {getattr(x, 'shape', None)}"
        )
    if x.shape[-1] != config.image_channels:
        raise ValueError(
            f"images have {x.shape[-1]} channels but the generator was built for "
            f"{config.image_channels}; set generator.image_channels={x.shape[-1]} (channel "
            "adaptors are added automatically when it differs from core_channels)."
        )


def init_generator(
    key: chex.PRNGKey, image_shape: tuple[int, int, int], config: GeneratorConfig
) -> dict[str, Any]:
    """Fresh generator parameters ω (the identity map, see the module docstring)."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    x = jnp.zeros((1, *image_shape), jnp.float32)
    _check_inputs(x, config)
    return Generator(config).init(key, x, jnp.ones((1,), jnp.float32))["params"]


_LECUN = jax.nn.initializers.lecun_normal()


def random_generator(key: chex.PRNGKey, image_shape: tuple[int, int, int],
                     config: GeneratorConfig) -> dict[str, Any]:
    """Generator parameters with every conv kernel drawn LeCun-normal: a random generator.

    The paper's "w/o Meta" start (Tab. 2, Fig. 4; the benchmark's ``scratch``) and
    ``meta.init="random"``'s ω at step 0. Every convolution kernel, the zero-initialised
    output conv and the channel adaptors included, is drawn as flax initialises a plain
    ``nn.Conv``; biases and norm parameters keep :func:`init_generator`'s values. Not the
    identity.
    """
    params = flax.core.unfreeze(init_generator(key, image_shape, config))
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys):
        name = getattr(path[-1], "key", None)
        out.append(_LECUN(k, leaf.shape, leaf.dtype) if name == "kernel" else leaf)
    return jax.tree_util.tree_unflatten(tree, out)


def with_image_channels(
    params: Any, image_shape: tuple[int, int, int], config: GeneratorConfig,
    key: chex.PRNGKey | None = None,
) -> dict[str, Any]:
    """ω of a generator for other channels -> ω for ``config``'s (App. B): fresh adaptors.

    The core (every layer but ``adaptor_in``/``adaptor_out``) is kept; the adaptors are those
    of :func:`init_generator` for ``config`` (replicate in, average out; none when
    ``config.image_channels == config.core_channels``). E.g. an RGB meta generator applied to
    grey images. ``key`` only seeds that init (the adaptors' init is deterministic).
    """
    fresh = init_generator(key if key is not None else jax.random.key(0), tuple(image_shape),
                           config)
    core = {k: v for k, v in params.items() if not k.startswith("adaptor")}
    return {**core, **{k: v for k, v in fresh.items() if k.startswith("adaptor")}}


def apply_generator(
    params: Any, x: chex.Array, ipc: chex.Array, config: GeneratorConfig
) -> jax.Array:
    """``X_s* = g_ω(X_s, ipc)`` (Alg. 1 line 4, Alg. 2 line 9).

    Args:
      params: generator parameters ω.
      x: initial synthetic images ``(n_s, H, W, C)``.
      ipc: images per class of the synthetic set (the size embedding's input), a scalar (the
        same for every sample) or ``(n_s,)``.
      config: the architecture.

    Returns:
      ``(n_s, H, W, C)`` synthetic images; sample i depends only on ``x[i]`` and its IPC.
    """
    _check_inputs(x, config)
    ipc = jnp.broadcast_to(jnp.asarray(ipc, jnp.float32), (x.shape[0],))
    return Generator(config).apply({"params": params}, x, ipc)


def generate(
    params: Any,
    x_init: chex.Array,
    ipc: int | float,
    config: GeneratorConfig,
    *,
    batch_size: int = 1000,
) -> jax.Array:
    """The synthetic images for any IPC in one forward pass (no re-optimisation, Sec. 4.3).

    Samples are generated in chunks of ``batch_size`` (the output of a sample does not depend
    on its batch-mates, so chunking changes nothing but memory).

    Args:
      params: adapted generator parameters.
      x_init: initial real images ``(ipc * C, H, W, C)``.
      ipc: images per class of the set being generated (the size embedding's input).
      config: the architecture.
      batch_size: chunk size.

    Returns:
      Generated images, same shape as ``x_init``.
    """
    _check_inputs(x_init, config)
    if not ipc or ipc <= 0:
        raise ValueError(f"ipc must be positive, got {ipc}")
    outs = [
        _apply_jit(params, x_init[i : i + batch_size], ipc, config)
        for i in range(0, x_init.shape[0], batch_size)
    ]
    return jnp.concatenate(outs, axis=0)


# The config is a frozen (hashable) dataclass, so it is a static argument.
_apply_jit = jax.jit(apply_generator, static_argnames="config")
