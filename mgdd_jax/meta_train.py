"""Meta-training a generator: the outer loop of MGDD Alg. 1, resumable and multi-device.

The loop that :mod:`mgdd_jax.meta`'s jitted step runs in (as :func:`mgdd_jax.adapt.adapt` is
Alg. 2's), in two calls, validation separated from work::

    prep = meta_train.prepare(config, workdir)   # validates everything, loads the data;
                                                 # raises ValueError & co, writes nothing
    result = meta_train.train(prep)              # the work

``config`` is a run config (an ``ml_collections`` ``ConfigDict`` or nested dicts; the
launcher's config files are examples) with exactly these keys: ``source``, ``data_dir``,
``image_size``, ``seed``, ``multihost``, ``progress``, ``max_seconds``, ``log_every``,
``checkpoint_every``, ``keep_checkpoints`` and the subtrees ``generator``
(:class:`GeneratorConfig` without ``image_channels``, which comes from the data), ``feature``
(θ, θ*), ``meta`` (:class:`~mgdd_jax.meta.MetaConfig`), ``distributed``
(:class:`~mgdd_jax.multihost.MultihostConfig`, used with ``multihost``) and ``val``
(:class:`~mgdd_jax.meta_val.ValConfig`: the validation bank the run is judged by, scored every
``val.every`` steps and logged as ``val_loss``, ``val_identity``, ``val_gap``, ``val_ratio``;
it does not change the training, so it is not part of the resume check; ``val.source`` draws
it from another dataset, to measure transfer).

The workdir holds ``config.json``, ``metrics.jsonl`` (one line per logged step),
``loss_curve.png`` (:mod:`mgdd_jax.meta_plots`), ``run_until_step{N}.json`` (the run
summary) and ``checkpoints/`` (:func:`mgdd_jax.checkpoint.save_train_state`: the generator
``params``, the optimiser state ``opt_state`` and the JSON ``meta``, so it is also a
generator checkpoint). Running again with the same workdir resumes from the latest
checkpoint, after checking that it was made with the same config
(:func:`mgdd_jax.checkpoint.check_config_matches`); step ``i`` draws its tasks and networks
from ``fold_in(key, i)`` (:func:`mgdd_jax.meta.step_inputs`), so a resumed run continues the
same random stream. A background thread (:class:`mgdd_jax.meta.Prefetcher`) samples and
places step ``i+1``'s tasks while step ``i`` runs: the same batches in the same order, off
the critical path. SIGTERM (preemption) saves the current step before returning.

With ``multihost`` (one process per host, every one running the same command),
:func:`prepare` joins the processes (:func:`mgdd_jax.multihost.initialize`: bounded waits,
one-line errors) and each process draws only its own devices' tasks of every step (Alg. 1
l. 11-12, :func:`mgdd_jax.meta.process_tasks`): the same batches, and updates, as one process
with all the devices. The workdir is shared by all hosts; only process 0 writes its files
(orbax coordinates the checkpoint writes of all processes). All processes resume from the
same step, line up before their first step, and stop together: SIGTERM or ``max_seconds`` on
any process stops all of them at the same step (:func:`mgdd_jax.multihost.any_process`). A
process that dies ends the others (:class:`mgdd_jax.multihost.PeerLostError`, or jax's
heartbeat check within ``distributed.heartbeat_timeout_s``); rerunning all of them resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mgdd_jax import checkpoint, data, meta, meta_plots, meta_val, multihost, outputs
from mgdd_jax.configs.keys import check_keys
from mgdd_jax.data import settings as data_settings
from mgdd_jax.generator import GeneratorConfig, init_generator, random_generator
from mgdd_jax.progress import Progress, stage

# The run config's top-level fields besides the ``generator``, ``feature`` and ``meta`` trees.
RUN_FIELDS = ("source", "data_dir", "image_size", "seed", "multihost", "progress",
              "max_seconds", "log_every", "checkpoint_every", "keep_checkpoints")
SUBTREES = ("generator", "feature", "meta", "distributed", "val")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How the loop runs (not Alg. 1's hyper-parameters: those are ``MetaConfig``).

    Attributes:
      seed: the run's key (generator init; step ``i`` uses ``fold_in(key, i)``).
      log_every: steps between metric lines (the last step is always logged).
      checkpoint_every: steps between checkpoints (the last step is always saved).
      keep_checkpoints: how many latest checkpoints to keep.
      max_seconds: stop (with a checkpoint) after this many seconds of this run; 0: off.
      progress: show the progress line.
    """

    seed: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    max_seconds: float
    progress: bool

    def __post_init__(self):
        if self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError(
                f"log_every, checkpoint_every and keep_checkpoints must be >= 1, got "
                f"{self.log_every}, {self.checkpoint_every}, {self.keep_checkpoints}")
        if self.max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0 (0: no limit), got {self.max_seconds}")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything :func:`train` needs, validated by :func:`prepare`.

    Attributes:
      workdir: absolute output and resume directory (exists, writable, otherwise untouched).
      config: the run config as plain dicts (written to ``config.json``).
      meta: Alg. 1's hyper-parameters.
      gen_config: the generator, ``image_channels`` those of the source.
      loop: how the loop runs.
      source: the dataset name.
      dataset: the loaded meta-training source.
      mesh: the devices the tasks are sharded over.
      checkpoint_meta: the JSON ``meta`` every checkpoint of this run carries.
      start_step: the step the run resumes from (0: a fresh run).
      val: the validation bank's config.
      bank: the fixed validation tasks (None when ``val.tasks`` is 0).
      bank_channels: channels of the bank's images (``val.source``'s; the source's by default).
    """

    workdir: str
    config: dict[str, Any]
    meta: meta.MetaConfig
    gen_config: GeneratorConfig
    loop: LoopConfig
    source: str
    dataset: data.Dataset
    mesh: Mesh
    checkpoint_meta: dict[str, Any]
    start_step: int
    val: meta_val.ValConfig
    bank: dict[str, np.ndarray] | None
    bank_channels: int

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints")


# ------------------------------------------------------------------------------ configs
def _plain_config(config: Any) -> dict[str, Any]:
    d = config.to_dict() if hasattr(config, "to_dict") else config
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else
                                 o.to_dict() if hasattr(o, "to_dict") else str(o)))


def meta_config(config: Mapping[str, Any]) -> meta.MetaConfig:
    """The :class:`~mgdd_jax.meta.MetaConfig` of a run config (its ``meta`` and ``feature``)."""
    return meta.MetaConfig.from_config(config["meta"], config["feature"])


def gen_config(config: Mapping[str, Any], image_channels: int) -> GeneratorConfig:
    """The run config's generator for images of ``image_channels`` channels."""
    fields = dict(config["generator"])
    if "image_channels" in fields:
        raise ValueError("config.generator must not set image_channels: it comes from the "
                         "meta-training source's images")
    try:
        return GeneratorConfig(**fields, image_channels=image_channels)
    except TypeError as e:
        raise ValueError(f"bad generator config: {e}") from e


