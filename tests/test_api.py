"""mgdd_jax.api: fit -> generate -> save -> load, array inputs, bad inputs, the README example."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import mgdd_jax
from mgdd_jax import api, data, labels
from mgdd_jax import generator as gen_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config():
    c = mgdd_jax.default_config("smoke")
    c.adapt.batch_size = 20
    return c


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x.reshape(-1, 8, 8) / 16.0).astype(np.float32)[:600], y[:600]


@pytest.fixture(scope="module")
def fitted(digits):
    x, y = digits
    return mgdd_jax.fit(x, y, ipc=2, key=jax.random.key(0), config=smoke_config())


def test_generate_three_ipcs(fitted):
    for ipc in (1, 2, 5):
        x_syn, y_syn = fitted.generate(ipc)
        assert x_syn.shape == (10 * ipc, 8, 8, 1) and x_syn.dtype == np.float32
        assert y_syn.shape == (10 * ipc, 10) and y_syn.dtype == np.float32
        _, l_init = fitted.initial_set(ipc)
        np.testing.assert_array_equal(np.bincount(l_init, minlength=10), ipc)
        if ipc == 1:  # one-hot at IPC 1 (the paper's default), centred
            np.testing.assert_allclose(y_syn.argmax(1), l_init)
            np.testing.assert_allclose(y_syn.sum(1), 0.0, atol=1e-6)
        else:  # Eq. 3 soft labels (width-4 features) agree with the class well above chance
            assert np.mean(y_syn.argmax(1) == l_init) >= 0.3
    # The set adapted on is adaptation's single initialisation; the same IPC, the same set.
    np.testing.assert_array_equal(fitted.initial_set(2)[0], fitted.single_init[0])
    np.testing.assert_array_equal(fitted.generate(5)[0], fitted.generate(5)[0])


def test_generate_with_key_or_init(fitted, digits):
    x, y = digits
    a, _ = fitted.generate(2)
    b, _ = fitted.generate(2, key=jax.random.key(7))
    assert not np.array_equal(a, b)  # a new initialisation (Tab. 5)
    idx = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)])
    mine, labels_mine = fitted.generate(2, init=(x[idx], y[idx]))
    x_init = fitted.preprocess(x[idx])
    np.testing.assert_array_equal(
        mine, np.asarray(gen_lib.generate(fitted.params, x_init, 2, fitted.gen_config)))
    assert labels_mine.shape == (20, 10)
    with pytest.raises(ValueError, match="exactly ipc=3 images of each"):
        fitted.generate(3, init=(x[idx], y[idx]))
    with pytest.raises(ValueError, match="either key .* or init"):
        fitted.generate(2, key=jax.random.key(0), init=(x[idx], y[idx]))
    with pytest.raises(ValueError, match="ipc must be an integer >= 1"):
        fitted.generate(0)


def test_save_load_generate_bit_for_bit(fitted, tmp_path):
    before = {ipc: fitted.generate(ipc) for ipc in (1, 2, 5)}
    path = fitted.save(str(tmp_path / "d"))
    assert sorted(os.listdir(path)) == ["distiller.json", "distiller.npz", "generator"]
    assert sorted(os.listdir(tmp_path)) == ["d"]  # written all at once, no temporary left
    loaded = mgdd_jax.load(path)
    for ipc, (x_syn, y_syn) in before.items():
        x2, y2 = loaded.generate(ipc)
        np.testing.assert_array_equal(x2, x_syn)
        np.testing.assert_array_equal(y2, y_syn)
    for a, b in zip(jax.tree.leaves(fitted.label_model.theta),
                    jax.tree.leaves(loaded.label_model.theta)):
        np.testing.assert_array_equal(a, b)
    # New initialisations come from the saved pool.
    assert loaded.generate(3, key=jax.random.key(1))[0].shape == (30, 8, 8, 1)
    with pytest.raises(ValueError, match="already holds results"):
        fitted.save(path)
    fitted.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no saved distiller"):
        mgdd_jax.load(str(tmp_path))


def test_numpy_jax_uint8_inputs_agree(digits):
    x, y = digits
    x8 = np.round(x * 255).astype(np.uint8)
    key, cfg = jax.random.key(3), smoke_config()
    runs = [mgdd_jax.fit(x8, y, ipc=2, key=key, config=cfg),  # uint8 NHW
            mgdd_jax.fit(jnp.asarray(x8), jnp.asarray(y), ipc=2, key=key, config=cfg),  # JAX
            mgdd_jax.fit((x8.astype(np.float32) / 255)[..., None], y, ipc=2, key=key,
                         config=cfg)]  # float NHWC
    ref = runs[0].generate(2)
    for d in runs[1:]:
        got = d.generate(2)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def _bad_cases(x, y):
    nan = x.copy()
    nan[1, 2, 2] = np.nan
    return {
        "channels-first": (x[:, None], y, {}),
        "nan pixels": (nan, y, {}),
        "floats beyond [0, 1]": (x * 16, y, {}),
        "int64 pixels": ((x * 16).astype(np.int64), y, {}),
        "rank 2": (x.reshape(len(x), -1), y, {}),
        "length mismatch": (x, y[:-1], {}),
    }


@pytest.mark.parametrize("case", list(_bad_cases(np.zeros((2, 8, 8)), np.zeros(2))))
def test_bad_arrays_refused_with_the_loaders_message(case, digits, tmp_path, monkeypatch):
    x, y = digits
    bx, by, extra = _bad_cases(x, y)[case]
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=bx, y_train=by, x_test=x[:20], y_test=y[:20], **extra)
    with pytest.raises(ValueError) as from_loader:
        data.load_dataset(f"npz:{path}")
    calls = []
    monkeypatch.setattr(labels, "fit_label_model", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError) as from_api:
        mgdd_jax.fit(bx, by, ipc=2, key=jax.random.key(0), config=smoke_config(),
                     num_classes=extra.get("num_classes"))
    assert not calls  # refused before any work

    def norm(e, name):
        return str(e.value).replace(repr(name), "<dataset>")

    assert norm(from_api, "arrays") == norm(from_loader, f"npz:{path}")


def test_label_past_the_declared_classes(digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"class id 10 but there are only 10 classes.*\[0, 10\)"):
        mgdd_jax.fit(x, np.where(y == 9, 10, y), ipc=2, key=jax.random.key(0),
                     config=smoke_config(), num_classes=10)
    with pytest.raises(ValueError, match="class 9 .* has no train images"):
        mgdd_jax.fit(x, np.where(y == 9, 10, y), ipc=2, key=jax.random.key(0),
                     config=smoke_config(), num_classes=11)


def test_fit_refuses_bad_options_before_work(digits, monkeypatch):
    x, y = digits
    calls = []
    monkeypatch.setattr(labels, "fit_label_model", lambda *a, **k: calls.append(1))
    cfg = smoke_config()
    for kwargs, err, match in (
        ({"ipc": "1,,2"}, ValueError, "empty item"),
        ({"ipc": 0}, ValueError, "every IPC must be >= 1"),
        ({"ipc": 500}, ValueError, "IPC=500 is larger than"),
        ({"ipc": 2, "meta": "/nonexistent/ckpt"}, FileNotFoundError, "no generator checkpoint"),
        ({"ipc": 2, "meta": 3}, TypeError, "meta must be"),
    ):
        with pytest.raises(err, match=match):
            mgdd_jax.fit(x, y, key=jax.random.key(0), config=cfg, **kwargs)
    assert not calls


def test_evaluate_records_its_protocol(fitted, digits):
    x, y = digits
    x_syn, y_syn = fitted.generate(2)
    res = mgdd_jax.evaluate(x_syn, y_syn, fitted.preprocess(x[:50]), y[:50],
                            key=jax.random.key(0), protocol="cpu", num_seeds=2, steps=3)
    assert res["protocol"]["name"] == "cpu" and res["protocol"]["num_seeds"] == 2
    assert res["steps"] == 3 and len(res["per_seed"]) == 2
    assert "flip" in res["protocol"]["augment"]  # no dataset name: the protocol as named


def test_evaluate_drops_flips_for_a_digit_dataset_name(fitted, digits):
    x, y = digits
    x_syn, y_syn = fitted.generate(2)
    args = (x_syn, y_syn, fitted.preprocess(x[:50]), y[:50])
    res = mgdd_jax.evaluate(*args, key=jax.random.key(0), protocol="cpu", num_seeds=1, steps=2,
                            dataset="digits")
    assert res["protocol"]["augment"] == "color_crop_rotate_translate_cutout"
    with pytest.raises(ValueError, match="protocol given by name"):
        mgdd_jax.evaluate(*args, key=jax.random.key(0), dataset="digits",
                          protocol=mgdd_jax.evaluation.get_protocol("cpu"))


def test_version_and_typed_marker():
    pyproject = open(os.path.join(REPO, "pyproject.toml")).read()
    assert f'version = "{mgdd_jax.__version__}"' in pyproject
    assert os.path.isfile(os.path.join(os.path.dirname(api.__file__), "py.typed"))


def _readme_blocks(heading: str) -> list[str]:
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_example_runs(tmp_path, capsys):
    """The README's "Use it from Python" example, on the smoke config (seconds, not minutes)."""
    first = _readme_blocks("## Use it from Python")[0]
    assert len(first.strip().splitlines()) <= 16
    assert 'default_config("cpu")' in first and '"runs/digits_distiller"' in first
    code = first.replace('default_config("cpu")', 'default_config("smoke")')
    code = code.replace('"runs/digits_distiller"', repr(str(tmp_path / "distiller")))
    exec(compile(code, "README.md", "exec"), {})
    assert "test accuracy" in capsys.readouterr().out
    assert mgdd_jax.load(str(tmp_path / "distiller")).generate(20)[0].shape == (200, 8, 8, 1)
