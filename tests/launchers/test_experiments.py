"""The Fig. 4 and Fig. 3 experiment scripts end to end on tiny settings."""

import json
import os

import numpy as np
import pytest

from experiments import distill
from experiments.paper import adaptation_curve, cross_ipc
from mgdd_jax.configs import distill as distill_config
from tests._helpers import REPO


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
    assert result["curves"]["meta"]["adapt_steps"] == [2]
    assert result["curves"]["fresh"]["adapt_steps"] == [3]
    assert result["schedule"] == "snapshots"


def test_adaptation_curve_complete_runs_end_at_each_point(tmp_path):
    """--schedule=complete: each point is its own run of that length (a 2-step and a 4-step
    run); the last is the snapshots run's last point (same seed, same length)."""
    prep = distill.prepare(smoke(tmp_path, "2"))
    snap = adaptation_curve.curve(prep, [0, 2, 4])
    full = adaptation_curve.curve(prep, [0, 2, 4], schedule="complete")
    assert full["curves"]["fresh"]["adapt_steps"] == [2, 4]  # step 0: no run
    a, b = (r["curves"]["fresh"]["points"] for r in (snap, full))
    assert [p["step"] for p in b] == [0, 2, 4]
    assert b[0]["per_seed"] == a[0]["per_seed"] and b[2]["per_seed"] == a[2]["per_seed"]
    with pytest.raises(ValueError, match="schedule"):
        adaptation_curve.curve(prep, [0, 2], schedule="nope")