def loop_config(config: Mapping[str, Any]) -> LoopConfig:
    """The run config's :class:`LoopConfig`."""
    names = [f.name for f in dataclasses.fields(LoopConfig)]
    return LoopConfig(**{k: config[k] for k in names})


def _check_fields(config: Mapping[str, Any]) -> None:
    check_keys(config.keys(), (*RUN_FIELDS, *SUBTREES), "the meta-training config",
               f"it holds the run fields {', '.join(RUN_FIELDS)} and the subtrees "
               f"{', '.join(SUBTREES)}, and no other key")


def _resume_view(ckpt_meta: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``meta`` laid out like the run config (dotted path = ``--config.`` flag)."""
    info = ckpt_meta.get("info") or {}
    stored_meta = dict(info.get("meta") or {})
    feature = stored_meta.pop("feature", None)
    if stored_meta:  # made before a field existed: what it did is the field's added value
        stored_meta = meta.with_added_fields(stored_meta)
    return {"source": info.get("source"), "seed": info.get("seed"),
            "generator": ckpt_meta.get("generator"), "feature": feature, "meta": stored_meta}


def run_checkpoint_meta(gcfg: GeneratorConfig, mcfg: meta.MetaConfig, source: str,
                        seed: int) -> dict[str, Any]:
    """What a meta run's checkpoints record of it (and :func:`check_resumable` compares)."""
    return checkpoint.checkpoint_meta(
        gcfg, {"kind": "meta", "source": source, "meta": mcfg.to_dict(), "seed": seed})


def check_resumable(directory: str, step: int, ckpt_meta: Mapping[str, Any]) -> None:
    """Refuse to resume ``directory``'s ``step`` unless it was made with the same run config.

    Raises:
      CheckpointMismatchError: naming the differing fields (a ``ValueError``).
    """
    _, stored = checkpoint.read_meta(directory, step)
    checkpoint.check_config_matches(
        _resume_view(stored), _resume_view(ckpt_meta), where=directory,
        what=f"meta-training run (step {step})", not_flags=("generator.image_channels",),
        advice="Resume with the original config ({fix}) or use a new --workdir.")


def _check_same_start(start: int, ckpt_dir: str) -> None:
    """All processes resume from the same step (a barrier too: no process creates the
    checkpoint directory in :func:`train` before every process has looked at it)."""
    try:
        multihost_utils.assert_equal(np.int32(start), "")
    except AssertionError:
        raise ValueError(
            f"the processes see different latest checkpoints in {ckpt_dir} (this one: step "
            f"{start}); the workdir must be one directory shared by all hosts (a shared "
            "file system).") from None


# ------------------------------------------------------------------------------ prepare
def prepare(config: Mapping[str, Any], workdir: str, *, zca: bool = False,
            default_image_size: int = 0) -> Prepared:
    """Validate a meta-training run and load its data; no work, nothing written.

    Checks, in order: the config's fields and values; the workdir path; (``multihost``:
    joins the other processes, :func:`mgdd_jax.multihost.initialize`); the source (loads it;
    enough classes and images per class for the tasks); the meta-batch against the devices
    (of all processes); an existing checkpoint in the workdir against this config (resume;
    several processes must see the same one); that the workdir can be written (it is
    created, empty, if missing: the only thing done to it).

    Args:
      config: the run config (see the module docstring).
      workdir: output and resume directory.
      zca: ZCA-whiten the source (a per-dataset setting, not part of the run config).
      default_image_size: resize to this when ``config.image_size`` is 0 (0: keep).

    Raises:
      ValueError: bad config, source, devices or workdir; its subclass
        :class:`~mgdd_jax.checkpoint.CheckpointMismatchError` for a workdir made by another
        config; :class:`~mgdd_jax.data.DatasetNotFoundError` when the source's files are
        missing.
    """
    _check_fields(config)
    mcfg = meta_config(config)
    val = meta_val.ValConfig.from_config(config["val"])
    gen_config(config, 1)  # validate the architecture before loading anything
    loop = loop_config(config)
    if not isinstance(workdir, str) or not workdir:
        raise ValueError("a workdir is required (--workdir)")
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} exists and is a file; choose a directory path.")

    dist = multihost.MultihostConfig.from_config(config["distributed"])
    if config["multihost"]:
        multihost.initialize(dist)
    source = config["source"]
    ds = data.load_dataset(source, data_dir=config["data_dir"] or None, zca=zca,
                           image_size=config["image_size"] or default_image_size or None)
    meta.check_source(ds.y_train, ds.num_classes, mcfg)
    bank_ds = ds
    if val.enabled and val.source:  # a transfer bank: another dataset at the run's size
        bank_ds = data.load_dataset(val.source, data_dir=config["data_dir"] or None,
                                    zca=data_settings.settings_for(val.source).zca,
                                    image_size=ds.image_shape[0])
    bank = (meta_val.make_bank(bank_ds.x_train, bank_ds.y_train, bank_ds.num_classes, mcfg,
                               val) if val.enabled else None)
    gcfg = gen_config(config, ds.channels)
    mesh = meta.task_mesh()
    meta.check_mesh(mcfg, mesh)

    ckpt_meta = run_checkpoint_meta(gcfg, mcfg, source, loop.seed)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    start = checkpoint.latest_step(ckpt_dir) or 0
    if jax.process_count() > 1:
        multihost.barrier("prepared", dist.initialization_timeout_s)  # loading took long
        _check_same_start(start, ckpt_dir)
    if start:
        check_resumable(ckpt_dir, start, ckpt_meta)
    workdir = outputs.check_writable_dir(workdir)
    return Prepared(workdir=workdir, config=_plain_config(config), meta=mcfg, gen_config=gcfg,
                    loop=loop, source=source, dataset=ds, mesh=mesh,
                    checkpoint_meta=_plain_config(ckpt_meta), start_step=start, val=val,
                    bank=bank, bank_channels=bank_ds.channels)


