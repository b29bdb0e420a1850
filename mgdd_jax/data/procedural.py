"""The ``procedural`` data source: formula-driven image classes, a meta-training source.

Pre-training without natural images (Kataoka et al., ACCV 2020, "FractalDB"; Baradad et al.,
NeurIPS 2021, "Learning to see by looking at noise") shows that classes drawn from simple
generative formulas teach convolutional features that transfer to natural images. This source
makes such classes offline, from a seed alone (no package, no file), as a many-class
meta-training source for MGDD Alg. 1 disjoint from every benchmark target:

* ``fractal``: a class is one iterated function system (2-4 random affine maps, map
  probabilities proportional to ``|det|`` as in FractalDB, kept when its rendering fills 5-60%
  of the canvas; FractalDB draws the six parameters of a map uniformly in [-1, 1] and keeps
  what fills enough, which accepts ~3% of draws here, so the linear parts are drawn as
  rotation · diag(singular values in [0.2, 0.85], random reflection) · rotation instead); a
  sample is that attractor drawn by the chaos game with every map parameter jittered by up
  to ±5% (FractalDB's intra-class variation), a random rotation, scale, shift and mirror,
  and 1-2 pixel points.
* ``deadleaves``: a class is a dead-leaves family (occluding shapes with power-law sizes):
  its shape (disc, square, ellipse or bar at a class orientation), size exponent and range,
  and grey palette; a sample is a new random stack of ``[40, 120)`` leaves.
* ``texture``: a class is a band-pass spectral filter (centre frequency, bandwidth,
  orientation and its concentration) and a contrast curve (threshold and sharpness); a sample
  is white noise through that filter and curve.

Class ``c`` has kind ``kinds[c % len(kinds)]``. Every sample is a grey coverage mask that is
colourised and split exactly as glyphs are (:func:`mgdd_jax.data.glyphs.colourise`: a random
foreground and background colour per sample; 90/10 train/test per class), so the source
mixes with ``glyphs`` (``mix:glyphs+procedural``, :mod:`mgdd_jax.data.sources`).

Names: ``procedural`` (all three kinds, 1000 classes x 64 samples, 32x32, seed 0) or
``procedural:kinds=fractal/texture,classes=C,per_class=N,size=S,seed=K`` (any subset of the
keys). Generation is vectorised per class in NumPy and deterministic: every draw comes from
:func:`mgdd_jax.rng.numpy_rng` of an explicit key, the stream of the kind and the class index,
so a class does not depend on the others.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from mgdd_jax.data import glyphs
from mgdd_jax.data.dataset import RawData
from mgdd_jax.rng import numpy_rng

KINDS = ("fractal", "deadleaves", "texture")
DEFAULT_NUM_CLASSES = 1000
DEFAULT_PER_CLASS = 64
DEFAULT_IMAGE_SIZE = 32
DEFAULT_SEED = 0
# Random-stream tags (distinct from glyphs' colour and split tags, which are reused as is).
_STREAM = {"fractal": 101, "deadleaves": 102, "texture": 103}
_MAX_TRIES = 200


@dataclasses.dataclass(frozen=True)
class ProceduralSpec:
    """Which procedural data set a name asks for (module docstring)."""

    kinds: tuple[str, ...] = KINDS
    num_classes: int = DEFAULT_NUM_CLASSES
    per_class: int = DEFAULT_PER_CLASS
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = DEFAULT_SEED

    def __post_init__(self):
        bad = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or bad or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"procedural kinds must be distinct names from {KINDS} joined by "
                             f"'/', got {'/'.join(self.kinds) or 'nothing'!r}")
        if self.num_classes < 2 or self.per_class < 2 or self.image_size < 8:
            raise ValueError("procedural data needs classes >= 2, per_class >= 2 (a train and "
                             f"a test sample) and size >= 8, got classes={self.num_classes}, "
                             f"per_class={self.per_class}, size={self.image_size}")


_INT_KEYS = {"classes": "num_classes", "per_class": "per_class", "size": "image_size",
             "seed": "seed"}


def parse_spec(spec: str) -> ProceduralSpec:
    """``""``/``"procedural"`` -> the default; ``"kinds=fractal/texture,classes=200"``."""
    if spec in ("", "procedural"):
        return ProceduralSpec()
    values: dict = {}
    for item in spec.split(","):
        name, sep, value = (s.strip() for s in item.partition("="))
        if sep and name == "kinds" and value:
            values["kinds"] = tuple(value.split("/"))
        elif sep and name in _INT_KEYS and re.fullmatch(r"\d+", value):
            values[_INT_KEYS[name]] = int(value)
        else:
            raise ValueError(
                f"bad procedural spec {spec!r}: expected comma-separated KEY=VALUE with KEY in "
                f"{['kinds', *_INT_KEYS]}, e.g. 'procedural:kinds=fractal/texture,classes=200'")
    return ProceduralSpec(**values)


# ------------------------------------------------------------------------------ fractals
def rasterise(points: np.ndarray, size: int) -> np.ndarray:
    """``(n, p, 2)`` points in [0, 1]² -> ``(n, size, size)`` float32 hit counts."""
    n = points.shape[0]
    ij = np.clip((points * size).astype(np.int64), 0, size - 1)
    flat = (np.arange(n)[:, None] * size + ij[..., 1]) * size + ij[..., 0]
    return np.bincount(flat.ravel(), minlength=n * size * size).reshape(
        n, size, size).astype(np.float32)


def _chaos_game(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, probs: np.ndarray,
                chains: int = 96, iters: int = 40, burn: int = 8) -> np.ndarray:
    """Points of the attractors of ``(n, m)`` maps ``x -> a x + b``.

    Returns ``(n, chains * (iters - burn), 2)``: every chain's points after ``burn`` steps.
    """
    n, m = probs.shape
    x = rng.uniform(-1, 1, (n, chains, 2))
    cdf = np.cumsum(probs, axis=1)
    out = []
    rows = np.arange(n)[:, None]
    for t in range(iters):
        pick = np.minimum((rng.random((n, chains, 1)) < cdf[:, None, :]).argmax(-1), m - 1)
        x = np.einsum("ncij,ncj->nci", a[rows, pick], x) + b[rows, pick]
        if t >= burn:
            out.append(x)
    return np.concatenate(out, axis=1)


def _fit(points: np.ndarray) -> np.ndarray:
    """Each point cloud scaled into [0.1, 0.9]² by its own bounding box (aspect kept)."""
    lo, hi = points.min(axis=1, keepdims=True), points.max(axis=1, keepdims=True)
    centre, span = (lo + hi) / 2, np.maximum((hi - lo).max(-1, keepdims=True), 1e-6)
    return 0.5 + 0.8 * (points - centre) / span


def _rotation(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _contraction(rng: np.random.Generator, m: int) -> np.ndarray:
    """``(m, 2, 2)`` linear parts ``R(φ) diag(s1, ±s2) R(ψ)``, singular values in [0.2, 0.85]."""
    s = rng.uniform(0.2, 0.85, (m, 2)) * np.stack([np.ones(m), rng.choice([-1.0, 1.0], m)], -1)
    return _rotation(rng.uniform(0, 2 * np.pi, m)) @ (
        s[..., None] * _rotation(rng.uniform(0, 2 * np.pi, m)))


def _fractal_class(rng: np.random.Generator, c: int, per_class: int, size: int) -> np.ndarray:
    for _ in range(_MAX_TRIES):
        m = int(rng.integers(2, 5))
        a = _contraction(rng, m)
        b = rng.uniform(-1, 1, (m, 2))
        det = np.abs(np.linalg.det(a))
        probs = det / det.sum()
        pts = _fit(_chaos_game(rng, a[None], b[None], probs[None]))
        fill = (rasterise(pts, size) > 0).mean()
        if 0.05 <= fill <= 0.6:
            break
    else:  # pragma: no cover - about 90% of the draws are accepted
        raise RuntimeError(f"procedural fractal class {c}: no IFS accepted in {_MAX_TRIES} tries")
    srng = np.random.default_rng(rng.integers(2**63))
    n = per_class
    aj = a[None] * srng.uniform(0.95, 1.05, (n, m, 2, 2))
    bj = b[None] * srng.uniform(0.95, 1.05, (n, m, 2))
    pts = _fit(_chaos_game(srng, aj, bj, np.broadcast_to(probs, (n, m))))
    angle = srng.uniform(0, 2 * np.pi, n)
    scale = srng.uniform(0.75, 1.05, n)
    mirror = np.where(srng.random(n) < 0.5, -1.0, 1.0)
    rot = _rotation(angle) * np.stack([mirror, np.ones(n)], -1)[:, None, :]  # R · diag(±1, 1)
    shift = srng.uniform(-0.08, 0.08, (n, 1, 2))
    pts = 0.5 + scale[:, None, None] * np.einsum("nij,npj->npi", rot, pts - 0.5) + shift
    counts = rasterise(pts, size)
    thick = srng.random(n) < 0.5  # 2x2 points: max over the 4 shifted copies
    grown = np.maximum.reduce([counts, np.roll(counts, 1, 1), np.roll(counts, 1, 2),
                               np.roll(np.roll(counts, 1, 1), 1, 2)])
    counts = np.where(thick[:, None, None], grown, counts)
    return np.minimum(counts / 2.0, 1.0)


# ------------------------------------------------------------------------------ dead leaves
def _deadleaves_class(rng: np.random.Generator, c: int, per_class: int, size: int
                      ) -> np.ndarray:
    shape = int(rng.integers(4))  # disc, square, ellipse, bar
    alpha = rng.uniform(1.5, 3.0)  # p(r) ~ r^-alpha on [r_min, r_max]
    r_min = rng.uniform(0.04, 0.1) * size
    r_max = rng.uniform(0.3, 0.7) * size
    theta0 = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.25, 0.6)
    palette = np.sort(rng.random(int(rng.integers(2, 6))))
    srng = np.random.default_rng(rng.integers(2**63))
    n, leaves = per_class, int(srng.integers(40, 120))
    u = srng.random((n, leaves))
    e = 1.0 - alpha
    radius = (r_min**e + u * (r_max**e - r_min**e)) ** (1.0 / e)
    centre = srng.uniform(-0.2, 1.2, (n, leaves, 2)) * size
    theta = theta0 + srng.normal(0, 0.15, (n, leaves))
    grey = np.clip(palette[srng.integers(len(palette), size=(n, leaves))]
                   + srng.normal(0, 0.04, (n, leaves)), 0, 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    centre, theta = centre.astype(np.float32), theta.astype(np.float32)
    radius = radius.astype(np.float32)
    dx = xx[None, None] - centre[..., 0, None, None]
    dy = yy[None, None] - centre[..., 1, None, None]
    cos, sin = np.cos(theta)[..., None, None], np.sin(theta)[..., None, None]
    u_, v_ = cos * dx + sin * dy, -sin * dx + cos * dy
    r = radius[..., None, None]
    if shape == 0:
        inside = u_**2 + v_**2 <= r**2
    elif shape == 1:
        inside = np.maximum(np.abs(u_), np.abs(v_)) <= r
    elif shape == 2:
        inside = (u_ / r) ** 2 + (v_ / (aspect * r)) ** 2 <= 1
    else:
        inside = (np.abs(u_) <= r) & (np.abs(v_) <= 0.25 * aspect * r + 0.5)
    return paint(inside, grey)


def paint(inside: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Dead-leaves occlusion: ``(n, L, S, S)`` coverage, ``(n, L)`` grey -> ``(n, S, S)``.

    Painter's order: leaf ``l`` lies on top of the leaves before it, so a pixel takes the grey
    of the last leaf covering it; a pixel no leaf covers takes leaf 0's (the background).
    """
    n, leaves, h, w = inside.shape
    top = np.where(inside, np.arange(leaves)[None, :, None, None], 0).max(axis=1)
    return np.take_along_axis(grey, top.reshape(n, -1), axis=1).reshape(n, h, w)


