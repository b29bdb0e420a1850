"""The portable folder of a distilled set (``mgdd-jax export``) and its re-evaluation: on one
smoke run of digits, the recorded accuracy is reproduced from the folder alone."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mgdd_jax import export
from mgdd_jax.cli import distill
from mgdd_jax.cli import export as export_cli
from mgdd_jax.cli import reevaluate as reevaluate_cli
from mgdd_jax.configs import distill as distill_config
from mgdd_jax.data import preprocess, sources
from mgdd_jax.evaluation import EvalProtocol
from mgdd_jax.job import job_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IPC = 2
PNG_BOUND = 0.5 / 255 + 1e-6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One smoke run of digits at IPC 2 (the main job's own functions), and its Prepared."""
    c = distill_config.get_config("smoke")
    c.dataset, c.ipc, c.eval.random_baseline = "digits", str(IPC), False
    c.out = str(tmp_path_factory.mktemp("export") / "run")
    prep = distill.prepare(c)
    metrics = distill.execute(prep)
    return c.out, metrics, prep


@pytest.fixture(scope="module")
def exported(run):
    out = os.path.join(os.path.dirname(run[0]), "exported")
    assert export.export_set(run[0], IPC, out) == out
    return out


@pytest.fixture(scope="module")
def reevaluated(exported):
    return export.reevaluate(exported, progress=False)


def recorded(run):
    return run[1]["results"][str(IPC)]["eval"]


# ------------------------------------------------------------------------------ exactness
def test_reevaluate_reproduces_the_recorded_accuracy(run, reevaluated):
    rec = recorded(run)
    acc = reevaluated["accuracy"]
    np.testing.assert_allclose(acc["per_seed"], rec["per_seed"], rtol=0, atol=1e-9)
    assert acc["mean"] == pytest.approx(rec["mean"], abs=1e-9)
    assert abs(reevaluated["difference"]) < 1e-9
    assert reevaluated["recorded"] == {k: rec[k] for k in ("mean", "std", "per_seed")}
    assert acc["protocol"] == rec["protocol"] and acc["num_test"] == rec["num_test"]
    assert reevaluated["test"].startswith("loaded as the run did")
    assert "recorded" in export.summary(reevaluated)


def test_images_npy_is_the_exact_set_in_pixel_space(run, exported):
    out, _, prep = run
    pixels = np.load(os.path.join(exported, "images.npy"))
    with np.load(os.path.join(out, f"ipc{IPC}.npz")) as z:
        x = z["images"]  # ds_factor 1: the stored images are the trained ones
    assert pixels.dtype == np.float32 and pixels.shape == x.shape
    # The float64 inverse rounded once; re-applying the preprocessing gives x to a few ulps.
    back = prep.dataset.preprocessing.apply(pixels)
    assert np.max(np.abs(back - x) / np.maximum(np.abs(x), 1.0)) < 4 * np.finfo(np.float32).eps
    np.testing.assert_array_equal(pixels, export.to_pixels(x, prep.dataset.preprocessing))
    assert (pixels < 0).any() and (pixels <= 1).all() or (pixels > 1).any()  # unclipped


def test_png_round_trip_within_half_a_level(exported):
    pixels = np.load(os.path.join(exported, "images.npy"))
    png = export.read_pngs(exported)
    assert png.shape == pixels.shape
    inside = (pixels >= 0) & (pixels <= 1)
    assert np.max(np.abs(png - pixels)[inside]) <= PNG_BOUND
    np.testing.assert_array_equal(png[pixels < 0], 0.0)  # clipped
    np.testing.assert_array_equal(png[pixels > 1], 1.0)


def test_reevaluate_from_png_reports_the_pixel_error(run, exported):
    r = export.reevaluate(exported, from_png=True, progress=False)
    assert r["from"] == "png" and 0 < r["png_error"] <= PNG_BOUND
    assert r["png_error_all"] >= r["png_error"] and 0 <= r["clipped_fraction"] < 1
    assert 0 <= r["accuracy"]["mean"] <= 1 and len(r["accuracy"]["per_seed"]) == 2
    assert "max |png - npy|" in export.summary(r)