# ------------------------------------------------------------------------------ train
def _run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(generator init, steps): the two keys of a run's seed."""
    k_init, k_steps = jax.random.split(jax.random.key(seed))
    return k_init, k_steps


# ``meta.init`` -> the generator initialiser of ω at meta step 0 (meta.INITS).
_INITIALISERS = {"identity": init_generator, "random": random_generator}


def _init_from_run_key(prep: Prepared, init: str) -> Any:
    # One compiled function instead of a compile per layer op (same values as eager).
    return jax.jit(_INITIALISERS[init], static_argnums=(1, 2))(
        _run_keys(prep.loop.seed)[0], prep.dataset.image_shape, prep.gen_config)


def initial_params(prep: Prepared) -> Any:
    """The run's identity generator: the validation bank's reference (its ``val_identity``
    is scored on these) and ω at step 0 unless ``meta.init="random"`` (:func:`start_params`)."""
    return _init_from_run_key(prep, "identity")


def start_params(prep: Prepared) -> Any:
    """The run's ω at meta step 0 (Alg. 1 l. 1), as ``meta.init`` says: :func:`initial_params`
    for ``"identity"``; for ``"random"`` every conv kernel drawn from the same key
    (:func:`mgdd_jax.generator.random_generator`)."""
    return _init_from_run_key(prep, prep.meta.init)


