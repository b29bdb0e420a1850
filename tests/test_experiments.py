"""The Fig. 4 and Fig. 3 experiment scripts end to end on tiny settings."""

import json
import os

import numpy as np

from experiments import adaptation_curve, cross_ipc, distill
from experiments.configs import distill as distill_config


def smoke(out, ipc):
    c = distill_config.get_config("smoke")
    c.dataset, c.ipc, c.out = "digits", ipc, str(out)
    c.adapt.batch_size = 20
    c.eval.num_seeds = 2
    return c


def test_adaptation_curve(tmp_path, monkeypatch):
    prep = distill.prepare(smoke(tmp_path, "2"))
    result = adaptation_curve.curve(prep, [0, 2, 3])
    assert list(result["curves"]) == ["fresh"]  # smoke config: no meta checkpoint
    pts = result["curves"]["fresh"]["points"]
    assert [p["step"] for p in pts] == [0, 2, 3]
    assert all(0 <= p["mean"] <= 1 and len(p["per_seed"]) == 2 for p in pts)
    assert "random_real" in result
    adaptation_curve.plot(result, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000
    json.dumps(result)  # JSON-serialisable as written


def test_adaptation_curve_meta_start_at_its_own_steps(tmp_path):
    """--meta_at: the meta start is adapted only as far as its own steps (with a saved
    generator as the meta checkpoint), the fresh start as far as --at's."""
    import jax

    from mgdd_jax import checkpoint, data
    from mgdd_jax import generator as gen

    ds = data.load_dataset("digits")
    gcfg = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
    params = gen.init_generator(jax.random.key(3), ds.image_shape, gcfg)
    params = jax.tree.map(lambda a: a + 0.01, params)  # not the identity
    checkpoint.save_generator(str(tmp_path / "meta"), 1, params, gcfg)
    c = smoke(tmp_path / "out", "2")
    c.meta_checkpoint = str(tmp_path / "meta")
    result = adaptation_curve.curve(distill.prepare(c), [0, 3], [0, 2])
    assert result["meta_at"] == [0, 2]
    assert [p["step"] for p in result["curves"]["meta"]["points"]] == [0, 2]
    assert [p["step"] for p in result["curves"]["fresh"]["points"]] == [0, 3]
    assert result["curves"]["meta"]["adapt_steps"] == 2
    assert result["curves"]["fresh"]["adapt_steps"] == 3


def test_cross_ipc(tmp_path):
    prep = distill.prepare(smoke(tmp_path, "2,3"))
    result = cross_ipc.run(prep, [1, 2, 4])
    assert result["adapted_on"] == [2, 3]
    assert {k: v["seen_in_adaptation"] for k, v in result["results"].items()} == {
        "1": False, "2": True, "4": False}
    for r in result["results"].values():
        assert np.isfinite(r["generated"]["mean"]) and np.isfinite(r["random_real"]["mean"])
    cross_ipc.plot(result, str(tmp_path / "x.png"))
    assert os.path.getsize(tmp_path / "x.png") > 1000

