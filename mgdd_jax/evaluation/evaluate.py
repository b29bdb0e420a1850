"""Evaluate synthetic sets: train fresh networks on each, report test accuracy (mean ± std).

:func:`evaluate_synthetic` evaluates one set, :func:`evaluate_many` several against one test
split (same-shape sets trained together). Both check every input first (:func:`_prepare`),
train with the per-seed loop or the batched trainer (``seeds=``), and summarise the seeds'
accuracies in one JSON-serialisable result (:func:`_result`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mgdd_jax.evaluation import batched, inputs, predict, trainer
from mgdd_jax.evaluation import protocol as protocol_lib
from mgdd_jax.evaluation.protocol import EvalProtocol
from mgdd_jax.progress import stage


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """One validated synthetic set (see :func:`_prepare`)."""

    x: np.ndarray
    y: jax.Array
    num_classes: int
    labels: np.ndarray


def _prepare(
    x_syn: Any, y_syn: Any, xt: np.ndarray, y_test: Any, num_classes: int | None
) -> _Prepared:
    """Every input check of :func:`evaluate_synthetic` for one set (``xt`` already checked)."""
    x = inputs.check_images(x_syn, "x_syn")
    if num_classes is None and getattr(y_syn, "ndim", None) == 1:
        yt = np.asarray(y_test)
        if yt.ndim == 1 and np.issubdtype(yt.dtype, np.integer) and yt.size:
            num_classes = int(max(np.max(y_syn), np.max(yt))) + 1
    _, y, c = inputs.check_syn(x, y_syn, num_classes)
    if xt.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"test images have shape (H, W, C) = {xt.shape[1:]} but synthetic images have "
            f"{x.shape[1:]}; they must match (same resolution and channels)."
        )
    labels = inputs.check_test_labels(y_test, xt.shape[0], c)
    return _Prepared(x, y, c, labels)


def _result(
    per_seed: list[float],
    final_losses: list[float],
    protocol: EvalProtocol,
    prepared: _Prepared,
    num_test: int,
    seconds: float,
) -> dict[str, Any]:
    n = int(prepared.x.shape[0])
    return {
        "mean": float(np.mean(per_seed)),
        "std": float(np.std(per_seed)),
        "per_seed": [float(a) for a in per_seed],
        "protocol": protocol.to_dict(),
        "seconds": seconds,
        "steps": protocol.steps_for(n),
        "batch_size": protocol.batch_for(n),
        "num_syn": n,
        "num_test": int(num_test),
        "num_classes": prepared.num_classes,
        "final_losses": [float(v) for v in final_losses],
    }


def _summary(result: dict[str, Any], protocol: EvalProtocol, what: str = "eval") -> None:
    stage(
        f"{what} {protocol.name}: {100 * result['mean']:.2f} ± {100 * result['std']:.2f}% "
        f"over {protocol.num_seeds} seed(s), {result['seconds']:.0f}s"
    )


def _evaluate_loop(
    key: chex.PRNGKey, prepared: _Prepared, xt: np.ndarray, protocol: EvalProtocol,
    progress: bool,
) -> dict[str, Any]:
    """The per-seed reference: seed ``i`` trained by :func:`~mgdd_jax.evaluation.trainer._train`
    with ``fold_in(key, i)``."""
    arch = protocol.arch(prepared.num_classes)
    start = time.perf_counter()
    per_seed: list[float] = []
    final_losses: list[float] = []
    x_dev = jnp.asarray(prepared.x, jnp.float32)
    for i in range(protocol.num_seeds):
        name = f"eval seed {i + 1}/{protocol.num_seeds}"
        variables, metrics = trainer._train(
            jax.random.fold_in(key, i), x_dev, prepared.y, prepared.num_classes, protocol,
            progress, name,
        )
        acc = predict.accuracy(variables, xt, prepared.labels, arch, protocol.test_batch_size)
        per_seed.append(acc)
        final_losses.append(metrics["final_loss"])
        if progress:
            stage(f"{name}: test accuracy {100 * acc:.2f}%")
    return _result(per_seed, final_losses, protocol, prepared, xt.shape[0],
                   time.perf_counter() - start)


def _evaluate_sets(
    keys: list[chex.PRNGKey],
    prepared: list[_Prepared],
    xt: np.ndarray,
    protocol: EvalProtocol,
    progress: bool,
    mode: str,
    sets_per_call: int | None,
) -> list[dict[str, Any]]:
    """Evaluate validated sets with the batched trainer: sets of equal ``(shape, classes)`` go
    together, ``sets_per_call`` of them per compiled call (None: all in "vmap" mode, one at a
    time in "unrolled" mode). Set ``j``'s seed ``i`` uses ``fold_in(keys[j], i)``."""
    if mode == "loop":
        return [_evaluate_loop(k, p, xt, protocol, progress) for k, p in zip(keys, prepared)]
    if sets_per_call is None:
        sets_per_call = len(prepared) if mode == "vmap" else 1
    if sets_per_call < 1:
        raise ValueError(f"sets_per_call must be >= 1 or None, got {sets_per_call}")
    groups: dict[tuple[Any, ...], list[int]] = {}
    for j, p in enumerate(prepared):
        groups.setdefault((p.x.shape, p.num_classes), []).append(j)
    s_count = protocol.num_seeds
    results: list[dict[str, Any] | None] = [None] * len(prepared)
    many = len(prepared) > 1
    for members in groups.values():
        for at in range(0, len(members), sets_per_call):
            call = members[at : at + sets_per_call]
            first = prepared[call[0]]
            arch = protocol.arch(first.num_classes)
            if many:
                sets = f"set {call[0] + 1}" if len(call) == 1 else f"sets {[j + 1 for j in call]}"
                name = f"eval {sets}/{len(prepared)}, {s_count} seed(s)"
            elif s_count == 1:
                name = "eval seed 1/1"
            else:
                name = f"eval seeds 1-{s_count}/{s_count}"
            start = time.perf_counter()
            x = jnp.asarray(np.stack([prepared[j].x for j in call]), jnp.float32)
            y = jnp.stack([prepared[j].y for j in call])
            seed_keys = [jax.random.fold_in(keys[j], i) for j in call for i in range(s_count)]
            variables, metrics = batched._train_batched(
                seed_keys, x, y, first.num_classes, protocol, progress, name, mode
            )
            # One test split and one class count per group: the same labels for every set.
            accs = predict._accuracies(
                variables, xt, first.labels, arch, protocol.test_batch_size, mode
            )
            seconds = time.perf_counter() - start
            for g, j in enumerate(call):
                per_seed = [float(a) for a in accs[g * s_count : (g + 1) * s_count]]
                losses = metrics["final_losses"][g * s_count : (g + 1) * s_count]
                if progress:
                    for i, acc in enumerate(per_seed):
                        where = f"eval set {j + 1}/{len(prepared)} seed" if many else "eval seed"
                        stage(f"{where} {i + 1}/{s_count}: test accuracy {100 * acc:.2f}%")
                results[j] = _result(per_seed, losses, protocol, prepared[j], xt.shape[0],
                                     seconds)
    return [r for r in results if r is not None]