def test_adaptation_curve_scratch_start(tmp_path):
    """--scratch: a third start from the benchmark's random generator, at --at's steps; its
    step-0 set is that generator's output, not the initial images the fresh start returns."""
    prep = distill.prepare(smoke(tmp_path, "2"))
    result = adaptation_curve.curve(prep, [0, 2], scratch=True)
    assert list(result["curves"]) == ["fresh", "scratch"]
    assert [p["step"] for p in result["curves"]["scratch"]["points"]] == [0, 2]
    assert result["curves"]["scratch"]["adapt_steps"] == [2]
    # The smoke evaluation sits at chance, so the start is checked on the set it generates.
    import jax

    from mgdd_jax import api
    from mgdd_jax import generator as gen_lib
    key = api.job_keys(jax.random.key(prep.config.seed))["generator"]
    params = gen_lib.random_generator(key, prep.dataset.image_shape, prep.fit.gen_config)
    x = np.full((2, *prep.dataset.image_shape), 0.5, np.float32)
    assert not np.allclose(gen_lib.generate(params, x, 2, prep.fit.gen_config), x, atol=1e-3)
    adaptation_curve.plot(result, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000


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


def test_cross_ipc_size_embedding_ablation(tmp_path):
    """Fig. 3's yellow curve in the same run: a second generator without the size embedding,
    adapted with the same key; the random real sets are those of the run without it."""
    import dataclasses

    c = smoke(tmp_path, "2,3")
    c.adapt.steps = 2
    prep = distill.prepare(c)
    result = cross_ipc.run(prep, [1, 3], ablate_size_embedding=True)
    assert set(result["adapt_seconds"]) == {"generated", "generated_no_size_embedding"}
    for r in result["results"].values():
        assert set(r) == {"seen_in_adaptation", "generated", "generated_no_size_embedding",
                          "random_real"}
        assert len(r["generated_no_size_embedding"]["per_seed"]) == 2
    plain = cross_ipc.run(prep, [1])
    assert plain["results"]["1"]["random_real"] == result["results"]["1"]["random_real"]
    assert set(plain["adapt_seconds"]) == {"generated"}  # one layout with or without
    cross_ipc.plot(result, str(tmp_path / "x.png"))
    assert os.path.getsize(tmp_path / "x.png") > 1000
    off = dataclasses.replace(prep, fit=dataclasses.replace(prep.fit, gen_config=dataclasses.replace(
        prep.fit.gen_config, size_embedding=False)))
    with pytest.raises(ValueError, match="drop --config.generator.size_embedding=False"):
        cross_ipc.run(off, [1], ablate_size_embedding=True)



def _meta_workdir(path, rows, *, source="digits", order="first", bank="", inner_steps=5):
    from mgdd_jax import outputs

    os.makedirs(path)
    meta = dict(order=order, inner_steps=inner_steps, inner_opt="adam", inner_lr=1e-4,
                support="disjoint", fixed_init=True, tasks_per_step=4, outer_lr=1e-3)
    val = dict(tasks=2, steps=3, every=2, learning_rate=1e-4, b1=0.9, b2=0.999,
               eval_draws=1, seed=0, source=bank)
    outputs.write_json(os.path.join(path, "config.json"),
                       {"meta": meta, "val": val, "source": source})
    for r in rows:
        outputs.append_jsonl(os.path.join(path, "metrics.jsonl"), r)
    return str(path)


def test_meta_variants_table_times_and_refusals(tmp_path):
    """experiments.meta_studies.meta_variants: the table at the steps all runs reached, wall time
    accumulated over a resumed run's restarts, runs on other banks refused."""
    from experiments.meta_studies import meta_variants

    def val(step, t, ratio):
        return {"step": step, "time_s": t, "val_loss": ratio, "val_identity": 1.0,
                "val_gap": ratio - 1.0, "val_ratio": ratio}

    def train(step, t):
        return {"step": step, "time_s": t, "meta_loss": 0.1, "grad_agreement": 0.5,
                "inner_displacement": 0.01}

    a = _meta_workdir(tmp_path / "a", [val(0, 0.0, 1.0), train(1, 10.0), train(2, 12.0),
                                        val(2, 12.0, 0.9), train(3, 14.0), train(4, 16.0),
                                        train(5, 5.0), train(6, 7.0), val(6, 7.0, 0.8)])
    b = _meta_workdir(tmp_path / "b", [val(0, 0.0, 1.0), train(1, 3.0), train(2, 6.0),
                                        val(2, 6.0, 0.95)], order="reptile", inner_steps=20)
    result = meta_variants.compare(meta_variants.parse_runs([f"fo:{a}", f"rep:{b}"]))
    fo = result["runs"][0]
    assert [v["time_s"] for v in fo["val"]] == [0.0, 12.0, 23.0]  # resumed after t=16
    assert fo["seconds_per_meta_step"] == 2.0 and fo["last_step"] == 6
    table = meta_variants.markdown(result)
    assert "ratio @ 0 | ratio @ 2 | last ratio (step)" in table  # step 6: only run a
    assert fo["mean_last_ratio"] == pytest.approx((0.9 + 0.8) / 2)  # < 4 scores, not step 0
    assert "| 0.8000 (6) | 0.8500 |" in table
    assert "| fo | digits | first | 5 × adam α=0.0001 | disjoint | fixed | identity (0) |" in table
    assert "| rep | digits | reptile | 20 × adam α=0.0001 |" in table  # T, the inner steps
    assert "0.8000 (6)" in table and "0.9500 (2)" in table
    meta_variants.plot(result, str(tmp_path / "c.png"))
    assert os.path.getsize(tmp_path / "c.png") > 1000
    other = _meta_workdir(tmp_path / "o", [val(0, 0.0, 1.0)], source="digits#classes=0-4")
    with pytest.raises(ValueError, match="different validation banks"):
        meta_variants.compare({"a": a, "o": other})
    # a transfer bank (val.source): runs of other sources compare on it, and the table says
    # which source each run meta-trained on and which dataset the bank came from
    t1 = _meta_workdir(tmp_path / "t1", [val(0, 0.0, 1.0), train(1, 1.0), train(2, 2.0),
                                          val(2, 2.0, 0.97)], source="glyphs", bank="digits")
    t2 = _meta_workdir(tmp_path / "t2", [val(0, 0.0, 1.0), train(1, 1.0), train(2, 2.0),
                                          val(2, 2.0, 0.99)], source="procedural",
                       bank="digits")
    table = meta_variants.markdown(meta_variants.compare({"g": t1, "p": t2}))
    assert "| g | glyphs | first |" in table and "| p | procedural |" in table
    assert "tasks from digits" in table
    # a run on its own source "digits" and a transfer bank "digits" share the bank
    meta_variants.compare({"a": a, "t": t1})
    t3 = _meta_workdir(tmp_path / "t3", [val(0, 0.0, 1.0)], source="glyphs",
                       bank="digits#classes=0-4")
    with pytest.raises(ValueError, match="different validation banks"):
        meta_variants.compare({"g": t1, "t3": t3})
    with pytest.raises(ValueError, match="name:workdir"):
        meta_variants.parse_runs(["nocolon"])
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        meta_variants.parse_runs([f"x:{tmp_path}"])


def test_bank_horizon_scores_identity_as_one_and_a_moved_generator_otherwise(tmp_path):
    """experiments.meta_studies.bank_horizon: at every K the identity scores ratio 1 against itself; a
    perturbed ω scores otherwise; K = 0 reads the loss before any adaptation step."""
    import jax

    from experiments.meta_studies import bank_horizon
    from experiments.configs import meta_glyphs
    from mgdd_jax import meta_train

    c = meta_glyphs.get_config("smoke")
    c.source = "digits"
    prep = meta_train.prepare(c, str(tmp_path / "w"))
    identity = meta_train.initial_params(prep)
    rows = bank_horizon.horizon_scores(prep, identity, [0, 2])
    assert [r["steps"] for r in rows] == [0, 2] and all(r["val_ratio"] == 1.0 for r in rows)
    assert rows[1]["val_identity"] < rows[0]["val_identity"]  # two Adam steps lower it
    leaves, tree = jax.tree.flatten(identity)
    moved = jax.tree.unflatten(tree, [x + 0.05 for x in leaves])
    assert bank_horizon.horizon_scores(prep, moved, [0])[0]["val_ratio"] != 1.0
    table = bank_horizon.markdown(rows, "digits", "ckpt")
    assert "| adaptation steps K | 0 | 2 |" in table
    assert "| ratio meta / identity | 1.0000 |" in table


def test_bank_horizon_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    repo = REPO
    cmd = [sys.executable, "-m", "experiments.meta_studies.bank_horizon",
           "--config=experiments/configs/meta_glyphs.py:smoke", "--config.source=digits",
           "--meta_checkpoint=nowhere", "--horizons=0,-5", f"--out={tmp_path / 'o'}"]
    p = subprocess.run(cmd, check=False, cwd=repo, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "horizons" in p.stderr
    assert not (tmp_path / "o").exists()


def test_dc_step_benchmark_measures_both_layouts_alike(tmp_path):
    """benchmarks.dc_step on the smoke sizes: both targets, the layouts agree, times positive;
    a bad --ipcs ends in one line and exit 2 before any compile."""
    import subprocess
    import sys

    from experiments.benchmarks import dc_step

    rows = dc_step.measure("smoke", 2, repeats=1)
    assert [r["target"] for r in rows] == ["generator", "pixel"]
    for r in rows:
        assert r["n_s"] == 20 and r["n_t"] == 30
        assert r["seconds_flat"] > 0 and r["seconds_grouped"] > 0 and r["gflops_flat"] > 0
        assert r["loss_rel_diff"] < 1e-5 and r["grad_rel_diff"] < 1e-4
    repo = REPO
    out = tmp_path / "dc.json"
    p = subprocess.run([sys.executable, "-m", "experiments.benchmarks.dc_step", "--ipcs=1,0",
                        f"--out={out}"], check=False, cwd=repo, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "ipcs" in p.stderr
    assert not out.exists()
