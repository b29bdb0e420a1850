"""What every launcher shares: bad input ends the run with one line and exit status 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

# What validation raises for bad input (unknown dataset, missing files, IPC too large, ...).
BAD_INPUT = (ValueError, FileNotFoundError, ImportError)


@contextlib.contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Turn a bad-input exception into ``error: ...`` on stderr and exit status 2."""
    try:
        yield
    except BAD_INPUT as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
