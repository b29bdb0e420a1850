"""A background thread that produces the meta loop's step inputs ahead of their use.

The meta loop's host work (sampling step i+1's tasks, :mod:`mgdd_jax.meta.tasks`, and
placing them on the devices) runs while step i runs on the device: the same inputs in the
same order, off the critical path.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_DONE = object()


class Prefetcher:
    """Steps ``start..end-1``'s inputs, produced by a background thread ahead of their use.

    Iterating yields ``(step, produce(step))`` in order, the same values as calling
    ``produce`` directly (it must be a function of ``step``:
    :func:`~mgdd_jax.meta.tasks.step_inputs`, optionally followed by the device placement).
    The thread works at most ``depth`` steps ahead, so step i+1's tasks are sampled (and
    placed) while step i runs on the device. An exception in ``produce`` is raised by the
    iteration that would have received that step. Use as a context manager (or call
    :meth:`close`): leaving the block, normally or by an exception, stops and joins the
    thread.
    """

    def __init__(self, produce: Callable[[int], Any], start: int, end: int, *, depth: int = 1):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._produce, self._start, self._end = produce, start, end
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meta-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for step in range(self._start, self._end):
                if self._stop.is_set() or not self._put((step, self._produce(step), None)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            self._put((None, None, e))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            step, value, error = item
            if error is not None:
                raise error
            yield step, value

    @property
    def alive(self) -> bool:
        """Whether the producer thread is still running."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the producer and wait for it (it finishes the step it is producing)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetcher:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
