"""A drop-in ``conv_general_dilated`` whose kernel gradient is fast on XLA:CPU, and the
resolver that uses it on the CPU only.

Why: on XLA:CPU the gradient of a convolution w.r.t. its kernel is itself a convolution that
contracts over the batch and the whole image (window = the image, output = the 3×3 kernel).
XLA hands it to its conv library as one call over the whole batch, and that call falls off a
cliff once the batch's activations outgrow the core caches. The same computation split into a
sum over small batch chunks (a few images, at most :data:`CHUNK_BYTES` of activations each)
runs at about the speed of the forward pass: the kernel gradient is a sum over images, so the
chunking is exact up to float summation order.

A second cliff: inside a loop body (``lax.scan``, as in the adaptation loop and the MAML inner
loop) XLA:CPU leaves that kernel-gradient convolution in its non-canonical layout and runs it
on a slower fallback path; written out in the canonical layout below, it runs inside a loop as
it does outside.

What: :func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature and value.
For the layout flax uses (NHWC / HWIO / NHWC), stride 1, no dilation or grouping, it is a
``jax.custom_vjp``: the forward pass is XLA's convolution, the input gradient the usual
flipped-kernel convolution, and the kernel gradient the chunked sum, each written as a
canonical-layout convolution. For 'SAME' odd kernels with fewer output than input channels
(e.g. the generator's last 32→3 conv) the kernel gradient is computed with the roles of the
input and the output cotangent swapped (a 3→32 problem) and the kernel flipped back.
Anything else (strides, dilation, grouping, other layouts, ``preferred_element_type``) goes to
``lax.conv_general_dilated`` unchanged.

Which: the workaround is for XLA:CPU only. :func:`default_conv` is what the networks pass as
``nn.Conv(..., conv_general_dilated=conv.default_conv())``: this module's convolution when
:func:`mgdd_jax.backend.is_cpu`, the stock :func:`jax.lax.conv_general_dilated` on GPU and
TPU. Either way the parameter names, shapes and initialisation are flax's, so checkpoints load
on every backend and ``init`` gives the same parameters. :func:`implementation` forces one of
the two ("chunked" or "lax") within a block (benchmarks, tests). Both are read when a module
is traced, so build fresh jitted functions inside the block; a traced function carries no
per-call cost.

Limitation: a ``custom_vjp`` supports reverse mode to any order (``grad`` of ``grad``, as in
second-order MAML) and ``vmap``, but not forward mode (``jax.jvp`` / ``jacfwd``); the stock
path (the default off the CPU, or inside ``implementation("lax")``) supports both.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mgdd_jax import backend

IMPLEMENTATIONS: tuple[str, ...] = ("chunked", "lax")
_forced: str | None = None  # set by implementation(); None: decided by the backend

# Kernel-gradient chunks: about this many bytes of (input + output cotangent) per chunk (larger
# chunks compile faster), and at most this many chunks per convolution (bounds the graph size,
# hence the compile time).
CHUNK_BYTES = 1 << 20
MAX_CHUNKS = 32

_NHWC = ("NHWC", "HWIO", "NHWC")


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
    """Within the block, convolutions trace as ``name`` ("chunked" or "lax") on any backend."""
    global _forced
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"conv implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    old, _forced = _forced, name
    try:
        yield
    finally:
        _forced = old


def current_implementation() -> str:
    """The implementation convolutions trace as now: the forced one, else "chunked" on
    XLA:CPU and "lax" elsewhere."""
    if _forced is not None:
        return _forced
    return "chunked" if backend.is_cpu() else "lax"


def default_conv() -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` for ``nn.Conv`` here and now: :func:`conv_general_dilated`
    when :func:`current_implementation` is "chunked", else :func:`jax.lax.conv_general_dilated`.

    Call it inside a module's ``__call__`` (at trace time), not at import.
    """
    if current_implementation() == "chunked":
        return conv_general_dilated
    return lax.conv_general_dilated


