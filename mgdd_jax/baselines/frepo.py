r"""FRePo baseline: dataset distillation by neural feature regression with an online model pool.

Zhou, Nezhadarya & Ba, "Dataset Distillation using Neural Feature Regression", NeurIPS 2022,
Alg. 1 ("FRePo"), as its released code does it. One outer step (:func:`make_chunk`):

    θ_i ~ U(pool)                                      draw one online model
    (X_t, Y_t) ~ T                                     real batch, centred one-hot labels
    L = Eq. 1 on (f_θi(X_s), Y_s) vs (f_θi(X_t), Y_t) + label margin term
    (X_s, Y_s) ← LAMB(∇L)                              lr cosine-decayed to 0.1×
    θ_i ← re-init if it has taken > K updates, else one Adam step on the *current* (X_s, Y_s)

Eq. 1 is our one KRR loss, :func:`mgdd_jax.krr.krr_loss` (MGDD's Eq. 1 is FRePo's objective).

What was read, where (yongchaoz/FRePo, ``lib/datadistillation/frepo.py`` at d18c005,
``script/distill.py`` at 43e028a):

* ``frepo.py: init_proto`` -- the initial set is ``ipc`` random real images per class (a shuffle,
  then the first ``ipc`` of each class); labels are centred one-hot, divided by
  ``sqrt(C / 10)`` because ``distill.py`` passes ``scale_y=True`` (:func:`initial_labels`).
* ``frepo.py: create_proto_state`` and ``proto_train_and_evaluate`` -- images and labels are the
  two parameters of one ``optax.lamb`` with optax's defaults (b1 0.9, b2 0.999, eps 1e-6, no
  weight decay) and ``cosine_decay_schedule(lr, num_train_steps, alpha=0.1)``; ``distill.py:
  get_config`` sets lr 3e-4 and the real batch to 1024.
* ``frepo.py: nfr`` -- the KRR prediction ``K_tp (K_pp + |reg| tr(K_pp)/n I)⁻¹ Y_p`` with
  ``reg = 1e-6``, solved by a symmetric positive-definite (Cholesky) solve; the target features
  come from the same model, outside the gradient (``jit_feat_fn`` before ``jit_train_step``).
* ``frepo.py: proto_train_step`` -- loss = ``mean_squared_loss(pred, Y_t).mean()`` (0.5 · sum
  over classes, ``lib/training/metrics.py``) + ``lb_margin_th(Y_s).mean()``; the margin term
  is computed on the labels before the optional mirrored copies are appended (``use_flip``).
* ``frepo.py: lb_margin_th`` -- ``-min(top1 - top2, 1/C)`` per synthetic label row
  (:func:`label_margin_loss`).
* ``frepo.py: ProtoHolder`` -- ``learn_label=False`` puts a stop-gradient on the labels.
* ``frepo.py: proto_train_and_evaluate`` (the pool) -- ``num_nn_state`` models (10 in
  ``distill.py``), model ``i`` starting with its step counter at
  ``(max_online_updates // num_nn_state) * i``; each outer step uses one model drawn uniformly,
  then, *after* the synthetic update, that model is re-initialised if its counter exceeds
  ``max_online_updates`` (100; the counter is its ``TrainState.step``, so a model takes
  ``K + 1 - start`` updates and is reset on its next draw) and otherwise takes one step
  (``train_step``) on ``get_sample_proto``: the current synthetic images *and learned labels*,
  all of them if fewer than ``eval_batch_size = 1000``, else 1000 drawn without replacement; no
  augmentation. A reset gives a fresh model and a fresh optimiser state with counter 0.
* ``lib/training/utils.py: create_train_state, train_step`` -- online optimiser
  ``optax.adam(3e-4)`` (constant, ``distill.py: config.online``), loss on the logits,
  ``mean_squared_loss`` against the prototype labels.
* ``script/distill.py: main`` -- ``use_flip`` is off for MNIST / Fashion-MNIST and on for colour
  datasets (except CIFAR-100 at IPC >= 10, Tiny ImageNet at IPC 10, ImageNet); the real labels
  are centred one-hot (not scaled); the training stream is a shuffled ``tf.data`` pipeline.
* ``lib/models/networks.py: Conv`` -- FRePo's distillation network (see deviation 1).

Deviations, and why:

1. **Pool networks.** The pool models are our shared feature ConvNet (``config.feature``:
   ``cpu`` width 64, ``paper`` width 128, constant width, instance norm, conv → norm → ReLU →
   pool, 'SAME' padding) instead of FRePo's ``Conv`` (width 128/256/512 doubling, batch norm
   before the conv of blocks 2-3 with features taken from running averages, a 1-channel input
   padded 28 → 32). The harness (:mod:`mgdd_jax.baselines`) puts every method on the same
   feature networks, so that the comparison is about the algorithms. Batch norm is refused
   here (the pool would need running statistics that only the online training updates). The
   effect on accuracy against the paper's Tab. 12 is part of any gap.
2. **Ridge.** FRePo's ``reg = 1e-6`` is kept (``config.frepo.reg``), not the library's 5e-3
   (:data:`mgdd_jax.krr.DEFAULT_REG`). 1e-6 can turn float32 Eq. 1 into NaN on supports where
   every image appears twice (K_ss singular); FRePo's sets hold no duplicates (drawn without
   replacement, no flip for grey data). A NaN or infinite loss stops the run with
   :class:`~mgdd_jax.adapt.NonFiniteLossError` naming the step; raise ``reg`` if that
   happens.
3. **Real batch.** n_t is the shared ``config.adapt.batch_size`` (512 ``cpu``, 1024 ``paper`` =
   FRePo's 1024), drawn uniformly without replacement inside each batch, independently at every
   step, on the device (FRePo: a shuffled epoch stream; same marginal, no epoch structure).
4. **Randomness.** The model draw, resets and batches come from ``fold_in(key, step)`` (FRePo:
   NumPy's global generator for the draw, a split chain for the rest).
5. **Schedule length.** The cosine runs over ``decay_steps``, or, when 0, over the last
   requested snapshot step (FRePo: its ``num_train_steps``, the run's length).
6. **Flip.** ``flip="auto"`` puts mirrored copies in the support for colour images of datasets
   whose row in :mod:`mgdd_jax.data.settings` (the library's per-dataset table, which also
   sets the evaluation's flips) allows flips, and not for grey ones: FRePo's rule for
   MNIST / Fashion-MNIST / CIFAR-10, without its per-IPC exceptions for CIFAR-100, Tiny
   ImageNet and ImageNet (set ``"on"`` / ``"off"`` to match those), and off for mirrored-digit
   sets such as SVHN, which FRePo does not cover.
7. **Not carried over:** evaluation inside the loop, checkpoints, image saving, ``pmap``; the
   harness evaluates the snapshots with the shared protocol.

Note: the pool models are not "networks trained on the real data". FRePo's code
(``get_sample_proto`` → ``jit_nn_train_step_online``) and the paper's Alg. 1 train the drawn
model for one step on the current distilled set; this module does that.

Cost: one outer step is the real batch's forward pass, the synthetic set's forward and backward
pass and one online training step on up to ``online_batch_size`` synthetic images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgdd_jax import data as data_lib
from mgdd_jax import krr, nets
from mgdd_jax.adapt import NonFiniteLossError
from mgdd_jax.baselines import Snapshot, check_snapshot_steps, register
from mgdd_jax.configs.keys import check_keys
from mgdd_jax.data.settings import settings_for

FLIP_MODES: tuple[str, ...] = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class FrepoConfig:
    """FRePo's hyper-parameters (``config.frepo``, built by
    ``mgdd_jax/configs/benchmark.py``'s ``frepo_config``).

    No defaults here: the config file is the single source.

    Attributes:
      learning_rate: LAMB learning rate of the synthetic images and labels.
      final_lr_fraction: cosine decay to this fraction of ``learning_rate``.
      decay_steps: length of the cosine; 0 = the run's length (last snapshot step).
      b1, b2, eps, weight_decay: LAMB's moments, epsilon and weight decay.
      learn_labels: learn the synthetic labels (else they stay at their initial values).
      reg: relative KRR ridge, ``lam = reg * trace(K_ss) / n_s``.
      flip: ``"auto"`` (mirrored copies in the support for colour images only), ``"on"``,
        ``"off"``.
      pool_size: number of online models.
      max_online_updates: a model drawn with more updates than this is re-initialised.
      online_learning_rate: Adam learning rate of the online models (constant).
      online_batch_size: synthetic images per online step (all of them when fewer).
    """

    learning_rate: float
    final_lr_fraction: float
    decay_steps: int
    b1: float
    b2: float
    eps: float
    weight_decay: float
    learn_labels: bool
    reg: float
    flip: str
    pool_size: int
    max_online_updates: int
    online_learning_rate: float
    online_batch_size: int

    def __post_init__(self):
        for name in ("learning_rate", "online_learning_rate", "reg", "eps"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"config.frepo.{name} must be a finite number > 0, got {value!r}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(
                f"config.frepo.final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"config.frepo.b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.weight_decay < 0:
            raise ValueError(f"config.frepo.weight_decay must be >= 0, got {self.weight_decay}")
        if self.decay_steps < 0:
            raise ValueError(
                f"config.frepo.decay_steps must be >= 0 (0: the run's length), got "
                f"{self.decay_steps}")
        if self.flip not in FLIP_MODES:
            raise ValueError(f"config.frepo.flip must be one of {FLIP_MODES}, got {self.flip!r}")
        if self.pool_size < 1:
            raise ValueError(f"config.frepo.pool_size must be >= 1, got {self.pool_size}")
        if self.max_online_updates < 0:
            raise ValueError(
                f"config.frepo.max_online_updates must be >= 0, got {self.max_online_updates}")
        if self.online_batch_size < 1:
            raise ValueError(
                f"config.frepo.online_batch_size must be >= 1, got {self.online_batch_size}")

    @classmethod
    def from_config(cls, frepo: Mapping[str, Any]) -> FrepoConfig:
        """From the config's ``frepo`` subtree (a ``ConfigDict`` or a plain mapping)."""
        d = frepo.to_dict() if hasattr(frepo, "to_dict") else dict(frepo)
        names = {f.name for f in dataclasses.fields(cls)}
        check_keys(d, names, "config.frepo",
                   "build it with mgdd_jax/configs/benchmark.py:frepo_config")
        return cls(**d)

    def use_flip(self, dataset_name: str, channels: int) -> bool:
        """Whether the support gets mirrored copies. ``"auto"``: colour images of a dataset
        whose row in :mod:`mgdd_jax.data.settings` allows flips (not SVHN, say)."""
        if self.flip != "auto":
            return self.flip == "on"
        return channels > 1 and settings_for(dataset_name).flip


