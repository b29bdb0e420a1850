"""The Alg. 1 outer loop (mgdd_jax.meta_train) and the train-state checkpoints.

All runs use the smoke config (mgdd_jax/configs/meta.py:smoke) on scikit-learn's digits
instead of the glyph corpus, as tests/test_meta.py does. The launcher
(experiments.meta_train: its command line, SIGTERM and resumption through it) is tested in
tests/launchers/test_meta_train.py.
"""

import os
import threading

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mgdd_jax import checkpoint, meta, meta_train, meta_val, outputs
from mgdd_jax.configs import distill as distill_config
from mgdd_jax import generator as gen
from tests._helpers import SMOKE_GEN as GEN
from tests._helpers import final_meta_params as _final_params
from tests._helpers import meta_smoke_config as _smoke_config
from tests._helpers import run_meta as _run

SHIPPED = distill_config.SHIPPED_META_CHECKPOINT
RUN_FILES = ("config.json", "metrics.jsonl", "loss_curve.png")


# ------------------------------------------------------------------------------ checkpoints
def test_train_state_round_trip(tmp_path):
    mcfg = meta_train.meta_config(_smoke_config(4))
    mesh = meta.task_mesh()
    params = gen.init_generator(jax.random.key(0), (8, 8, 1), GEN)
    state = meta.init_meta_state(params, mcfg, mesh)
    ckpt_meta = checkpoint.checkpoint_meta(GEN, {"kind": "meta", "meta": mcfg.to_dict()})
    directory = str(tmp_path / "ckpt")
    with checkpoint.open_train_state_manager(directory, save_interval_steps=2,
                                             max_to_keep=2) as mngr:
        assert checkpoint.save_train_state(mngr, 2, state, ckpt_meta)
        assert not checkpoint.save_train_state(mngr, 3, state, ckpt_meta)  # off the interval
        for step in (4, 6):
            assert checkpoint.save_train_state(mngr, step, state, ckpt_meta)
        assert checkpoint.save_train_state(mngr, 7, state, ckpt_meta, force=True)
        mngr.wait_until_finished()
        assert mngr.all_steps() == [6, 7]
        with pytest.raises(ValueError, match="checkpoint_meta"):
            checkpoint.save_train_state(mngr, 8, state, {"generator": GEN.to_dict()})
    # The same on-disk layout as before: items params, opt_state and a JSON meta.
    assert sorted(n for n in os.listdir(os.path.join(directory, "7"))
                  if not n.startswith("_") and "." not in n) == ["meta", "opt_state", "params"]
    assert checkpoint.latest_step(directory) == 7
    assert checkpoint.latest_step(str(tmp_path / "none")) is None

    fresh = meta.init_meta_state(gen.init_generator(jax.random.key(1), (8, 8, 1), GEN), mcfg,
                                 mesh)
    with checkpoint.open_train_state_manager(directory) as mngr:
        assert checkpoint.read_train_meta(mngr, 7) == ckpt_meta
        restored = checkpoint.restore_train_state(mngr, 7, fresh)
    for a, b in zip(jax.tree.leaves({k: state[k] for k in ("params", "opt_state")}),
                    jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)
    # ... and every step is a generator checkpoint.
    loaded, m = checkpoint.load_generator(directory, GEN, (8, 8, 1))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    assert m == ckpt_meta


def test_shipped_meta_checkpoint_loads_from_the_package():
    assert SHIPPED.startswith(os.path.dirname(meta_train.__file__))
    step, stored = checkpoint.read_meta(SHIPPED)
    gcfg = gen.GeneratorConfig.from_dict(stored["generator"])
    params, _ = checkpoint.load_generator(SHIPPED, gcfg, (32, 32, 3))
    assert jax.tree.leaves(params)
    # Package data: the parameters and the JSON meta only, no optimiser state.
    assert sorted(os.listdir(os.path.join(SHIPPED, str(step))))[-2:] == ["meta", "params"]
    assert not os.path.exists(os.path.join(SHIPPED, str(step), "opt_state"))


