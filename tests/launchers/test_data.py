"""The launchers' view of the data layer: experiments/configs/datasets.py re-exports the
library's one per-dataset table (mgdd_jax.data.settings, tested in tests/test_data.py)."""


def test_launchers_read_the_library_table():
    from experiments.configs import datasets

    assert datasets.settings_for("tfds:cifar10") == {"zca": True, "image_size": 0, "flip": True}
    assert datasets.settings_for("digits")["flip"] is False
