"""The distill main job end to end (tiny), its outputs, and every bad input it must refuse."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import distill
from mgdd_jax.configs import distill as distill_config
from mgdd_jax import checkpoint, data
from mgdd_jax import generator as gen_lib
from tests._helpers import REPO


def smoke(**overrides):
    c = distill_config.get_config("smoke")
    c.dataset = "fashion_mnist"
    c.ipc = "1,2"
    c.adapt.batch_size = 20
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics = distill.run(smoke(out=str(out)))
    return out, metrics


def test_end_to_end_outputs(finished_run):
    out, metrics = finished_run
    names = set(os.listdir(out))
    assert {"ipc1.npz", "ipc2.npz", "samples_ipc1.png", "samples_ipc2.png", "metrics.json",
            "config.json", "adapt_history.json", "generator"} <= names
    assert not [n for n in names if n.startswith(".tmp-")]  # nothing half written
    assert not [n for n in os.listdir(out.parent) if ".tmp-" in n or ".old-" in n]
    on_disk = json.load(open(out / "metrics.json"))
    for ipc in ("1", "2"):
        r = on_disk["results"][ipc]
        assert 0.0 <= r["eval"]["mean"] <= 1.0 and len(r["eval"]["per_seed"]) == 2
        assert r["generation_ms"] > 0
        assert "random_real_baseline" in r
    assert on_disk["results"]["1"]["label_mode"] == "onehot"  # paper default at IPC 1
    assert on_disk["results"]["2"]["label_mode"] == "analytic"
    for k in ("label_solve_s", "adaptation_s", "adaptation_s_per_step", "total_s"):
        assert on_disk["timing"][k] > 0
    assert on_disk["adapt"]["init_mode"] == "multi"  # two IPCs -> multi-initialisation
    assert "eval_by_arch" not in on_disk["results"]["1"]  # one architecture: no table
    assert "cross_arch.md" not in names

    z = np.load(out / "ipc2.npz")
    assert z["images"].shape == (20, 28, 28, 1) and z["labels"].shape == (20, 10)
    assert np.all(np.isfinite(z["images"]))
    meta = json.loads(str(z["metadata"]))
    assert meta["dataset"]["name"] == "fashion_mnist" and meta["ipc"] == 2
    assert meta["eval_protocol"]["num_seeds"] == 2
    pre = data.Preprocessing.from_arrays(z)  # preprocessing travels with the set
    assert pre.mean.shape == (1,)


def test_eval_arch_evaluates_on_every_architecture(tmp_path):
    """--eval_arch (Tab. 4): the first architecture's result is "eval", every one is in
    "eval_by_arch" (order in "eval_archs"), and cross_arch.md tabulates them. Digits (8×8)
    keep AlexNet's test pass cheap."""
    out = tmp_path / "arch"
    metrics = distill.run(smoke(**{"out": str(out), "dataset": "digits", "ipc": "1",
                                   "eval.archs": "convnet,alexnet",
                                   "eval.random_baseline": False}))
    on_disk = json.load(open(out / "metrics.json"))
    assert on_disk["eval_archs"] == metrics["eval_archs"] == ["convnet", "alexnet"]
    by_arch = on_disk["results"]["1"]["eval_by_arch"]
    assert set(by_arch) == {"convnet", "alexnet"}
    assert by_arch["convnet"] == on_disk["results"]["1"]["eval"]
    assert by_arch["convnet"]["protocol"]["network"] == "convnet"
    assert by_arch["alexnet"]["protocol"]["network"] == "alexnet"
    assert len(by_arch["alexnet"]["per_seed"]) == 2
    table = (out / "cross_arch.md").read_text()
    assert "| IPC | convnet | alexnet |" in table and table.count("\n| 1 | ") == 1


