"""Shared test settings: float32 CPU runs, tiny sizes, no downloads."""

import os

# Tests must never touch the network or a user's cache.
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own mgdd_jax cache directory (ZCA matrices etc.)."""
    monkeypatch.setenv("MGDD_JAX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def compile_events():
    """A list that grows by one per XLA backend compilation while the test runs."""
    events = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)
