"""Shared test settings: float32 CPU runs, tiny sizes, no downloads (tests/ and, by directory,
tests/launchers/)."""

import os
import tempfile

# Tests must never touch the network or a user's cache.
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One XLA compilation cache for the whole test session, its xdist workers and the launchers
# they start as subprocesses (through the environment): many tests compile the same tiny
# programs. CI time only; a hit returns the executable XLA compiled for the same program.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mgdd-jax-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

# The helpers shared by tests/ and tests/launchers/ assert too: rewrite them as test modules.
pytest.register_assert_rewrite("tests._helpers")

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own mgdd_jax cache directory (ZCA matrices etc.)."""
    monkeypatch.setenv("MGDD_JAX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def compile_events():
    """A list that grows by one per XLA executable obtained while the test runs: a backend
    compilation or, as JAX times it the same way, a hit of the session's compilation cache."""
    events = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)