def test_rgb_generator_adapts_to_grey_data_at_another_resolution(tmp_path):
    """Tab. 8/9: a generator made for RGB 8×8 images adapts to grey digits resized to 12×12
    (channel adaptors, fully convolutional), with --config.image_size."""
    import dataclasses

    import jax

    c = smoke(**{"out": str(tmp_path / "res"), "dataset": "digits", "ipc": "1",
                 "image_size": 12, "eval.enabled": False})
    rgb = dataclasses.replace(gen_lib.GeneratorConfig(**c.generator.to_dict()), image_channels=3)
    params = gen_lib.init_generator(jax.random.key(0), (8, 8, 3), rgb)
    params = jax.tree.map(lambda a: a + 0.05, params)  # not the identity
    checkpoint.save_generator(str(tmp_path / "rgb"), 1, params, rgb, {"kind": "meta"})
    c.meta_checkpoint = str(tmp_path / "rgb")
    metrics = distill.run(c)
    z = np.load(tmp_path / "res" / "ipc1.npz")
    assert z["images"].shape == (10, 12, 12, 1)
    assert json.loads(str(z["metadata"]))["dataset"]["image_shape"] == [12, 12, 1]
    assert metrics["started_from"] == str(tmp_path / "rgb")


def test_generate_more_ipcs_later_with_zero_steps(finished_run, tmp_path):
    out, _ = finished_run
    c = smoke(out=str(tmp_path / "later"), ipc="3", meta_checkpoint=str(out / "generator"))
    c.adapt.steps = 0
    c.eval.enabled = False
    metrics = distill.run(c)
    z = np.load(tmp_path / "later" / "ipc3.npz")
    assert z["images"].shape == (30, 28, 28, 1)
    assert metrics["started_from"] == str(out / "generator")
    # The adapted generator was loaded, not a fresh one: output differs from the input.
    assert metrics["results"]["3"]["mean_abs_change"] > 0
    # --reinit_seed: the same generator applied to another initial set, no re-adaptation.
    c.out, c.reinit_seed = str(tmp_path / "reinit"), 5
    again = distill.run(c)
    z2 = np.load(tmp_path / "reinit" / "ipc3.npz")
    assert not np.array_equal(z2["initial_images"], z["initial_images"])
    assert np.bincount(z2["class_ids"], minlength=10).tolist() == [3] * 10
    assert again["results"]["3"]["init"] == "class-balanced draw of reinit_seed=5"
    assert again["adapt"]["steps"] == 0


def test_checkpoint_round_trip(finished_run):
    out, _ = finished_run
    cfg = gen_lib.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)
    params, meta = checkpoint.load_generator(str(out / "generator"), cfg, (28, 28, 1))
    assert meta["info"]["kind"] == "adapted"
    assert meta["info"]["dataset"] == "fashion_mnist"
    assert float(np.abs(np.asarray(params["out"]["kernel"])).max()) > 0


# ----------------------------------------------------------------- bad input, before any work
@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"ipc": "0"}, "every IPC must be >= 1"),
        ({"ipc": "ten"}, "comma list of integers"),
        ({"ipc": ""}, "--ipc is empty"),
        ({"ipc": "1,,10"}, "empty item"),
        ({"adapt.ipcs": "1,,2"}, "empty item"),
        ({"ipc": "7000"}, "IPC=7000 is larger than"),
        ({"dataset": "imagenet"}, "imagenet"),
        ({"out": ""}, "--out is required"),
        ({"meta_checkpoint": "/nonexistent/ckpt"}, "no generator checkpoint"),
        ({"eval.protocol": "fast"}, "unknown evaluation protocol"),
        ({"adapt.init_mode": "pool"}, "init_mode"),
        ({"adapt.batch_size": 100000}, "real batch per class"),
        ({"adapt.objective": "gm"}, "unknown objective 'gm'"),
        ({"eval.archs": "convnet,lenet"}, r"unknown architecture\(s\) \['lenet'\]"),
        ({"eval.archs": "convnet,,vgg11"}, "without empty items"),
        ({"eval.archs": "vgg11,vgg11"}, "names an architecture twice"),
        ({"reinit_seed": -2}, "--reinit_seed must be >= 0"),
        ({"image_size": -1}, "image_size must be >= 1"),
    ],
)
def test_bad_input_is_refused_before_work(tmp_path, monkeypatch, overrides, match):
    calls = []
    monkeypatch.setattr(distill.labels, "fit_label_model", lambda *a, **k: calls.append(1))
    c = smoke(**{"out": str(tmp_path / "o"), **overrides})
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        distill.run(c)
    assert not calls  # no label solve, no adaptation
    assert os.listdir(tmp_path) == []  # --out not created, no temporary sibling


