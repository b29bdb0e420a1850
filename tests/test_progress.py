"""mgdd_jax.progress: a disabled reporter reads nothing; an enabled one prints when due."""

import io

import jax.numpy as jnp
import pytest

from mgdd_jax.progress import Progress


class _Unreadable:
    """A metric whose value must not be read: any conversion to a number or array raises."""

    def __float__(self):
        raise AssertionError("a disabled Progress read its metrics")

    def __array__(self, *args, **kwargs):
        raise AssertionError("a disabled Progress read its metrics")

    def copy_to_host_async(self):
        raise AssertionError("a disabled Progress fetched its metrics")


def test_disabled_progress_reads_no_metrics():
    stream = io.StringIO()
    bar = Progress("eval", 4, enabled=False, min_interval_s=0.0, stream=stream)
    for step in range(1, 5):
        bar.update(step, {"loss": _Unreadable()})
    bar.update(4, {"loss": _Unreadable()}, force=True)
    assert stream.getvalue() == ""


def test_unreadable_metric_raises_when_enabled():
    """The check above has teeth: an enabled reporter that is due does read the metric."""
    bar = Progress("eval", 1, stream=io.StringIO())
    with pytest.raises(AssertionError, match="its metrics"):
        bar.update(1, {"loss": _Unreadable()})


def test_enabled_progress_prints_device_metrics():
    stream = io.StringIO()
    bar = Progress("eval", 2, min_interval_s=1e9, stream=stream)
    bar.update(1, {"loss": jnp.float32(0.5)})  # the first update is due; the next is not
    bar.update(2, {"loss": jnp.float32(0.25), "lr": 1e-3})  # the last step always prints
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("eval [") and "1/2" in lines[0] and "loss=0.5" in lines[0]
    assert "2/2" in lines[1] and "loss=0.25" in lines[1] and "lr=0.001" in lines[1]
    assert bar.last_metrics == {"loss": 0.25, "lr": 1e-3}