# ------------------------------------------------------------------------------ the files
def test_labels_csv_npy_and_class_ids_agree(run, exported):
    with np.load(os.path.join(run[0], f"ipc{IPC}.npz")) as z:
        y, ids = z["labels"], z["class_ids"]
    y_npy = np.load(os.path.join(exported, "labels.npy"))
    assert y_npy.dtype == np.float32 and y_npy.shape == (20, 10)
    np.testing.assert_array_equal(y_npy, y)
    np.testing.assert_array_equal(np.load(os.path.join(exported, "class_ids.npy")), ids)
    with open(os.path.join(exported, "labels.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "class_id", "class_name", *(f"label_{j}" for j in range(10))]
    body = rows[1:]
    np.testing.assert_array_equal(np.asarray([r[3:] for r in body], np.float32), y)  # exact
    assert [int(r[1]) for r in body] == ids.tolist()
    assert [r[2] for r in body] == [str(i) for i in ids]  # digits' class names
    assert body[0][0] == "images/0/0000.png" and body[1][0] == "images/0/0001.png"
    assert all(os.path.isfile(os.path.join(exported, r[0])) for r in body)


def test_protocol_json_has_everything_to_rebuild_the_evaluation(run, exported):
    p = export.read_protocol(exported)
    meta_protocol = recorded(run)["protocol"]
    assert p["format"] == export.EXPORT_FORMAT
    assert p["dataset"]["name"] == "digits" and p["dataset"]["num_classes"] == 10
    assert p["dataset"]["class_names"] == [str(i) for i in range(10)]
    assert p["image_shape"] == [8, 8, 1] and p["num_images"] == 20 and p["ipc"] == IPC
    assert p["ds_factor"] == 1
    assert p["labels"]["mode"] == "analytic" and "Eq. 3" in p["labels"]["convention"]
    pre = run[2].dataset.preprocessing
    assert p["preprocessing"]["mean"] == [float(v) for v in pre.mean]
    assert p["preprocessing"]["std"] == [float(v) for v in pre.std]
    assert p["preprocessing"]["zca"] is None and p["preprocessing"]["zca_reg"] == 0.1
    ev = p["eval_protocol"]
    for k in ("network", "width", "depth", "norm", "steps", "optimizer", "schedule",
              "batch_size", "augment", "weight_decay", "flips", "num_seeds", "loss"):
        assert k in ev, k
    assert ev["protocol"] == meta_protocol and ev["steps"] == 5 and ev["flips"] is False
    assert ev["schedule"]["warmup_steps"] == 2 and ev["optimizer"] == "adam"
    assert EvalProtocol.from_dict(ev["protocol"]).to_dict() == meta_protocol
    key = jax.random.fold_in(job_keys(jax.random.key(0))["eval"], IPC)  # the run's eval key
    np.testing.assert_array_equal(jax.random.key_data(export.eval_key(p)),
                                  jax.random.key_data(key))
    assert p["recorded_accuracy"] == {k: recorded(run)[k] for k in ("mean", "std", "per_seed")}
    with open(os.path.join(exported, "README.txt")) as f:
        readme = f.read()
    for text in ("images.npy", "(x - mean) / std", "labels.npy", "MSE", "argmax",
                 "mgdd-jax reevaluate", "--from_png", "NHWC"):
        assert text in readme, text
    assert not os.path.exists(os.path.join(exported, "zca.npy"))


def test_zca_rgb_set_and_awkward_class_names(tmp_path):
    """No run needed: a ZCA-whitened RGB set with class names that are not file names."""
    rng = np.random.default_rng(0)
    x01 = rng.uniform(size=(64, 4, 4, 3)).astype(np.float32)
    pre, _, _ = preprocess.preprocess_splits("t", x01, x01[:2], zca=True,
                                             cache_dir=tmp_path / "c")
    x = pre.apply(x01[:6])
    s = export.ExportableSet(
        images=x, labels=np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]] - 1 / 3,
        class_ids=np.array([0, 0, 1, 1, 2, 2]), class_names=("a/b", "A", "a"),
        preprocessing=pre, dataset={"name": "arrays", "data_dir": "", "resize_to": None},
        label_mode="onehot", protocol=EvalProtocol(steps=1, num_seeds=1),
        eval_key=jax.random.key(3), ipc=2)
    out = export.write_set(s, str(tmp_path / "set"))
    p = export.read_protocol(out)
    assert p["preprocessing"]["zca"] == {"file": "zca.npy", "dim": 48, "reg": 0.1}
    np.testing.assert_array_equal(np.load(os.path.join(out, "zca.npy")), pre.zca)
    pixels = np.load(os.path.join(out, "images.npy"))
    assert np.max(np.abs(pixels - x01[:6])) < 1e-5  # the inverse ZCA
    back = export.read_preprocessing(out, p).apply(pixels)
    assert np.max(np.abs(back - x)) < 1e-4 * np.max(np.abs(x))
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["0_a_b", "1_A", "2_a"]
    png = export.read_pngs(out)
    inside = (pixels >= 0) & (pixels <= 1)
    assert png.shape == (6, 4, 4, 3) and np.max(np.abs(png - pixels)[inside]) <= PNG_BOUND
    assert "centred one-hot" in p["labels"]["convention"]
    with pytest.raises(ValueError, match="cannot be loaded by name.*test="):
        export.reevaluate(out, progress=False)


