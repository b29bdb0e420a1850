"""Generator checkpoints (orbax): parameters plus the config they were built with.

A checkpoint directory is an orbax ``CheckpointManager`` root; each step holds the items
``params`` (the generator's parameters, ``StandardSave``) and ``meta`` (JSON:
:func:`checkpoint_meta`, i.e. ``format``, the ``GeneratorConfig`` under ``generator``, and
``info``: what kind of generator it is, how it was made). A meta-training run's steps
(:func:`save_train_state`) hold a third item, ``opt_state``; they are generator checkpoints
all the same, so a meta-training workdir's ``checkpoints/`` loads with :func:`load_generator`.
orbax writes a step to a temporary directory and renames it when complete, so a crash never
leaves a half-written step behind.

One compatibility check, :func:`check_config_matches`, compares a stored config (nested
dicts) with the wanted one *before* any array is read and raises a
:class:`CheckpointMismatchError` naming the fields that differ. Loading a generator uses it
(:func:`check_compatible`) with one tolerated difference, ``image_channels``: a meta generator
trained on RGB loads into a generator for grey images, its core restored and fresh channel
adaptors added (App. B). Resuming a meta-training run uses it on the whole run config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from mgdd_jax.generator import GeneratorConfig, init_generator, with_image_channels

CHECKPOINT_FORMAT = "mgdd_jax.generator/1"


class CheckpointMismatchError(ValueError):
    """The checkpoint's generator config is incompatible with the requested one."""


def _manager(directory: str, *, max_to_keep: int | None = None):
    """The manager :func:`save_generator` writes with (creates ``directory``)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _reader(directory: str) -> ocp.CheckpointManager:
    """A manager that only lists and restores the steps of an existing ``directory``.

    Not orbax's ``read_only=True``: that option logs two warnings on every open (the
    directory is read only; ``save_interval_steps`` set to 0) and guards only ``save`` and
    ``delete``, which a reader never calls. With ``create=False`` and no root metadata the
    manager writes nothing, so a checkpoint on a read-only file system (an installed package)
    loads as before.
    """
    options = ocp.CheckpointManagerOptions(create=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def checkpoint_meta(gen_config: GeneratorConfig,
                    info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON ``meta`` item of every step: ``{"format", "generator", "info"}``."""
    return {"format": CHECKPOINT_FORMAT, "generator": gen_config.to_dict(),
            "info": dict(info or {})}


def save_generator(
    directory: str,
    step: int,
    params: Any,
    config: GeneratorConfig,
    info: dict[str, Any] | None = None,
    *,
    max_to_keep: int | None = 3,
) -> str:
    """Save ``params`` with ``config`` and a JSON-serialisable ``info`` as ``step``.

    Returns:
      The step's directory.
    """
    meta = checkpoint_meta(config, info)
    with _manager(directory, max_to_keep=max_to_keep) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mngr.wait_until_finished()
    return os.path.join(os.path.abspath(directory), str(step))


def read_meta(directory: str, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """``(step, meta)`` of the latest (or given) step, without reading any array."""
    _check_directory(directory)
    with _reader(directory) as mngr:
        return _read_meta(mngr, directory, step)


def _check_directory(directory: str) -> None:
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"no generator checkpoint at {directory!r}: the directory does not exist. Pass the "
            "--out directory of an earlier distill run, or a meta-training workdir."
        )


def _read_meta(mngr: ocp.CheckpointManager, directory: str,
               step: int | None) -> tuple[int, dict[str, Any]]:
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"{directory!r} holds no complete checkpoint step (an interrupted save leaves "
            "none); rerun the job that writes it."
        )
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{directory!r} is not an mgdd_jax generator checkpoint (format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected "
            f"{CHECKPOINT_FORMAT!r})."
        )
    return step, meta


def _plain(tree: Any) -> Any:
    """JSON's view of ``tree`` (tuples become lists), so stored and wanted compare alike."""
    return json.loads(json.dumps(tree, default=lambda o: list(o) if isinstance(o, tuple)
                                 else o.item() if hasattr(o, "item") else str(o)))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


_MISSING = "<missing>"

# Config fields added after checkpoints and results were first written, with the value that
# means "as before": a stored config without one of them equals a config holding that value.
ADDED_FIELDS: dict[str, Any] = {
    "generator.size_embedding": True,
    "feature.arch": "convnet",
    "adapt.objective": "krr",
    "adapt.ds_factor": 1,
    "eval.archs": "convnet",
    "reinit_seed": -1,
    "image_size": 0,
    "pixel.learning_rate": 0.0,
    "pixel.momentum": 0.5,
}