def test_one_compatibility_check_names_fields():
    a = {"generator": GEN.to_dict(), "meta": {"inner_steps": 2, "sizes": (1, 2)}}
    b = {"generator": {**GEN.to_dict(), "width": 8}, "meta": {"inner_steps": 2, "sizes": [1, 2]}}
    assert checkpoint.config_differences(a, a) == []
    assert checkpoint.config_differences(a, b) == [("generator.width", 4, 8)]
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"generator.width: checkpoint 4 vs config 8.*--config.generator"
                             r".width=4"):
        checkpoint.check_config_matches(a, b, where="w", what="thing", advice="use {fix}")
    # Generator loading: a different channel count is allowed, another width is not.
    checkpoint.check_compatible(GEN, gen.GeneratorConfig(**{**GEN.to_dict(),
                                                            "image_channels": 3}), "w")
    with pytest.raises(checkpoint.CheckpointMismatchError, match="generator.width=4"):
        checkpoint.check_compatible(GEN, gen.GeneratorConfig(**{**GEN.to_dict(), "width": 8}),
                                    "w")


# ------------------------------------------------------------------------------ the loop
def test_prefetch_thread_ends_when_training_raises(tmp_path, monkeypatch):
    """A failing step (here the third) propagates out of train() and the sampler thread is
    stopped and joined, not left running."""
    made, calls = [], []
    real_prefetcher, real_step = meta.Prefetcher, meta.make_meta_step

    class Recorded(real_prefetcher):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    def failing_step(*a, **kw):
        step = real_step(*a, **kw)

        def wrapped(*args):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("device lost")
            return step(*args)
        return wrapped

    monkeypatch.setattr(meta, "Prefetcher", Recorded)
    monkeypatch.setattr(meta, "make_meta_step", failing_step)
    with pytest.raises(RuntimeError, match="device lost"):
        _run(_smoke_config(6), tmp_path / "w")
    assert len(made) == 1 and not made[0].alive
    assert not [t for t in threading.enumerate() if t.name == "meta-prefetch"]


def test_resume_with_other_config_is_refused(tmp_path):
    w = tmp_path / "w"
    _run(_smoke_config(2), w)
    before = {n: (w / n).read_bytes() for n in RUN_FILES}
    c = _smoke_config(2)
    c.generator.width = 8
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"generator.width: checkpoint 4 vs config 8.*"
                             r"--config.generator.width=4"):
        meta_train.prepare(c, str(w))
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"meta.inner_steps: checkpoint 2 vs config 3"):
        meta_train.prepare(_smoke_config(2, inner_steps=3), str(w))
    c = _smoke_config(2)
    c.feature.width = 8
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"--config.feature.width=4"):
        meta_train.prepare(c, str(w))
    c = _smoke_config(2)
    c.seed = 1
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"seed: checkpoint 0"):
        meta_train.prepare(c, str(w))
    assert {n: (w / n).read_bytes() for n in RUN_FILES} == before  # refused before writing
    # The same config resumes (nothing left to do at step 2).
    assert meta_train.prepare(_smoke_config(2), str(w)).start_step == 2