def test_unwritable_out_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that ignores directory permissions")
        with pytest.raises(ValueError, match="not writable"):
            distill.run(smoke(out=str(locked / "x")))
    finally:
        locked.chmod(0o700)


def test_out_dir_that_cannot_be_created(tmp_path):
    """Works as root too: no permission bit lets a directory be made under a regular file."""
    f = tmp_path / "plain-file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        distill.run(smoke(out=str(f / "results")))


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        distill.run(smoke(out=str(f)))


def test_incompatible_checkpoint(finished_run, tmp_path):
    out, _ = finished_run
    c = smoke(out=str(tmp_path / "o"), meta_checkpoint=str(out / "generator"))
    c.generator.width = 8
    with pytest.raises(checkpoint.CheckpointMismatchError, match="generator.width=4"):
        distill.run(c)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "experiments.distill",
           "--config=mgdd_jax/configs/distill.py:smoke", "--dataset=no_such_set",
           f"--out={tmp_path / 'o'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "error:" in p.stderr and "no_such_set" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_rejects_misspelled_override(tmp_path):
    cmd = [sys.executable, "-m", "experiments.distill",
           "--config=mgdd_jax/configs/distill.py:smoke", "--config.adapt.stepz=3",
           f"--out={tmp_path / 'o'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "stepz" in p.stderr


# ------------------------------------------------------- results all at once or not at all
def quick(out, **overrides):
    return smoke(**{"out": str(out), "ipc": "2", "eval.enabled": False, **overrides})


def test_existing_results_are_refused_unless_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds results.*--overwrite"):
        distill.run(quick(out))
    assert os.listdir(out) == ["metrics.json"]
    distill.run(quick(out, overwrite=True))
    assert "ipc2.npz" in os.listdir(out) and json.load(open(out / "metrics.json"))["results"]
    assert sorted(os.listdir(tmp_path)) == ["o"]  # no temporary or old siblings left


def test_nan_mid_run_leaves_out_untouched(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier result")
    with pytest.raises(FloatingPointError, match="at step 2; lower the learning rate"):
        distill.run(quick(out, overwrite=True, **{"adapt.learning_rate": 1e30}))
    assert os.listdir(out) == ["keep.txt"]  # the earlier result survives, nothing half written
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_config_knobs_compose():
    c = distill_config.get_config("size=paper,eval=cpu")
    assert (c.generator.width, c.feature.width, c.adapt.batch_size) == (64, 128, 1024)
    assert c.eval.protocol == "cpu"
    p = distill_config.get_config("paper")
    assert (p.generator.width, p.eval.protocol) == (64, "frepo")
    assert distill_config.get_config("smoke,eval=frepo").eval.protocol == "frepo"
    assert distill_config.get_config().variant == "eval=cpu,size=cpu"
    for bad, match in (("bogus", "unknown distill config preset"),
                       ("size=huge", "choose from"), ("colour=red", "unknown distill config knob")):
        with pytest.raises(ValueError, match=match):
            distill_config.get_config(bad)


def _cli(tmp_path, *args):
    cmd = [sys.executable, "-m", "experiments.distill",
           "--config=mgdd_jax/configs/distill.py:smoke", "--dataset=digits",
           f"--out={tmp_path / 'o'}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_shorthand_is_validated_in_one_line(tmp_path):
    p = _cli(tmp_path, "--ipc=1,,10")
    assert p.returncode == 2 and "empty item" in p.stderr and "Traceback" not in p.stderr


def test_cli_nan_loss_is_one_line_and_writes_nothing(tmp_path):
    p = _cli(tmp_path, "--ipc=2", "--config.adapt.learning_rate=1e30",
             "--config.eval.enabled=False")
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: adaptation loss is nan") and "was left as it was" in last
    assert "Traceback" not in p.stderr
    assert os.listdir(tmp_path) == []
