"""Multi-host runs: one JAX process per host, joined by ``jax.distributed``, bounded waits.

Meta-training (Alg. 1, :mod:`mgdd_jax.meta_train`) runs unchanged on a mesh that spans
several processes: each process draws its own devices' tasks (:mod:`mgdd_jax.meta`) and the
meta-gradients are averaged by the step's all-reduce. This module joins the processes and
turns what goes wrong between them into one-line errors raised within a bounded time:

* process 0's coordinator port is taken: :func:`check_port_free`, before anything binds it
  (gRPC would otherwise share the port with another job through ``SO_REUSEPORT``);
* a process is missing: jax itself ends the waiting processes after
  ``initialization_timeout_s`` (its ``DEADLINE_EXCEEDED`` message), after this module's line
  saying which process of how many was waiting for which coordinator;
* the processes disagree about ``num_processes``: once joined, the processes all-gather the
  ``num_processes`` each was given (``ValueError``). (When process 0 was told more processes
  than the others, nobody gets that far: the coordinator waits for processes that never
  come, as above.)
* a process dies mid-run: the survivors' next collective fails (:class:`PeerLostError`,
  raised by the training loop), and the coordination service ends any process still waiting
  once the dead one has missed its heartbeats for ``heartbeat_timeout_s``;
* the processes must stop at the same step (SIGTERM, ``max_seconds``): :func:`any_process`;
* gloo (the CPU collectives) gives up on a process that arrives at a collective much later
  than the others, after a fixed timeout of its own: :func:`barrier` lines them up first, in
  the coordination service, with a timeout of ours.

The settings are the ``distributed`` subtree of the meta-training config,
:class:`MultihostConfig` here. Only public APIs are used: ``jax.distributed`` and
``jax.experimental.multihost_utils``, and orbax's barrier (``orbax.checkpoint.multihost``) for
the one wait that needs a timeout.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mgdd_jax.configs.keys import check_keys
from mgdd_jax.progress import stage


class PeerLostError(RuntimeError):
    """A collective with the other processes failed mid-run (another process died)."""


@dataclasses.dataclass(frozen=True)
class MultihostConfig:
    """How this process joins a multi-host run (``jax.distributed.initialize``'s arguments).

    No defaults: the values live in the config files (the ``distributed`` subtree).

    Attributes:
      coordinator_address: ``host:port`` of process 0's coordination service, the same for
        every process; ``""``: detected (SLURM, Open MPI, Cloud TPU pods).
      num_processes: how many processes take part; 0: detected.
      process_id: this process's index, ``0..num_processes-1`` (0 hosts the coordinator);
        -1: detected.
      initialization_timeout_s: how long a process waits for all others to join.
      heartbeat_timeout_s: a process silent for this long is declared dead, and every other
        process is ended with an error (so no survivor waits forever).
      shutdown_timeout_s: how long a finishing process waits for the others at exit.
    """

    coordinator_address: str
    num_processes: int
    process_id: int
    initialization_timeout_s: int
    heartbeat_timeout_s: int
    shutdown_timeout_s: int

    def __post_init__(self):
        if self.coordinator_address:
            _split_address(self.coordinator_address)
        if self.num_processes < 0:
            raise ValueError(f"distributed.num_processes must be >= 1 (0: detected), got "
                             f"{self.num_processes}")
        if self.process_id < -1 or (self.num_processes and
                                    self.process_id >= self.num_processes):
            raise ValueError(
                f"distributed.process_id must be in 0..num_processes-1 (-1: detected), got "
                f"{self.process_id} with num_processes={self.num_processes}")
        for name in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"distributed.{name} must be a whole number of seconds >= 1, "
                                 f"got {value!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MultihostConfig:
        """From a config's ``distributed`` subtree (any mapping with exactly these keys)."""
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(config.keys(), names, "config.distributed",
                   "the distributed subtree sets every MultihostConfig field (there are no "
                   "defaults), and no other key")
        return cls(**{k: config[k] for k in names})


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"distributed.coordinator_address must be host:port (e.g. "
                         f"10.0.0.1:1234), got {address!r}")
    return host.strip("[]"), int(port)