# ------------------------------------------------------------------------------ textures
def _texture_class(rng: np.random.Generator, c: int, per_class: int, size: int) -> np.ndarray:
    f0 = rng.uniform(0.04, 0.3)  # cycles per pixel
    bandwidth = rng.uniform(0.15, 0.6) * f0 + 0.01
    theta0 = rng.uniform(0, np.pi)
    kappa = rng.choice([0.0, rng.uniform(1, 8)])  # 0: isotropic
    threshold = rng.uniform(-0.6, 0.6)
    sharpness = np.exp(rng.uniform(np.log(1.5), np.log(12)))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.hypot(fx, fy)
    angle = np.arctan2(fy, fx)
    gain = np.exp(-0.5 * ((radius - f0) / bandwidth) ** 2) * np.exp(
        kappa * (np.cos(2 * (angle - theta0)) - 1))
    srng = np.random.default_rng(rng.integers(2**63))
    noise = srng.normal(size=(per_class, size, size))
    field = np.fft.ifft2(np.fft.fft2(noise) * gain).real
    field = (field - field.mean(axis=(1, 2), keepdims=True)) / (
        field.std(axis=(1, 2), keepdims=True) + 1e-8)
    return 1.0 / (1.0 + np.exp(-sharpness * (field - threshold)))