@pytest.mark.parametrize("change, match", [
    (lambda c: c.meta.update(min_classes=20, max_classes=30, num_real=100), "min_classes"),
    (lambda c: c.meta.update(num_real=2000, max_synthetic=8), "images per class"),
    (lambda c: c.meta.update(inner_steps=0), "inner_steps"),
    (lambda c: setattr(c, "log_every", 0), "log_every"),
    (lambda c: setattr(c, "source", "no_such_set"), "no_such_set"),
    (lambda c: c.generator.update(embed_dim=7), "embed_dim"),
])
def test_prepare_rejects_bad_input_before_writing(tmp_path, change, match):
    c = _smoke_config(2)
    change(c)
    with pytest.raises(ValueError, match=match):
        meta_train.prepare(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_prepare_rejects_bad_workdir_and_fields(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        meta_train.prepare(_smoke_config(2), str(f))
    d = _smoke_config(2).to_dict()
    d["extra"] = 1
    with pytest.raises(ValueError, match="unknown.*extra"):
        meta_train.prepare(d, str(tmp_path / "w"))
    d = _smoke_config(2).to_dict()
    d["generator"]["image_channels"] = 3
    with pytest.raises(ValueError, match="image_channels"):
        meta_train.prepare(d, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
    # A plain nested dict is a config too; prepare creates the (empty) workdir only.
    prep = meta_train.prepare(_smoke_config(2).to_dict(), str(tmp_path / "w"))
    assert prep.start_step == 0 and prep.gen_config == GEN
    assert os.listdir(tmp_path / "w") == []


def test_only_process_0_writes_run_files(tmp_path, monkeypatch):
    prep = meta_train.prepare(_smoke_config(2), str(tmp_path / "w"))
    # This process claims to be process 1 of a multi-host run. orbax asks its own
    # multihost.process_index, kept at 0: in a one-process test orbax is its own primary host
    # (it would otherwise wait for a process 0 that does not exist to create the directories).
    real = jax.process_index
    monkeypatch.setattr(ocp.multihost, "process_index", real)
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    result = meta_train.train(prep)
    assert result["step"] == 2
    names = os.listdir(tmp_path / "w")
    assert not [n for n in names if n in RUN_FILES or n.startswith("run_until_step")], names
    assert checkpoint.latest_step(str(tmp_path / "w" / "checkpoints")) == 2
    # val.tasks = 0: no bank, no scores
    assert result["validation_seconds"] == 0 and "val_gap" not in result["last_metrics"]


# ------------------------------------------------------------------------------ transfer bank
def test_transfer_bank_from_another_dataset_through_channel_adaptors(tmp_path):
    """val.source: the bank comes from another dataset (grey digits of 3 classes) while the
    run meta-trains RGB procedural classes; the bank's tasks are clipped to its classes, and
    the identity is scored through fresh channel adaptors, i.e. exactly as the grey identity
    generator of the same key (A_out ∘ A_in = I)."""
    from mgdd_jax import meta_val

    c = _smoke_config(1, val=True)
    c.source = "procedural:classes=4,per_class=24,size=8"
    c.val.source = "digits#classes=0-2"
    c.meta.update(max_classes=4)
    prep = meta_train.prepare(c, str(tmp_path / "w"))
    assert prep.gen_config.image_channels == 3 and prep.bank_channels == 1
    assert prep.bank["x_t"].shape[2:] == (8, 8, 1)
    assert prep.bank["y_t"].shape[-1] == 3  # max_classes 4 clipped to the bank's 3 classes
    result = meta_train.train(prep)
    rows = {r["step"]: r for r in outputs.read_jsonl(str(tmp_path / "w" / "metrics.jsonl"))}
    assert rows[0]["val_ratio"] == 1.0 and np.isfinite(rows[1]["val_ratio"])
    assert result["step"] == 1

    key = jax.random.key(c.seed)
    k_init, _ = jax.random.split(key)
    grey = gen.GeneratorConfig(**{**prep.gen_config.to_dict(), "image_channels": 1})
    score = meta_val.make_scorer(grey, prep.meta, prep.val)
    direct = meta_val.bank_score(score, gen.init_generator(k_init, (8, 8, 1), grey), prep.bank)
    np.testing.assert_allclose(rows[0]["val_identity"], direct, rtol=1e-5)


def test_random_init_starts_from_the_random_generator(tmp_path):
    """meta.init="random": ω at step 0 is generator.random_generator of the run's init key
    (the bank's step-0 row scores it against the identity, which stays the reference), and
    the run trains from there; "identity" keeps the fresh generator; a typo is refused."""
    c = _smoke_config(1, val=True, init="random")
    prep = meta_train.prepare(c, str(tmp_path / "w"))
    k_init, _ = jax.random.split(jax.random.key(c.seed))
    want = gen.random_generator(k_init, prep.dataset.image_shape, prep.gen_config)
    chex.assert_trees_all_close(meta_train.start_params(prep), want)
    identity = meta_train.initial_params(prep)
    chex.assert_trees_all_close(identity, gen.init_generator(k_init, prep.dataset.image_shape,
                                                             prep.gen_config))
    meta_train.train(prep)
    rows = {r["step"]: r for r in outputs.read_jsonl(str(tmp_path / "w" / "metrics.jsonl"))}
    assert rows[0]["val_ratio"] != 1.0  # the random start, scored against the identity
    score = meta_val.make_scorer(prep.gen_config, prep.meta, prep.val, prep.bank_channels)
    np.testing.assert_allclose(rows[0]["val_identity"],
                               meta_val.bank_score(score, identity, prep.bank), rtol=1e-5)
    np.testing.assert_allclose(rows[0]["val_loss"],
                               meta_val.bank_score(score, want, prep.bank), rtol=1e-5)
    same = meta_train.prepare(_smoke_config(1), str(tmp_path / "w2"))
    chex.assert_trees_all_close(meta_train.start_params(same), meta_train.initial_params(same))
    with pytest.raises(ValueError, match="meta.init must be one of"):
        meta_train.prepare(_smoke_config(1, init="randm"), str(tmp_path / "w3"))


def test_meta_sgd_run_resumes_with_its_learned_rates(tmp_path):
    """inner_opt="meta_sgd": the learned rates α live in the checkpoint's opt_state, so
    1 step + resume for 1 more equals 2 steps straight (ω, α and the outer Adam's moments),
    and the checkpoint is a generator checkpoint of ω alone; the rates are logged."""
    kw = {"inner_opt": "meta_sgd", "inner_lr": 0.5, "order": "first"}
    straight = meta_train.prepare(_smoke_config(2, **kw), str(tmp_path / "a"))
    meta_train.train(straight)
    split = meta_train.prepare(_smoke_config(2, **kw), str(tmp_path / "b"))
    meta_train.train(split, stop_after=1)
    meta_train.train(meta_train.prepare(_smoke_config(2, **kw), str(tmp_path / "b")))
    abstract = jax.eval_shape(lambda: meta.init_meta_state(
        meta_train.initial_params(straight), straight.meta, meta.task_mesh()))
    states = []
    for w in ("a", "b"):
        directory = str(tmp_path / w / "checkpoints")
        with checkpoint.open_train_state_manager(directory) as mngr:
            states.append(checkpoint.restore_train_state(mngr, 2, abstract))
    chex.assert_trees_all_close(states[0], states[1], rtol=1e-5, atol=1e-7)
    rates = jax.tree.leaves(states[0]["opt_state"]["inner_lr"])
    assert any(float(np.max(np.abs(np.asarray(a) - 0.5))) > 0 for a in rates)
    step, params, _ = _final_params(str(tmp_path / "a"))
    assert step == 2
    chex.assert_trees_all_close(params, states[0]["params"])
    rows = outputs.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
    assert any("inner_lr_mean" in r for r in rows)


def test_bad_transfer_bank_is_refused_before_writing(tmp_path):
    c = _smoke_config(1, val=True)
    c.val.source = "no_such_bank"
    with pytest.raises(ValueError, match="no_such_bank"):
        meta_train.prepare(c, str(tmp_path / "w"))
    c.val.source = "digits#classes=0-1"
    c.meta.update(min_classes=2, max_classes=4, num_real=400)  # 200 per class: digits has ~145
    with pytest.raises(ValueError, match="images per class"):
        meta_train.prepare(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