def is_main_process() -> bool:
    """Whether this process writes the workdir's files (process 0 of a multi-host run)."""
    return jax.process_index() == 0


def _truncate_metrics(path: str, start: int) -> None:
    """Drop metric lines beyond the restored step (written after the last checkpoint)."""
    rows = [r for r in outputs.read_jsonl(path) if r["step"] <= start]
    with outputs.atomic_path(path, ".jsonl") as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@dataclasses.dataclass
class _Validation:
    """The validation bank's scorer and its scores at the start (all None without a bank).

    Attributes:
      score: :func:`mgdd_jax.meta_val.make_scorer`'s function.
      identity: the identity generator's bank score (the reference of ``val_gap``).
      at_start: ω's bank score at meta step 0 (the identity's unless ``meta.init="random"``).
      seconds: time spent scoring the bank so far.
    """

    score: Callable[[Any, Mapping[str, Any]], Any] | None = None
    identity: float | None = None
    at_start: float | None = None
    seconds: float = 0.0


@dataclasses.dataclass
class _Run:
    """One :func:`train` call's state: made by :func:`_restore`, advanced by :func:`_loop`,
    summarised by :func:`_finish`.

    Attributes:
      state: the meta state (``{"params", "opt_state", "step"}``, replicated).
      mngr: the open checkpoint manager of ``prep.checkpoint_dir``.
      start: the step the call started from (0, or the checkpoint it resumed).
      done: the steps done so far (the state's step).
      last: the metrics of the last logged step.
      preempted: whether the loop stopped for SIGTERM.
      t0: when the loop started (``time.perf_counter``).
      t_after_first: when the first step had finished (None before it).
    """

    state: dict[str, Any]
    mngr: Any
    start: int
    done: int
    last: dict[str, float] = dataclasses.field(default_factory=dict)
    preempted: bool = False
    t0: float = 0.0
    t_after_first: float | None = None


def _score_start(prep: Prepared, params: Any) -> _Validation:
    """The bank's scorer, and the scores of ω at step 0 and of the identity: once per run
    (deterministic)."""
    validation = _Validation()
    if prep.bank is None:
        return validation
    t_val = time.perf_counter()
    validation.score = meta_val.make_scorer(prep.gen_config, prep.meta, prep.val,
                                            prep.bank_channels)
    validation.at_start = meta_val.bank_score(validation.score, params, prep.bank)
    validation.identity = (
        validation.at_start if prep.meta.init == "identity" else
        meta_val.bank_score(validation.score, initial_params(prep), prep.bank))
    validation.seconds += time.perf_counter() - t_val
    return validation


