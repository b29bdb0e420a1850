"""A dependency-free progress line with loss and ETA, for the adaptation, meta and eval loops.

Metrics are fetched from the device only when a line is printed (at most every
``min_interval_s`` seconds and at the last step), and never by a disabled reporter, so the
loop keeps dispatching asynchronously.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import jax
import numpy as np


def format_seconds(s: float) -> str:
    """Compact duration: ``4.2s``, ``3m07s``, ``1h05m``."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:4.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def stage(message: str, *, stream: TextIO | None = None) -> None:
    """One timestamped stage line on stderr (``[12:03:04] adapting ...``)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=stream or sys.stderr, flush=True)


class Progress:
    """Prints ``name [####....] step/total  loss=...  elapsed  ETA`` lines to ``stream``.

    Usage::

        bar = Progress("adapt", total=1000)
        for step in range(1000):
            state, metrics = step_fn(...)
            bar.update(step + 1, metrics)   # metrics: dict of device scalars
        bar.close()
    """

    def __init__(
        self,
        name: str,
        total: int,
        *,
        enabled: bool = True,
        min_interval_s: float = 2.0,
        stream: TextIO | None = None,
        width: int = 24,
    ):
        self.name, self.total, self.enabled = name, max(int(total), 0), enabled
        self.min_interval_s, self.width = min_interval_s, width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._last_print = -float("inf")
        self.last_metrics: dict[str, float] = {}

    def update(self, step: int, metrics: dict[str, Any] | None = None, *, force: bool = False):
        """Record progress at ``step`` (1-based count of finished steps).

        Disabled, it returns at once: the metrics are not read (no device -> host copy)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        due = force or step >= self.total or now - self._last_print >= self.min_interval_s
        if not due:
            return
        if metrics:
            fetched = jax.device_get(dict(metrics))  # one copy for all of them
            self.last_metrics = {k: float(np.asarray(v)) for k, v in fetched.items()}
        self._last_print = now
        elapsed = now - self.start
        frac = step / self.total if self.total else 1.0
        eta = elapsed / step * (self.total - step) if step else float("nan")
        filled = round(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        mets = "  ".join(f"{k}={v:.4g}" for k, v in self.last_metrics.items())
        eta_s = format_seconds(eta) if step else "  ?  "
        print(f"{self.name} [{bar}] {step}/{self.total}  {mets}  "
              f"{format_seconds(elapsed)} elapsed, ETA {eta_s}",
              file=self.stream, flush=True)

    def close(self) -> float:
        """Return the elapsed seconds."""
        return time.perf_counter() - self.start