def check_port_free(address: str) -> None:
    """Refuse a coordinator port that another program already listens on.

    Binds the port (on all addresses, as the coordination service does) and lets it go. gRPC
    binds with ``SO_REUSEPORT``, so without this check a second job's coordinator on the same
    port would silently share it with the first, and the processes of the two jobs could
    join each other. (The port could still be taken in the moment between this check and
    the service's own bind; that is reported as a failure to join.)

    Raises:
      ValueError: the port is in use, naming it and what to do.
    """
    _, port = _split_address(address)
    family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            s.bind(("::" if family == socket.AF_INET6 else "", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise ValueError(
                f"the coordinator port {port} of distributed.coordinator_address={address} is "
                "already in use on this host (another job, or a second process given "
                "process_id 0); pick a free port and pass the same address to every "
                "process.") from None


def initialize(config: MultihostConfig) -> None:
    """Join this process to the others (MultihostConfig), with bounded waits; once only.

    Call it before anything touches a JAX device. CPU processes exchange their collectives
    over TCP (gloo: ``jax_cpu_collectives_implementation``, set to ``"gloo"`` unless a value
    was chosen). Then every process checks that all of them were given the same
    ``num_processes`` (one all-gather over the devices of all processes).

    Raises:
      ValueError: the coordinator port is taken, jax found nothing to join (no address given
        and no cluster detected), or the processes disagree about ``num_processes``. (A
        process that never joins makes jax end the others after ``initialization_timeout_s``.)
    """
    if jax.distributed.is_initialized():
        return
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if config.coordinator_address and config.process_id == 0:
        check_port_free(config.coordinator_address)
    who = (f"process {config.process_id if config.process_id >= 0 else '(detected)'} of "
           f"{config.num_processes or '(detected)'} via coordinator "
           f"{config.coordinator_address or '(detected)'}")
    # jax ends the process itself (after initialization_timeout_s, with its own message) when
    # not all processes join, so this line says what was being waited for.
    stage(f"joining the multi-host run as {who}; waiting up to "
          f"{config.initialization_timeout_s}s for all processes")
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address or None,
            num_processes=config.num_processes or None,
            process_id=config.process_id if config.process_id >= 0 else None,
            initialization_timeout=config.initialization_timeout_s,
            heartbeat_timeout_seconds=config.heartbeat_timeout_s,
            shutdown_timeout_seconds=config.shutdown_timeout_s)
    except (RuntimeError, ValueError) as e:  # e.g. nothing to detect outside a cluster
        raise ValueError(
            f"could not join the multi-host run as {who}: {first_line(e)}. Pass "
            "--config.distributed.coordinator_address, num_processes and process_id (detected "
            "only under SLURM, Open MPI and on Cloud TPU pods).") from None
    _check_same_num_processes(config)


def _check_same_num_processes(config: MultihostConfig) -> None:
    """Refuse processes given different ``num_processes`` (each compares its own with all).

    The joined processes are those the coordinator (process 0) was told to wait for, so
    ``jax.process_count()`` is process 0's number; a process told another number still
    takes part in the all-gather, which hands every process every process's number.
    """
    n = config.num_processes or jax.process_count()
    me = jax.process_index()
    try:
        given = np.asarray(multihost_utils.process_allgather(np.int32(n))).tolist()
    except RuntimeError as e:
        raise ValueError(
            f"process {me}: the processes of num_processes={n} could not exchange their "
            f"num_processes ({first_line(e)}); start all {n} processes with the same "
            "num_processes.") from None
    for other, theirs in enumerate(given):
        if theirs != n:
            raise ValueError(
                f"process {me} was started with distributed.num_processes={n} but process "
                f"{other} with {theirs}; pass the same --config.distributed.num_processes to "
                "every process.")


def first_line(e: BaseException) -> str:
    """An exception's first line (jaxlib's errors carry long multi-line status dumps)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def barrier(name: str, timeout_s: int) -> None:
    """Wait until every process has reached ``barrier(name)`` (nothing with one process).

    A wait in the coordination service (orbax's barrier), bounded by ``timeout_s``. Call it
    before the first collective after work whose length differs between processes (loading
    data, compiling): the CPU collectives (gloo) give up when a process arrives much later
    than the others, after a fixed timeout that cannot be configured.

    Raises:
      PeerLostError: a process did not arrive within ``timeout_s`` (or died).
    """
    if jax.process_count() == 1:
        return
    try:
        ocp.multihost.get_barrier_sync_fn()(key=f"mgdd_jax/{name}",
                                            timeout_ms=timeout_s * 1000)
    except RuntimeError as e:
        raise PeerLostError(
            f"process {jax.process_index()}: not every process reached {name!r} within "
            f"{timeout_s}s ({first_line(e)}); another process most likely died or hangs "
            "(see its log).") from None


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (every process must call it at the same point).

    One tiny all-gather with several processes; ``flag`` itself with one. The training loop
    asks it every step, so that SIGTERM or ``max_seconds`` on one process stops all of them
    at the same step (one that stopped alone would leave the others waiting in the next
    step's all-reduce).
    """
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))