def _restore(prep: Prepared, params: Any) -> _Run:
    """Build the meta state from ``params`` (Alg. 1 l. 1) and open the checkpoint manager;
    resume the latest checkpoint when :func:`prepare` found one.

    Raises:
      RuntimeError: the checkpoint directory changed since :func:`prepare`.
    """
    state = meta.init_meta_state(params, prep.meta, prep.mesh)
    loop = prep.loop
    mngr = checkpoint.open_train_state_manager(
        prep.checkpoint_dir, save_interval_steps=loop.checkpoint_every,
        max_to_keep=loop.keep_checkpoints)
    start = mngr.latest_step() or 0
    if start != prep.start_step:
        mngr.close()
        raise RuntimeError(f"{prep.checkpoint_dir} changed since prepare() (latest step "
                           f"{start}, was {prep.start_step}); prepare again")
    if start:
        restored = checkpoint.restore_train_state(mngr, start, state)
        state = meta.replicate({**restored, "step": np.int32(start)}, prep.mesh)
        stage(f"resumed from step {start} in {prep.workdir}")
    return _Run(state=state, mngr=mngr, start=start, done=start)


@contextlib.contextmanager
def _sigterm_recorded() -> Iterator[dict[str, Any]]:
    """While open, SIGTERM (preemption) sets ``["signal"]`` of the yielded dict instead of
    ending the process: the loop then saves and stops at the end of its step."""
    stop: dict[str, Any] = {"signal": None}
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _metrics_path(prep: Prepared) -> str:
    return os.path.join(prep.workdir, "metrics.jsonl")


def _loop(prep: Prepared, run: _Run, validation: _Validation, stop: Mapping[str, Any],
          stop_after: int | None) -> None:
    """Alg. 1's outer loop from ``run.start``: one :func:`mgdd_jax.meta.make_meta_step` call
    per meta step, until ``meta.steps``, ``stop_after`` steps, SIGTERM (``stop``) or
    ``max_seconds``; every process stops at the same step.

    Step ``i``'s inputs are drawn from ``fold_in(key, i)`` by the prefetch thread. Logged steps
    (every ``log_every``, the last, and each validation or stopping step) append a row to
    ``metrics.jsonl`` (the bank is scored every ``val.every`` steps); the checkpoint manager
    is handed every step (its interval decides), and the last step is always saved.

    Raises:
      FloatingPointError: a non-finite meta loss (at a logged step).
    """
    mcfg, loop, ds, mesh, val = prep.meta, prep.loop, prep.dataset, prep.mesh, prep.val
    main = is_main_process()
    _, k_steps = _run_keys(loop.seed)
    step_fn = meta.make_meta_step(prep.gen_config, mcfg, mesh)
    start, mngr = run.start, run.mngr
    metrics_path = _metrics_path(prep)
    if main:
        _truncate_metrics(metrics_path, start)
        if validation.identity is not None and start == 0:  # step 0: ω before any meta step
            outputs.append_jsonl(metrics_path, {
                "step": 0, "time_s": 0.0,
                **meta_val.scores(validation.at_start, validation.identity)})

    end = mcfg.steps if stop_after is None else min(mcfg.steps, start + stop_after)
    bar = Progress("meta", mcfg.steps, enabled=loop.progress and main)
    run.t0 = t0 = time.perf_counter()
    tasks = meta.process_tasks(mcfg.tasks_per_step, mesh)  # this process's share (all: 1)

    def inputs_of_step(i):  # sampled and placed on the devices by the prefetch thread
        batch, keys = meta.step_inputs(k_steps, i, ds.x_train, ds.y_train, ds.num_classes,
                                       mcfg, tasks)
        return meta.shard_batch((batch, keys), mesh, mcfg.tasks_per_step)

    prefetch = meta.Prefetcher(inputs_of_step, start, end)
    compiled = None
    try:
        for step, (batch, keys) in prefetch:
            if compiled is None:
                compiled = step_fn
                if jax.process_count() > 1:  # compile, then start together
                    compiled = step_fn.lower(run.state, batch, keys).compile()
                    multihost.barrier("compiled", prep.config["distributed"][
                        "initialization_timeout_s"])
            run.state, metrics = compiled(run.state, batch, keys)
            run.done = done = step + 1
            if run.t_after_first is None:
                jax.block_until_ready(run.state["step"])
                run.t_after_first = time.perf_counter()
            timed_out = bool(loop.max_seconds) and time.perf_counter() - t0 > loop.max_seconds
            stopping = multihost.any_process(stop["signal"] is not None or timed_out)  # all/none
            validate = validation.score is not None and (
                done % val.every == 0 or done == end or stopping)
            if done % loop.log_every == 0 or done == end or validate or stopping:
                last = {k2: float(v) for k2, v in jax.device_get(metrics).items()}
                if not np.isfinite(last["meta_loss"]):
                    raise FloatingPointError(
                        f"meta loss is {last['meta_loss']} at step {done}; lower "
                        "meta.outer_lr / meta.inner_lr or raise meta.reg")
                row = {"step": done, "time_s": time.perf_counter() - t0, **last}
                if validate:
                    t_val = time.perf_counter()
                    row.update(meta_val.scores(
                        meta_val.bank_score(validation.score, run.state["params"], prep.bank),
                        validation.identity))
                    validation.seconds += time.perf_counter() - t_val
                    last = {**last, **{k2: row[k2] for k2 in ("val_gap", "val_ratio")}}
                run.last = last
                if main:
                    outputs.append_jsonl(metrics_path, row)
            checkpoint.save_train_state(mngr, done, run.state, prep.checkpoint_meta)
            bar.update(done, metrics)
            if stopping:  # the last step is logged (and scored) above
                run.preempted = multihost.any_process(stop["signal"] is not None)
                stage(f"{'SIGTERM' if run.preempted else f'max_seconds={loop.max_seconds}'} "
                      f"at step {done}: saving and exiting")
                break
        if run.done not in mngr.all_steps():
            checkpoint.save_train_state(mngr, run.done, run.state, prep.checkpoint_meta,
                                        force=True)
        mngr.wait_until_finished()
    finally:
        prefetch.close()