# ------------------------------------------------------------------- Distiller.export
def test_distiller_export_is_the_runs_folder(run, exported, tmp_path):
    """A Distiller fitted with the run's data, config and key exports the run's set; with the
    run's eval key and result, its folder re-evaluates to the same accuracy (from test
    arrays given directly)."""
    from mgdd_jax import api

    _, _, prep = run
    d = api.fit_dataset(prep.dataset, prep.fit, jax.random.key(0), progress=False)
    key = jax.random.fold_in(job_keys(jax.random.key(0))["eval"], IPC)
    out = d.export(str(tmp_path / "d"), IPC, key=key, recorded_accuracy=recorded(run))
    for name in ("images.npy", "labels.npy", "class_ids.npy"):
        np.testing.assert_array_equal(np.load(os.path.join(out, name)),
                                      np.load(os.path.join(exported, name)))
    p, q = export.read_protocol(out), export.read_protocol(exported)
    for k in ("eval_protocol", "eval_key", "recorded_accuracy", "labels", "preprocessing"):
        assert p[k] == q[k], k
    raw = sources.load_raw("digits", None)
    r = export.reevaluate(out, test=(raw.x_test, raw.y_test), progress=False)
    assert r["test"].startswith("given arrays")
    np.testing.assert_allclose(r["accuracy"]["per_seed"], recorded(run)["per_seed"], atol=1e-9)
    # Without a record: none stored; a record needs its key; IPC 1 has one-hot labels.
    one = d.export(str(tmp_path / "one"), 1, protocol="cpu")
    p1 = export.read_protocol(one)
    assert p1["recorded_accuracy"] is None and p1["labels"]["mode"] == "onehot"
    ids = np.load(os.path.join(one, "class_ids.npy"))
    np.testing.assert_allclose(np.load(os.path.join(one, "labels.npy")),
                               np.eye(10)[ids] - 0.1, atol=1e-7)
    with pytest.raises(ValueError, match="needs the key"):
        d.export(str(tmp_path / "nokey"), IPC, recorded_accuracy=recorded(run))
    with pytest.raises(ValueError, match="already holds"):
        d.export(one, 1)
    assert not os.path.exists(tmp_path / "nokey")