def evaluate_synthetic(
    key: chex.PRNGKey,
    x_syn: chex.Array,
    y_syn: chex.Array,
    x_test: chex.Array,
    y_test: chex.Array,
    protocol: EvalProtocol | str = "frepo",
    *,
    num_classes: int | None = None,
    progress: bool = True,
    seeds: str = "auto",
) -> dict[str, Any]:
    """Train ``protocol.num_seeds`` fresh networks on the synthetic set; test accuracy mean ± std.

    Args:
      key: PRNG key; seed ``i`` uses ``fold_in(key, i)``. Same key -> same result.
      x_syn, y_syn: the synthetic set, see :func:`~mgdd_jax.evaluation.train_on_synthetic`.
      x_test, y_test: the full test split, preprocessed like ``x_syn``; labels ``(n,)`` class
        ids or ``(n, C)`` rows.
      protocol: an :class:`EvalProtocol` or a key of :data:`~mgdd_jax.evaluation.PROTOCOLS`.
      num_classes: only for integer ``y_syn`` (default: ``max + 1`` over y_syn and y_test).
      progress: show a :class:`~mgdd_jax.progress.Progress` line on stderr during training
        (at most every 2 s, and at the end) and each seed's test accuracy.
      seeds: how the seeds are trained (:data:`~mgdd_jax.evaluation.SEED_MODES`): all at once
        in one jitted device loop per chunk of steps, ``"vmap"``-batched or ``"unrolled"``, or
        ``"loop"``, the per-seed reference (one jitted call per step); ``"auto"``:
        :func:`~mgdd_jax.evaluation.resolve_seeds` for the protocol's network (on CPU
        unrolled for the ConvNet, the loop for the others).
        The same numbers either way, up to float rounding.

    Returns:
      JSON-serialisable ``{"mean", "std", "per_seed", "protocol", "seconds", "steps",
      "batch_size", "num_syn", "num_test", "num_classes", "final_losses"}``; accuracies are
      fractions, ``std`` is the population std (``ddof=0``).

    Raises:
      ValueError: on bad input, before any training; on a non-finite training loss (with its
        step).
    """
    protocol = protocol_lib.resolve_protocol(protocol)
    mode = batched.resolve_seeds(seeds, network=protocol.network)
    xt = inputs.check_images(x_test, "x_test")
    prepared = _prepare(x_syn, y_syn, xt, y_test, num_classes)
    result = _evaluate_sets([key], [prepared], xt, protocol, progress, mode, None)[0]
    if progress:
        _summary(result, protocol)
    return result


