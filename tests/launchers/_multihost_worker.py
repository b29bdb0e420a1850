"""``python -m experiments.meta_train ARGS``, recording which run files this process writes.

Used by tests/launchers/test_multihost.py: every path this process writes through
``mgdd_jax.outputs`` (the one atomic writer, and the metrics appender) is appended as a line
to the file ``$MGDD_WRITE_LOG``, so the test can check that only process 0 writes the
workdir's metrics, figure and JSON files, each exactly once. orbax's checkpoint files do not
go through ``outputs``.
"""

import contextlib
import os
import runpy
import sys

from mgdd_jax import outputs

_log = open(os.environ["MGDD_WRITE_LOG"], "a")  # noqa: SIM115 -- open for the whole run
_atomic_path, _append_jsonl = outputs.atomic_path, outputs.append_jsonl


def _record(kind, path):
    _log.write(f"{kind} {os.path.basename(path)}\n")
    _log.flush()


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    _record("write", path)
    with _atomic_path(path, suffix) as tmp:
        yield tmp


def append_jsonl(path, record):
    _record("append", path)
    _append_jsonl(path, record)


outputs.atomic_path, outputs.append_jsonl = atomic_path, append_jsonl
sys.argv = ["experiments.meta_train", *sys.argv[1:]]
runpy.run_module("experiments.meta_train", run_name="__main__", alter_sys=True)
