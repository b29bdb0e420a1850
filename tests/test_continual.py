"""mgdd_jax.continual (Fig. 5's stream) on tiny sizes; its launcher, experiments.paper.continual,
is tested in tests/launchers/test_continual.py."""

import numpy as np
import pytest

from mgdd_jax import continual, data, krr


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def test_tasks_modes_and_bad_values():
    assert continual.split_tasks(10, 5) == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    assert continual.split_tasks(10, 1) == (tuple(range(10)),)
    with pytest.raises(ValueError, match="divide the 10 classes"):
        continual.split_tasks(10, 3)
    assert continual.parse_modes("first, meta") == ("first", "meta")
    for bad in ("meta,meta", "replay", ""):
        with pytest.raises(ValueError, match="distinct modes"):
            continual.parse_modes(bad)


def test_global_targets_keep_centred_onehot_and_the_soft_part():
    classes = (4, 7)
    onehot = np.asarray(krr.centred_onehot(np.array([0, 1]), 2))
    np.testing.assert_allclose(continual.to_global_targets(onehot, classes, 10),
                               np.asarray(krr.centred_onehot(np.array([4, 7]), 10)), atol=1e-7)
    soft = onehot + np.array([[0.1, -0.2], [0.0, 0.3]], np.float32)
    g = continual.to_global_targets(soft, classes, 10)
    np.testing.assert_allclose(g[:, [4, 7]] - np.asarray(krr.centred_onehot(
        np.array([4, 7]), 10))[:, [4, 7]], soft - onehot, atol=1e-6)
    assert np.all(g[:, [0, 1, 2, 3, 5, 6, 8, 9]] == np.float32(-0.1))


def test_task_dataset_remaps_and_shares_preprocessing(digits):
    t = continual.task_dataset(digits, (3, 8))
    assert t.num_classes == 2 and set(np.unique(t.y_train)) == {0, 1}
    np.testing.assert_array_equal(t.x_train[t.y_train == 1], digits.x_train[digits.y_train == 8])
    assert t.preprocessing is digits.preprocessing and t.class_names == ("3", "8")