class Pool(NamedTuple):
    """The online model pool, stacked along a leading axis of length ``pool_size``.

    Attributes:
      variables: flax variables of every model.
      opt_state: their Adam states.
      count: ``(pool_size,)`` int32 updates each model has taken since its (re-)initialisation.
    """

    variables: Any
    opt_state: Any
    count: jax.Array


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def initial_labels(labels: chex.Array, num_classes: int) -> jax.Array:
    """FRePo's initial synthetic labels: centred one-hot divided by ``sqrt(C / 10)``
    (``init_proto(..., scale_y=True)``). ``(n,)`` int -> ``(n, C)`` float32."""
    return krr.centred_onehot(labels, num_classes) / jnp.sqrt(num_classes / 10.0)


def label_margin_loss(y_s: chex.Array) -> jax.Array:
    """FRePo's label term (``lb_margin_th``): mean over rows of ``-min(top1 - top2, 1/C)``.

    It rewards a gap of up to ``1/C`` between a row's two largest entries, so that learned
    labels keep a clear class.
    """
    chex.assert_rank(y_s, 2)
    top2, _ = jax.lax.top_k(y_s, 2)
    return -jnp.mean(jnp.minimum(top2[:, 0] - top2[:, 1], 1.0 / y_s.shape[-1]))