def evaluate_many(
    key: chex.PRNGKey | Sequence[chex.PRNGKey],
    sets: Sequence[tuple[chex.Array, chex.Array]],
    x_test: chex.Array,
    y_test: chex.Array,
    protocol: EvalProtocol | str = "frepo",
    *,
    num_classes: int | None = None,
    progress: bool = True,
    seeds: str = "auto",
    sets_per_call: int | None = None,
) -> list[dict[str, Any]]:
    """:func:`evaluate_synthetic` of several sets against one test split, batched.

    ``evaluate_many(key, sets, ...)[j]`` is ``evaluate_synthetic(key, *sets[j], ...)`` (the
    same keys: seed ``i`` of every set uses ``fold_in(key, i)``; float tolerance), but sets of
    the same shape and class count are trained together, ``sets x seeds`` networks per compiled
    call, and share one compilation.

    Args:
      key: one PRNG key for all sets, or a sequence (list / tuple) of one key per set.
      sets: ``[(x_syn, y_syn), ...]``, each as in :func:`evaluate_synthetic`.
      x_test, y_test, protocol, num_classes, progress, seeds: as in
        :func:`evaluate_synthetic` (``num_classes`` applies to every set).
      sets_per_call: sets of one shape trained per compiled call; None: all of them with
        ``"vmap"``, one at a time with ``"unrolled"`` (its graph grows with the number of
        networks, and a CPU's cores are already busy with one set's seeds).

    Returns:
      One result dict per set, in the order of ``sets``. ``"seconds"`` is the wall time of the
      call that trained the set (shared by the sets trained together).

    Raises:
      ValueError: on bad input in any set, before any training; on a non-finite loss.
    """
    protocol = protocol_lib.resolve_protocol(protocol)
    mode = batched.resolve_seeds(seeds, network=protocol.network)
    sets = list(sets)
    if not sets:
        raise ValueError("sets is empty: pass a list of (x_syn, y_syn) pairs.")
    for j, pair in enumerate(sets):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"sets[{j}] must be an (x_syn, y_syn) pair, got {type(pair)}")
    if isinstance(key, (list, tuple)):
        keys = list(key)
        if len(keys) != len(sets):
            raise ValueError(f"{len(keys)} keys for {len(sets)} sets: pass one key per set, "
                             "or one key for all.")
    else:
        keys = [key] * len(sets)
    xt = inputs.check_images(x_test, "x_test")
    prepared = []
    for j, (x_syn, y_syn) in enumerate(sets):
        try:
            prepared.append(_prepare(x_syn, y_syn, xt, y_test, num_classes))
        except ValueError as e:
            raise ValueError(f"sets[{j}]: {e}") from e
    results = _evaluate_sets(keys, prepared, xt, protocol, progress, mode, sets_per_call)
    if progress:
        for j, result in enumerate(results):
            _summary(result, protocol, f"eval set {j + 1}/{len(results)}")
    return results