def config_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any], *,
                       ignore: Collection[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(field, stored value, wanted value)`` for every differing leaf of two nested dicts.

    Fields are dotted paths (``"generator.width"``, ``"meta.inner_steps"``); a field present
    on one side only differs (the other side's value is ``"<missing>"``), unless it is one of
    :data:`ADDED_FIELDS` holding its "as before" value. ``ignore`` lists dotted fields that
    may differ.
    """
    a, b = _flatten(_plain(dict(stored))), _flatten(_plain(dict(wanted)))
    for k, default in ADDED_FIELDS.items():  # absent = the value that means "as before"
        if (k in a) != (k in b) and a.get(k, default) == b.get(k, default) == default:
            a.pop(k, None)
            b.pop(k, None)
    return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k, _MISSING) != b.get(k, _MISSING)]


def check_config_matches(
    stored: Mapping[str, Any],
    wanted: Mapping[str, Any],
    *,
    where: str,
    what: str,
    advice: str,
    ignore: Collection[str] = (),
    not_flags: Collection[str] = (),
) -> None:
    """The one compatibility check: raise unless ``stored`` equals ``wanted`` (but ``ignore``).

    Args:
      stored: the config a checkpoint was made with, as nested dicts laid out like the run
        config (so a field's dotted path is its ``--config.`` flag).
      wanted: the config asked for, same layout.
      where: the checkpoint's location, for the message.
      what: what was made (``"generator"``, ``"meta-training run"``), for the message.
      advice: what to do; ``{fix}`` in it becomes the flags that reproduce the stored config.
      ignore: dotted fields allowed to differ.
      not_flags: dotted fields that are no ``--config.`` flag (derived, e.g. from the data):
        named in the message, left out of ``{fix}``.

    Raises:
      CheckpointMismatchError: naming every differing field with both values.
    """
    diff = config_differences(stored, wanted, ignore=ignore)
    if diff:
        fields = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, a, b in diff)
        fix = " ".join(f"--config.{k}={a}" for k, a, _ in diff
                       if a is not _MISSING and k not in not_flags)
        raise CheckpointMismatchError(
            f"the checkpoint at {where!r} was made for another {what} ({fields}). "
            + advice.format(fix=fix))


def check_compatible(stored: GeneratorConfig, wanted: GeneratorConfig, where: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``stored`` can load into ``wanted``."""
    check_config_matches(
        {"generator": dataclasses.asdict(stored)}, {"generator": dataclasses.asdict(wanted)},
        where=where, what="generator",
        # Channel adaptors are added on load; the size-embedding switch changes no parameter.
        ignore=("generator.image_channels", "generator.size_embedding"),
        advice="Load it with a matching config ({fix}) or pick a checkpoint of this "
               "architecture.")


def load_generator(
    directory: str,
    config: GeneratorConfig,
    image_shape: tuple[int, int, int],
    *,
    step: int | None = None,
    key: jax.Array | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Restore generator parameters for ``config`` from ``directory``.

    Args:
      directory: checkpoint root (as written by :func:`save_generator`).
      config: the generator config to load into; checked against the stored one first.
      image_shape: ``(H, W, C)`` of the target images (any H, W: the generator is fully
        convolutional).
      step: a step to load, default the latest.
      key: PRNG key for fresh channel adaptors when the channel counts differ.

    Returns:
      ``(params, meta)``.
    """
    _check_directory(directory)
    with _reader(directory) as mngr:
        step, meta = _read_meta(mngr, directory, step)
        stored = GeneratorConfig.from_dict(meta["generator"])
        check_compatible(stored, config, directory)
        stored_shape = (*image_shape[:2], stored.image_channels)
        # Onto this process's first device, whatever devices saved it (a checkpoint of a
        # multi-device or multi-host meta-training run loads on one device).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
            jax.eval_shape(lambda: init_generator(jax.random.key(0), stored_shape, stored)))
        params = mngr.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
        )["params"]
    if stored.image_channels != config.image_channels:
        params = with_image_channels(params, tuple(image_shape), config, key)
    return params, meta


# ------------------------------------------------------------------------ training state
def open_train_state_manager(directory: str, *, save_interval_steps: int = 1,
                             max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """The checkpoint manager of a training run (create ``directory`` if needed).

    :func:`save_train_state` saves every ``save_interval_steps``-th step (and any forced one);
    the ``max_to_keep`` latest steps are kept (None: all). Close it (or use it as a context
    manager) when done.
    """
    options = ocp.CheckpointManagerOptions(save_interval_steps=save_interval_steps,
                                           max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_train_state(mngr: ocp.CheckpointManager, step: int, state: Mapping[str, Any],
                     meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Save ``state["params"]``, ``state["opt_state"]`` and the JSON ``meta`` as ``step``.

    ``meta`` is :func:`checkpoint_meta`'s dict (``format``, ``generator``, ``info``), so the
    step is also a generator checkpoint. Asynchronous: call ``mngr.wait_until_finished()``
    before relying on it. Returns whether a save was started (the manager's interval policy
    skips other steps unless ``force``).
    """
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"meta must be checkpoint_meta(...)'s dict, got format "
                         f"{meta.get('format')!r}")
    return mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        opt_state=ocp.args.StandardSave(state["opt_state"]),
        meta=ocp.args.JsonSave(dict(meta))), force=force)


def read_train_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The JSON ``meta`` of ``step`` (no array is read)."""
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_train_state(mngr: ocp.CheckpointManager, step: int,
                        abstract_state: Mapping[str, Any]) -> dict[str, Any]:
    """``{"params", "opt_state"}`` of ``step``, shaped, typed and placed like
    ``abstract_state``'s (arrays or ``jax.ShapeDtypeStruct``s with shardings)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {k: abstract_state[k] for k in ("params", "opt_state")})
    restored = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract["params"]),
        opt_state=ocp.args.StandardRestore(abstract["opt_state"])))
    return {"params": restored["params"], "opt_state": restored["opt_state"]}


def latest_step(directory: str) -> int | None:
    """The latest complete step under ``directory`` (None: no directory or no step); reads
    and writes nothing else."""
    if not os.path.isdir(directory):
        return None
    with _reader(directory) as mngr:
        return mngr.latest_step()
