"""Generator checkpoints (orbax): parameters plus the config they were built with.

A checkpoint directory is an orbax ``CheckpointManager`` root; each step holds two items,
``params`` (the generator's parameters, ``StandardSave``) and ``meta`` (JSON: the
``GeneratorConfig``, what kind of generator it is, how it was made). orbax writes a step to a
temporary directory and renames it when complete, so a crash never leaves a half-written
step behind.

Loading checks the stored config against the one asked for *before* reading any array: a
checkpoint from another architecture is a :class:`CheckpointMismatchError` that names the
fields that differ. The one tolerated difference is ``image_channels``: a meta generator
trained on RGB loads into a generator for grey images, its core restored and fresh channel
adaptors added (App. B).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mgdd_jax.generator import GeneratorConfig, init_generator

CHECKPOINT_FORMAT = "mgdd_jax.generator/1"


class CheckpointMismatchError(ValueError):
    """The checkpoint's generator config is incompatible with the requested one."""


def _manager(directory: str, *, max_to_keep: int | None = None, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


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
    meta = {"format": CHECKPOINT_FORMAT, "generator": config.to_dict(), "info": info or {}}
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
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"no generator checkpoint at {directory!r}: the directory does not exist. Pass the "
            "--out directory of an earlier distill run, or a meta-training workdir."
        )
    with _manager(directory, read_only=True) as mngr:
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


def check_compatible(stored: GeneratorConfig, wanted: GeneratorConfig, where: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``stored`` can load into ``wanted``."""
    a, b = dataclasses.asdict(stored), dataclasses.asdict(wanted)
    diff = [k for k in a if k != "image_channels" and a[k] != b[k]]
    if diff:
        fields = ", ".join(f"{k}: checkpoint {a[k]!r} vs config {b[k]!r}" for k in diff)
        fix = " ".join(f"--config.generator.{k}={a[k]}" for k in diff)
        raise CheckpointMismatchError(
            f"the checkpoint at {where!r} was made for another generator ({fields}). "
            f"Load it with a matching config ({fix}) or pick a checkpoint of this architecture."
        )


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
    step, meta = read_meta(directory, step)
    stored = GeneratorConfig.from_dict(meta["generator"])
    check_compatible(stored, config, directory)
    stored_shape = (*image_shape[:2], stored.image_channels)
    target = jax.eval_shape(lambda: init_generator(jax.random.key(0), stored_shape, stored))
    with _manager(directory, read_only=True) as mngr:
        params = mngr.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
        )["params"]
    if stored.image_channels != config.image_channels:
        fresh = init_generator(
            key if key is not None else jax.random.key(0), tuple(image_shape), config
        )
        core = {k: v for k, v in params.items() if not k.startswith("adaptor")}
        params = {**core, **{k: v for k, v in fresh.items() if k.startswith("adaptor")}}
    return params, meta