# ------------------------------------------------------------------------------ bad input
def _cli(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code, err


def _export_argv(run_dir, to, *extra):
    return ["mgdd-jax export", f"--run={run_dir}", f"--ipc={IPC}", f"--to={to}", *extra]


def test_export_bad_inputs_are_one_line_and_write_nothing(run, tmp_path, capsys):
    out = run[0]
    no_metrics = tmp_path / "no_metrics"
    no_metrics.mkdir()
    shutil.copy(os.path.join(out, f"ipc{IPC}.npz"), no_metrics)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    to = tmp_path / "to"
    cases = [
        (_export_argv(tmp_path / "nope", to), "is not a directory"),
        (_export_argv(a_file, to), "is not a directory"),
        (["mgdd-jax export", f"--run={out}", "--ipc=7", f"--to={to}"], "no ipc7.npz"),
        (["mgdd-jax export", f"--run={out}", "--ipc=0", f"--to={to}"], "must be an integer >= 1"),
        (_export_argv(no_metrics, to), "no metrics.json"),
        (_export_argv(out, a_file / "sub"), "not writable"),
        (_export_argv(out, full), "already holds results"),
        (_export_argv(out, out, "--overwrite"), "would replace the run"),
        (_export_argv(out, os.path.dirname(out), "--overwrite"), "would replace the run"),
        (["mgdd-jax export", f"--run={out}"], "--to is required"),
        (["mgdd-jax export", f"--to={to}"], "--run is required"),
        (_export_argv(out, to, "--bogus=1"), "Unknown command line flag 'bogus'"),
        (["mgdd-jax export", f"--run={out}", "--ipc=two", f"--to={to}"], "--ipc=two"),
        (_export_argv(out, to, "extra"), "unexpected arguments"),
    ]
    before = sorted(os.listdir(tmp_path))
    for argv, match in cases:
        code, err = _cli(export_cli.main, argv, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (argv, err)
        assert match in err[0], (match, err)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporary left
    assert os.listdir(full) == ["keep.txt"] and sorted(os.listdir(no_metrics)) == [
        f"ipc{IPC}.npz"]
    assert not [n for n in os.listdir(os.path.dirname(out)) if ".tmp-" in n or ".old-" in n]


def test_export_overwrite_replaces_and_ipc_defaults_to_the_only_one(run, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_text("old")
    assert export_cli.main(["mgdd-jax export", f"--run={run[0]}", f"--to={full}",
                            "--overwrite"]) == str(full)
    assert "old.txt" not in os.listdir(full) and "protocol.json" in os.listdir(full)
    assert "wrote" in capsys.readouterr().err


def test_reevaluate_bad_inputs(run, exported, tmp_path, capsys):
    cases = [
        (["mgdd-jax reevaluate", str(tmp_path / "nope")], "is not a directory"),
        (["mgdd-jax reevaluate", run[0]], "no protocol.json"),
        (["mgdd-jax reevaluate"], "give one exported folder"),
        (["mgdd-jax reevaluate", exported, exported], "give one exported folder"),
        (["mgdd-jax reevaluate", exported, "--png"], "Unknown command line flag 'png'"),
    ]
    for argv, match in cases:
        code, err = _cli(reevaluate_cli.main, argv, capsys)
        assert code == 2 and len(err) == 1 and match in err[0], (argv, err)
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    p = json.loads((other / "protocol.json").read_text())
    p["format"] = "something/9"
    (other / "protocol.json").write_text(json.dumps(p))
    code, err = _cli(reevaluate_cli.main, ["mgdd-jax reevaluate", str(other)], capsys)
    assert code == 2 and "expected 'mgdd_jax.export/1'" in err[0]


def test_helps_exit_zero(capsys):
    for main in (export_cli.main, reevaluate_cli.main):
        with pytest.raises(SystemExit) as e:
            main(["mgdd-jax x", "--help"])
        assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--to:" in text and "--from_png:" in text


# --------------------------------------------------------------------- the console commands
def test_console_commands(run, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def mgdd(*args):
        return subprocess.run([sys.executable, "-m", "mgdd_jax", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600, check=False)

    to = tmp_path / "cmd"
    p = mgdd("export", f"--run={run[0]}", f"--ipc={IPC}", f"--to={to}")
    assert p.returncode == 0, p.stderr
    assert (to / "protocol.json").is_file() and (to / "images" / "9" / "0001.png").is_file()
    p = mgdd("reevaluate", str(to), "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    np.testing.assert_allclose(result["accuracy"]["per_seed"], recorded(run)["per_seed"],
                               atol=1e-9)
    p = mgdd("export", f"--run={tmp_path / 'nope'}", f"--to={tmp_path / 'x'}")
    assert p.returncode == 2 and p.stderr.strip().startswith("error: ")
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_unknown_command_lists_the_new_ones(capsys):
    from mgdd_jax import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["mgdd-jax", "exprot"])
    assert e.value.code == 2
    assert "distill,export,reevaluate" in capsys.readouterr().err