def _peer_lost(prep: Prepared, done: int, e: BaseException) -> multihost.PeerLostError:
    """The one-line error of a multi-process step that failed (another process died)."""
    return multihost.PeerLostError(
        f"process {jax.process_index()} of {jax.process_count()}: a step with the other "
        f"processes failed after step {done} ({multihost.first_line(e)}); another process "
        "most likely died (see its log). Start all of them again with the same command: "
        "they resume from the latest checkpoint in "
        f"{prep.checkpoint_dir}.")


def _finish(prep: Prepared, run: _Run, validation: _Validation) -> dict[str, Any]:
    """The run summary; on the writing process also ``loss_curve.png``
    (:func:`mgdd_jax.meta_plots.plot_loss_curve`) and ``run_until_step{N}.json``."""
    seconds = time.perf_counter() - run.t0
    n = run.done - run.start
    per_step = ((time.perf_counter() - run.t_after_first) / (n - 1)) if n > 1 else seconds
    result = {"step": run.done, "seconds": seconds, "seconds_per_step": per_step,
              "validation_seconds": validation.seconds,
              "last_metrics": run.last, "preempted": run.preempted,
              "device": str(jax.devices()[0]), "num_devices": jax.device_count(),
              "num_processes": jax.process_count()}
    if is_main_process():
        rows = outputs.read_jsonl(_metrics_path(prep))
        if rows:
            meta_plots.plot_loss_curve(rows, os.path.join(prep.workdir, "loss_curve.png"))
        outputs.write_json(os.path.join(prep.workdir, f"run_until_step{run.done}.json"), result)
    return result


def train(prep: Prepared, *, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) meta-training until ``meta.steps``, SIGTERM or ``max_seconds``.

    Writes ``config.json``, builds or resumes the meta state (:func:`_restore`), runs the
    steps (:func:`_loop`) and writes the summary (:func:`_finish`).

    Args:
      prep: :func:`prepare`'s result.
      stop_after: stop (with a checkpoint) after this many steps of *this* call; for tests
        of resumption and for time-boxed runs.

    Returns:
      The run summary (also ``run_until_step{N}.json``): ``step``, ``seconds``,
      ``seconds_per_step``, ``last_metrics``, ``preempted``, ``device``, ``num_devices``.

    Raises:
      FloatingPointError: a non-finite meta loss (at a logged step).
      PeerLostError: a step with the other processes failed (multi-host).
    """
    if is_main_process():
        outputs.write_json(os.path.join(prep.workdir, "config.json"), prep.config)
    params = start_params(prep)
    validation = _score_start(prep, params)
    run = _restore(prep, params)
    try:
        with _sigterm_recorded() as stop:
            _loop(prep, run, validation, stop, stop_after)
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        raise _peer_lost(prep, run.done, e) from e
    finally:
        run.mngr.close()
    return _finish(prep, run, validation)
