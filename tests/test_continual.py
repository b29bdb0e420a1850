"""mgdd_jax.continual and experiments.paper.continual (Fig. 5) on tiny sizes."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from experiments.paper import continual as launcher
from experiments.configs import continual as continual_config
from mgdd_jax import checkpoint, continual, data, krr


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def smoke(out, **changes):
    c = continual_config.get_config("smoke")
    c.out = str(out)
    c.num_tasks = 2
    c.adapt.batch_size = 20
    c.feature.depth = 1
    for k, v in changes.items():
        k = "out" if k == "config_out" else k
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


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


def test_stream_of_every_mode_end_to_end(tmp_path):
    prep = launcher.prepare(smoke(tmp_path / "out"))
    result = launcher.run(prep, str(tmp_path / "work"))
    assert list(result["modes"]) == list(continual.MODES)
    for mode, rows in result["modes"].items():
        assert [r["seen_classes"] for r in rows] == [5, 10]
        assert [r["buffer_size"] for r in rows] == [5, 10]  # IPC 1 per class
        assert all(0.0 <= r["acc_mean"] <= 1.0 and len(r["per_seed"]) == 2 for r in rows)
    # "first" adapts once: task 1's generator is task 0's, unchanged.
    gens = tmp_path / "work" / "generators" / "first"
    gcfg = dataclasses.replace(prep["fit"].gen_config, image_channels=1)
    p0, _ = checkpoint.load_generator(str(gens / "task0" / "generator"), gcfg, (8, 8, 1))
    p1, m1 = checkpoint.load_generator(str(gens / "task1" / "generator"), gcfg, (8, 8, 1))
    assert checkpoint.read_meta(str(gens / "task1" / "generator"))[0] == 0  # no steps
    assert checkpoint.read_meta(str(gens / "task0" / "generator"))[0] == prep["fit"].adapt.steps
    assert m1["info"]["task"] == 1 and m1["info"]["mode"] == "first"
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
        np.testing.assert_array_equal(a, b)
    md = launcher.markdown(result)
    assert "| classes seen | meta | previous | first | frepo |" in md and "| 10 | " in md
    launcher.plot(result, str(tmp_path / "c.png"))
    assert os.path.getsize(tmp_path / "c.png") > 0
    json.dumps(result)  # serialisable


@pytest.mark.parametrize("changes, match", [
    ({"modes": "meta,replay"}, "distinct modes"),
    ({"num_tasks": 3}, "divide the 10 classes"),
    ({"ipc": "1,2"}, "one IPC"),
    ({"config_out": ""}, "--out is required"),
    ({"ipc": "500"}, "IPC=500 is larger than"),
])
def test_bad_input_before_work(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        launcher.prepare(smoke(tmp_path / "o", **changes))
    assert not (tmp_path / "o").exists()