# --------------------------------------------------------------------------------------------
# The synthetic update (Eq. 1 + margin, LAMB)
# --------------------------------------------------------------------------------------------


def frepo_loss(
    proto: dict[str, jax.Array],
    variables: Any,
    x_t: chex.Array,
    y_t: chex.Array,
    *,
    feature: nets.ConvNetConfig,
    reg: float,
    learn_labels: bool,
    flip: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """FRePo's distillation loss (``proto_train_step``): Eq. 1 under one pool model + margin.

    Args:
      proto: ``{"x": (n_s, H, W, C) images, "y": (n_s, K) labels}``.
      variables: the pool model's flax variables.
      x_t: real images ``(n_t, H, W, C)``.
      y_t: their centred one-hot labels ``(n_t, K)``.
      feature, reg, learn_labels, flip: the model's architecture, the relative ridge, whether
        the labels get gradients, whether mirrored copies join the support (static).

    Returns:
      ``(loss, {"krr": Eq. 1, "margin": label term})``.
    """
    x_s, y_s = proto["x"], proto["y"]
    if not learn_labels:
        y_s = jax.lax.stop_gradient(y_s)
    margin = label_margin_loss(y_s)
    if flip:
        x_s = jnp.concatenate([x_s, jnp.flip(x_s, axis=2)])
        y_s = jnp.concatenate([y_s, y_s])
    f_s = nets.conv_features(variables, x_s, feature)
    f_t = jax.lax.stop_gradient(nets.conv_features(variables, x_t, feature))
    kernel = krr.krr_loss(f_s, y_s, f_t, y_t, reg)
    return kernel + margin, {"krr": kernel, "margin": margin}


def make_optimizer(config: FrepoConfig, total_steps: int) -> optax.GradientTransformation:
    """LAMB on images and labels, cosine from ``learning_rate`` to ``final_lr_fraction`` of it
    over ``decay_steps`` (or ``total_steps`` when that is 0)."""
    horizon = config.decay_steps or total_steps
    schedule = optax.cosine_decay_schedule(config.learning_rate, max(int(horizon), 1),
                                           alpha=config.final_lr_fraction)
    return optax.lamb(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay)


def synthetic_update(
    proto: dict[str, jax.Array],
    opt_state: Any,
    variables: Any,
    x_t: jax.Array,
    y_t: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    feature: nets.ConvNetConfig,
    config: FrepoConfig,
    flip: bool,
) -> tuple[dict[str, jax.Array], Any, jax.Array, dict[str, jax.Array]]:
    """One LAMB step of the synthetic images and labels on :func:`frepo_loss`.

    Returns ``(proto, opt_state, loss, parts)`` with the loss *before* the step. Labels are
    kept exactly when ``config.learn_labels`` is False.
    """
    loss_fn = functools.partial(frepo_loss, feature=feature, reg=config.reg,
                                learn_labels=config.learn_labels, flip=flip)
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(proto, variables, x_t, y_t)
    updates, opt_state = optimizer.update(grads, opt_state, proto)
    new = optax.apply_updates(proto, updates)
    if not config.learn_labels:
        new = {"x": new["x"], "y": proto["y"]}
    return new, opt_state, loss, parts


# --------------------------------------------------------------------------------------------
# The online model pool
# --------------------------------------------------------------------------------------------


def _online_optimizer(config: FrepoConfig) -> optax.GradientTransformation:
    return optax.adam(config.online_learning_rate)


def fresh_model(key: chex.PRNGKey, image_shape: Sequence[int], feature: nets.ConvNetConfig,
                config: FrepoConfig) -> tuple[Any, Any]:
    """A newly initialised pool model and its fresh Adam state."""
    variables = nets.init_feature_params(key, tuple(image_shape), feature)
    return variables, _online_optimizer(config).init(variables)


def initial_counts(config: FrepoConfig) -> np.ndarray:
    """FRePo's staggered starting counters: model ``i`` starts at ``(K // pool_size) * i``."""
    return (config.max_online_updates // config.pool_size) * np.arange(config.pool_size,
                                                                          dtype=np.int32)


_fresh_model_jit = jax.jit(fresh_model, static_argnums=(1, 2, 3))


def init_pool(key: chex.PRNGKey, image_shape: Sequence[int], feature: nets.ConvNetConfig,
              config: FrepoConfig) -> Pool:
    """``pool_size`` fresh models (key ``i`` of ``split(key, pool_size)`` for model ``i``),
    stacked, with the staggered counters. (A loop over one compiled initialiser, not a
    ``vmap`` of flax's init, which compiles slower on XLA:CPU.)"""
    shape = tuple(int(d) for d in image_shape)
    models = [_fresh_model_jit(k, shape, feature, config)
              for k in jax.random.split(key, config.pool_size)]
    variables, opt_state = jax.tree.map(lambda *a: jnp.stack(a), *models)
    return Pool(variables, opt_state, jnp.asarray(initial_counts(config)))


def online_loss(variables: Any, x: chex.Array, y: chex.Array,
                feature: nets.ConvNetConfig) -> jax.Array:
    """The online models' loss (``train_step`` with ``mean_squared_loss``):
    ``0.5 * mean_i sum_c (logits - y)²``."""
    _, logits = nets.build_model(feature).apply(variables, x, train=True)
    return 0.5 * jnp.mean(jnp.sum((logits - y) ** 2, axis=-1))


def _online_batch(key: chex.PRNGKey, x_s: jax.Array, y_s: jax.Array,
                  batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``get_sample_proto``: all synthetic rows if fewer than ``batch_size``, else a subset
    of ``batch_size`` drawn without replacement."""
    n = x_s.shape[0]
    if n < batch_size:
        return x_s, y_s
    idx = jax.random.choice(key, n, (batch_size,), replace=False)
    return x_s[idx], y_s[idx]


def online_update(
    pool: Pool,
    index: jax.Array,
    x_s: jax.Array,
    y_s: jax.Array,
    init_key: chex.PRNGKey,
    batch_key: chex.PRNGKey,
    *,
    image_shape: Sequence[int],
    feature: nets.ConvNetConfig,
    config: FrepoConfig,
) -> Pool:
    """FRePo's pool update for the model drawn this step (``proto_train_and_evaluate``).

    If model ``index`` has taken more than ``max_online_updates`` updates it is replaced by
    :func:`fresh_model` (``init_key``) with counter 0; otherwise it takes one Adam step of
    :func:`online_loss` on the current synthetic set (``batch_key`` draws the subset when the
    set is larger than ``online_batch_size``) and its counter grows by one.
    """
    take = functools.partial(jax.tree.map, lambda a: a[index])
    variables, opt_state, count = take(pool.variables), take(pool.opt_state), pool.count[index]
    optimizer = _online_optimizer(config)

    def reset(_):
        v, o = fresh_model(init_key, image_shape, feature, config)
        return v, o, jnp.zeros((), jnp.int32)

    def train(_):
        x, y = _online_batch(batch_key, x_s, y_s, config.online_batch_size)
        grads = jax.grad(online_loss)(variables, x, y, feature)
        updates, o = optimizer.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), o, count + 1

    v, o, c = jax.lax.cond(count > config.max_online_updates, reset, train, None)
    put = lambda tree, new: jax.tree.map(lambda a, b: a.at[index].set(b), tree, new)
    return Pool(put(pool.variables, v), put(pool.opt_state, o), pool.count.at[index].set(c))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def init_state(key: chex.PRNGKey, x0: chex.Array, labels0: chex.Array, num_classes: int,
               feature: nets.ConvNetConfig, config: FrepoConfig,
               total_steps: int) -> dict[str, Any]:
    """The loop state: synthetic set (``x0``, FRePo's initial labels of ``labels0``), its LAMB
    state, the pool (drawn from ``key``), the step, the first non-finite step (-1: none) and
    the last loss. All arrays are fresh (the loop donates them)."""
    chex.assert_rank(x0, 4)
    chex.assert_rank(labels0, 1)
    proto = {"x": jnp.array(x0, jnp.float32, copy=True),
             "y": initial_labels(jnp.asarray(labels0), num_classes)}
    return {
        "proto": proto,
        "opt_state": make_optimizer(config, total_steps).init(proto),
        "pool": init_pool(key, x0.shape[1:], feature, config),
        "step": jnp.zeros((), jnp.int32),
        "bad_step": jnp.full((), -1, jnp.int32),
        "loss": jnp.zeros((), jnp.float32),
    }


def step_keys(loop_key: chex.PRNGKey, step: jax.Array | int) -> jax.Array:
    """The four keys of outer step ``step`` (0-based): real batch, model draw, re-initialisation,
    online batch -- ``split(fold_in(loop_key, step), 4)``."""
    return jax.random.split(jax.random.fold_in(loop_key, step), 4)


def draw_model(key: chex.PRNGKey, pool_size: int) -> jax.Array:
    """The pool model used at a step: uniform over ``pool_size`` (FRePo's ``randint``)."""
    return jax.random.randint(key, (), 0, pool_size)


@functools.lru_cache(maxsize=16)
def make_chunk(*, feature: nets.ConvNetConfig, config: FrepoConfig, num_classes: int,
               image_shape: Sequence[int], batch_size: int, flip: bool,
               total_steps: int) -> Callable[..., dict[str, Any]]:
    """The jitted loop: ``chunk(state, loop_key, train_x, train_y, *, length) -> state`` runs
    ``length`` outer steps in one ``lax.scan`` with the state donated.

    Step ``t`` (the state's ``step``) takes its keys from :func:`step_keys` and its model from
    :func:`draw_model`; the real batch (``batch_size`` rows without replacement, uniform as
    FRePo's shuffled stream) is gathered on the device from ``train_x`` / ``train_y`` (all
    training images and int labels). Cached (every argument must be hashable: ``image_shape``
    a tuple): runs with the same settings share one jitted function and its compilations.
    """
    optimizer = make_optimizer(config, total_steps)
    image_shape = tuple(image_shape)

    @functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("length",))
    def chunk(state, loop_key, train_x, train_y, *, length: int):
        n_train = train_x.shape[0]

        def body(state, _):
            k_batch, k_pick, k_init, k_online = step_keys(loop_key, state["step"])
            rows = jax.random.choice(k_batch, n_train, (batch_size,), replace=False)
            x_t = train_x[rows]
            y_t = krr.centred_onehot(train_y[rows], num_classes)
            index = draw_model(k_pick, config.pool_size)
            variables = jax.tree.map(lambda a: a[index], state["pool"].variables)
            proto, opt_state, loss, _ = synthetic_update(
                state["proto"], state["opt_state"], variables, x_t, y_t, optimizer=optimizer,
                feature=feature, config=config, flip=flip)
            pool = online_update(state["pool"], index, proto["x"], proto["y"], k_init, k_online,
                                 image_shape=image_shape, feature=feature, config=config)
            step = state["step"] + 1
            bad = jnp.where((state["bad_step"] < 0) & ~jnp.isfinite(loss), step,
                            state["bad_step"])
            return {"proto": proto, "opt_state": opt_state, "pool": pool, "step": step,
                    "bad_step": bad, "loss": loss}, None

        state, _ = jax.lax.scan(body, state, None, length=length)
        return state

    return chunk


@register("frepo")
def frepo(key: chex.PRNGKey, dataset: data_lib.Dataset, ipc: int, snapshot_steps: Sequence[int],
          config: Any) -> Iterator[Snapshot]:
    """FRePo (Zhou et al., 2022, Alg. 1) on ``dataset``: snapshots of the learned set.

    Args:
      key: PRNG key (initial set, pool, and every step's draws via ``fold_in``).
      dataset: the preprocessed dataset.
      ipc: images per class.
      snapshot_steps: strictly increasing outer-step counts to yield at (0: the initial set).
      config: the benchmark config; reads ``frepo``, ``feature`` and ``adapt.batch_size``.

    Returns:
      An iterator of :class:`Snapshot`: ``x`` the images, ``y`` the learned labels (centred
      one-hot scaled by ``1/sqrt(C/10)`` at step 0), ``seconds`` the cumulative wall time
      (set-up and compilation included; the host copies of the snapshots and whatever the
      caller does between snapshots excluded), ``timing={"distill_s": seconds}``.

    Raises:
      ValueError: at the call, before any work, for a bad IPC, snapshot list, real batch size,
        class count or config.
      NonFiniteLossError: while iterating, if the loss became NaN/inf (names the step).
    """
    steps = check_snapshot_steps(snapshot_steps)
    cfg = FrepoConfig.from_config(config.frepo)
    c = dataset.num_classes
    if c < 2:
        raise ValueError(f"FRePo needs at least 2 classes (its label margin), got {c}")
    feature = nets.ConvNetConfig(**config.feature, num_classes=c)
    if feature.norm == "batch":
        raise ValueError("config.feature.norm='batch' is not supported by the FRePo pool; use "
                         "'instance', 'layer' or 'none'")
    data_lib.check_per_class(dataset, ipc, what="IPC")
    batch_size = int(config.adapt.batch_size)
    n_train = dataset.x_train.shape[0]
    if not 1 <= batch_size <= n_train:
        raise ValueError(f"config.adapt.batch_size={batch_size} must be in [1, {n_train}] (the "
                         "training images); FRePo draws the real batch without replacement")
    return _run(key, dataset, int(ipc), steps, cfg, feature, batch_size)


def _run(key, dataset, ipc, steps, cfg, feature, batch_size) -> Iterator[Snapshot]:
    t_resume = time.perf_counter()
    seconds = 0.0
    c = dataset.num_classes
    total = steps[-1]
    flip = cfg.use_flip(dataset.name, dataset.channels)
    k_init, k_pool, loop_key = jax.random.split(key, 3)
    x0, l0 = data_lib.sample_initial_set(k_init, dataset, ipc)
    train_x, train_y = jax.device_put((dataset.x_train, dataset.y_train))
    state = init_state(k_pool, x0, l0, c, feature, cfg, total)
    chunk = make_chunk(feature=feature, config=cfg, num_classes=c,
                       image_shape=dataset.image_shape, batch_size=batch_size, flip=flip,
                       total_steps=total)
    gaps = [b - a for a, b in zip((0, *steps), steps) if b > a]
    length = functools.reduce(math.gcd, gaps, 0)  # one compiled chunk length
    done = 0
    for target in steps:
        while done < target:
            state = chunk(state, loop_key, train_x, train_y, length=length)
            done += length
        jax.block_until_ready(state)
        bad = int(state["bad_step"])
        seconds += time.perf_counter() - t_resume
        if bad >= 0:
            raise NonFiniteLossError(
                f"FRePo loss became non-finite at step {bad} (ipc={ipc}); raise "
                f"config.frepo.reg (now {cfg.reg}, library default {krr.DEFAULT_REG}) or lower "
                f"config.frepo.learning_rate (now {cfg.learning_rate}).")
        x = np.array(state["proto"]["x"], dtype=np.float32, copy=True)
        y = np.array(state["proto"]["y"], dtype=np.float32, copy=True)
        yield Snapshot(steps=target, seconds=seconds, x=x, y=y, timing={"distill_s": seconds})
        t_resume = time.perf_counter()