def batch_chunks(n: int, bytes_per_image: int, chunk_bytes: int | None = None,
                 max_chunks: int | None = None) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` batch ranges of near-equal size covering ``range(n)``
    (defaults: the module's ``CHUNK_BYTES`` and ``MAX_CHUNKS``)."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    max_chunks = MAX_CHUNKS if max_chunks is None else max_chunks
    per = max(1, chunk_bytes // max(1, bytes_per_image))
    count = max(1, min(max_chunks, -(-n // per), n))
    bounds = [(i * n) // count for i in range(count + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _dimension_numbers_are_nhwc(dn: Any, lhs_shape, rhs_shape) -> bool:
    if dn is None:
        return False
    try:
        want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
        got = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dn)
    except (TypeError, ValueError):
        return False
    return tuple(got) == tuple(want)


def _padding_pairs(padding: Any, kernel_hw: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Explicit ``(lo, hi)`` pads of a stride-1 convolution ('SAME' is lax's: total k-1)."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return tuple((0, 0) for _ in kernel_hw)
        if padding.upper() in ("SAME", "SAME_LOWER"):
            lower = padding.upper() == "SAME_LOWER"
            return tuple(((k - 1) - (k - 1) // 2, (k - 1) // 2) if lower
                         else ((k - 1) // 2, (k - 1) - (k - 1) // 2) for k in kernel_hw)
        raise ValueError(f"unknown padding {padding!r}")
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _conv_nhwc(x, k, pads, precision):
    return lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=_NHWC,
                                    precision=precision)


def _kernel_grad_chunked(x, dy, pads, precision):
    """``dk[i, j, c, o] = sum_{n,h,w} x_pad[n, h+i, w+j, c] dy[n, h, w, o]`` for a stride-1 conv.

    Written as the convolution XLA would build for it, in the canonical layout (C, H, W, N) *
    (Ho, Wo, N, O) -> (C, kh, kw, O) that its conv library takes directly (XLA does not
    rewrite non-canonical convolutions inside loop bodies, e.g. under ``lax.scan``, and falls
    back to a slower path there), and summed over batch chunks (see the module docstring).
    """
    n = x.shape[0]
    per_image = (x[0].size + dy[0].size) * x.dtype.itemsize
    xt = jnp.transpose(x, (3, 1, 2, 0))     # (C, H, W, N): C as batch, N as features
    dyt = jnp.transpose(dy, (1, 2, 0, 3))   # (Ho, Wo, N, O): the "kernel"
    total = None
    for a, b in batch_chunks(n, per_image):
        g = lax.conv_general_dilated(
            xt[..., a:b], dyt[:, :, a:b], (1, 1), pads, dimension_numbers=_NHWC,
            precision=precision)            # (C, kh, kw, O)
        total = g if total is None else total + g
    return jnp.transpose(total, (1, 2, 0, 3))


def _kernel_grad(x, dy, kernel_shape, pads, precision):
    kh, kw, c_in, c_out = kernel_shape
    symmetric = all(lo == hi == (k - 1) // 2 and k % 2 == 1
                    for (lo, hi), k in zip(pads, (kh, kw)))
    if symmetric and c_out < c_in:
        # Same sum with x and dy swapped (cheaper with fewer output channels, e.g. 32 -> 3):
        # dk[i, j, c, o] = dk'[kh-1-i, kw-1-j, o, c], dk' the kernel gradient of the c_out ->
        # c_in 'SAME' conv of dy with output cotangent x.
        g = _kernel_grad_chunked(dy, x, pads, precision)
        return jnp.flip(g, (0, 1)).transpose(0, 1, 3, 2)
    return _kernel_grad_chunked(x, dy, pads, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, k, pads, precision):
    return _conv_nhwc(x, k, pads, precision)


def _conv_fwd(x, k, pads, precision):
    return _conv_nhwc(x, k, pads, precision), (x, k)


def _conv_bwd(pads, precision, res, dy):
    x, k = res
    kh, kw = k.shape[:2]
    # Input gradient: the 'full' correlation of dy with the flipped, transposed kernel.
    k_t = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
    pads_t = tuple((kk - 1 - lo, kk - 1 - hi) for (lo, hi), kk in zip(pads, (kh, kw)))
    dx = _conv_nhwc(dy, k_t, pads_t, precision)
    dk = _kernel_grad(x, dy, k.shape, pads, precision)
    return dx.astype(x.dtype), dk.astype(k.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with a fast kernel gradient on XLA:CPU (module docstring).

    It takes the custom-VJP path on any backend unless ``implementation("lax")`` is in force;
    :func:`default_conv` decides by backend whether to use it at all.
    """
    nd = len(window_strides)
    lhs_dil = tuple(lhs_dilation) if lhs_dilation is not None else (1,) * nd
    rhs_dil = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * nd
    fast = (
        _forced != "lax"
        and nd == 2
        and getattr(lhs, "ndim", None) == 4
        and getattr(rhs, "ndim", None) == 4
        and all(int(v) == 1 for v in window_strides)
        and all(int(v) == 1 for v in lhs_dil + rhs_dil)
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and _dimension_numbers_are_nhwc(dimension_numbers, lhs.shape, rhs.shape)
        and lhs.dtype == rhs.dtype
    )
    if not fast:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    pads = _padding_pairs(padding, rhs.shape[:2])
    if isinstance(precision, list):
        precision = tuple(precision)
    return _conv(lhs, rhs, pads, precision)