_MAKERS = {"fractal": _fractal_class, "deadleaves": _deadleaves_class,
           "texture": _texture_class}


def class_masks(spec: ProceduralSpec, c: int) -> np.ndarray:
    """The ``(per_class, S, S)`` uint8 grey masks of class ``c`` (a function of c and the seed)."""
    kind = spec.kinds[c % len(spec.kinds)]
    rng = numpy_rng(glyphs.corpus_key(spec.seed), _STREAM[kind], c)
    masks = _MAKERS[kind](rng, c, spec.per_class, spec.image_size)
    return np.round(np.clip(masks, 0, 1) * 255).astype(np.uint8)


def make_raw(spec: ProceduralSpec) -> RawData:
    """The data set of ``spec``: colourised masks, split 90/10 per class (as glyphs)."""
    masks = np.concatenate([class_masks(spec, c) for c in range(spec.num_classes)])
    labels = np.repeat(np.arange(spec.num_classes, dtype=np.int32), spec.per_class)
    key = glyphs.corpus_key(spec.seed)
    images = glyphs.colourise(key, masks)
    train, test = glyphs.split_per_class(key, labels)
    names = tuple(f"{spec.kinds[c % len(spec.kinds)]}-{c}" for c in range(spec.num_classes))
    return RawData(x_train=images[train], y_train=labels[train], x_test=images[test],
                   y_test=labels[test], num_classes=spec.num_classes, class_names=names)


def load_procedural(spec: str, data_dir: str | None) -> RawData:
    """The ``procedural`` source (module docstring); ``data_dir`` is not used."""
    del data_dir  # generated from the seed alone
    return make_raw(parse_spec(spec))
