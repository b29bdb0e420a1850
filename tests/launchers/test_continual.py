"""experiments.paper.continual (Fig. 5) and its config on tiny sizes: every mode's stream end to
end, and bad input refused before work. The library's part (mgdd_jax.continual) is in
tests/test_continual.py."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import continual as continual_config
from experiments.paper import continual as launcher
from mgdd_jax import checkpoint, continual


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
