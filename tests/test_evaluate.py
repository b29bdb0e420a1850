"""mgdd_jax.evaluate and mgdd_jax.augment: the protocol, the training loop, accuracy, inputs.

Everything is tiny (8x8x1 images, width 4, tens of steps) so the module runs in seconds on a
2-core CPU. Tests that share a protocol and set size share one compiled train step.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mgdd_jax import augment, evaluate, krr, nets

H = 8
N_SYN = 20
N_TEST = 200

# One protocol for most tests: one compile of the train step serves them all.
TINY = evaluate.EvalProtocol(
    width=8,
    learning_rate=3e-3,
    warmup_steps=5,
    steps=40,
    augment="none",
    num_seeds=2,
    test_batch_size=64,
    name="tiny",
)


def _bright_dark(key, n, noise=0.5, h=H):
    """Two classes: bright (+1) vs dark (-1) images plus Gaussian noise; labels alternate."""
    y = np.arange(n) % 2
    base = np.where(y == 1, 1.0, -1.0)[:, None, None, None]
    x = base + noise * np.asarray(jax.random.normal(key, (n, h, h, 1)))
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def problem():
    xs, ys = _bright_dark(jax.random.key(1), N_SYN)
    xt, yt = _bright_dark(jax.random.key(2), N_TEST)
    return xs, ys, xt, yt


@pytest.fixture(scope="module")
def separable(problem):
    """One evaluate_synthetic run on a fresh train-step cache, with the traces it caused."""
    xs, ys, xt, yt = problem
    evaluate._build_train_step.cache_clear()
    before = evaluate.TRACE_COUNTS["train_step"]
    result = evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, TINY, progress=False)
    return result, evaluate.TRACE_COUNTS["train_step"] - before


# ---------------------------------------------------------------------------------------------
# Learning.
# ---------------------------------------------------------------------------------------------


def test_learns_separable_problem(separable):
    result, _ = separable
    assert result["mean"] >= 0.95, result
    assert len(result["per_seed"]) == TINY.num_seeds
    assert all(loss < 0.1 for loss in result["final_losses"]), result["final_losses"]
    assert result["steps"] == 40 and result["batch_size"] == N_SYN
    assert result["num_syn"] == N_SYN and result["num_test"] == N_TEST
    assert result["num_classes"] == 2


def test_labels_matter(problem):
    """Swapped labels give ~0 accuracy, balanced random labels ~chance: labels are used."""
    xs, ys, xt, yt = problem
    proto = dataclasses.replace(TINY, num_seeds=1)
    swapped = evaluate.evaluate_synthetic(
        jax.random.key(0), xs, 1 - ys, xt, yt, proto, progress=False
    )
    assert swapped["mean"] <= 0.05, swapped
    # Half of each class relabelled: the labels carry no information about brightness.
    shuffled = ys.copy()
    shuffled[np.r_[0:N_SYN:4, 1:N_SYN:4]] ^= 1
    assert np.mean(shuffled[ys == 0]) == 0.5 and np.mean(shuffled[ys == 1]) == 0.5
    chance = evaluate.evaluate_synthetic(
        jax.random.key(0), xs, shuffled, xt, yt, proto, progress=False
    )
    assert 0.15 <= chance["mean"] <= 0.85, chance


def test_soft_and_integer_labels_agree(problem):
    """Integer labels are centred one-hot: same training as passing those soft labels."""
    xs, ys, _, _ = problem
    proto = dataclasses.replace(TINY, steps=10)
    v_int, m_int = evaluate.train_on_synthetic(jax.random.key(3), xs, ys, proto)
    soft = np.asarray(krr.centred_onehot(jnp.asarray(ys), 2))
    v_soft, m_soft = evaluate.train_on_synthetic(jax.random.key(3), xs, soft, proto)
    assert m_int["loss_log"] == m_soft["loss_log"]
    for a, b in zip(jax.tree.leaves(v_int), jax.tree.leaves(v_soft)):
        np.testing.assert_array_equal(a, b)


def test_mse_loss_is_frepo_convention():
    logits = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    targets = jnp.array([[0.5, -0.5], [0.5, -0.5]])
    expected = np.mean(0.5 * np.sum((np.asarray(logits) - np.asarray(targets)) ** 2, axis=1))
    np.testing.assert_allclose(evaluate.mse_loss(logits, targets), expected, rtol=1e-6)


def test_full_path_subsets_augmentation_batchnorm(problem):
    """Random batches (batch < n), FRePo's augmentation and batch norm run end to end."""
    xs, ys, xt, yt = problem
    proto = evaluate.EvalProtocol(
        width=4,
        norm="batch",
        steps=6,
        warmup_steps=2,
        batch_size=8,
        augment=augment.FREPO_STRATEGY,
        weight_decay=1e-3,
        num_seeds=1,
        test_batch_size=128,
    )
    variables, metrics = evaluate.train_on_synthetic(jax.random.key(0), xs, ys, proto)
    assert metrics["batch_size"] == 8 and metrics["steps"] == 6
    assert "batch_stats" in variables
    assert all(math.isfinite(loss) for _, loss in metrics["loss_log"])
    acc = evaluate.accuracy(variables, xt, yt, proto.arch(2), batch_size=128)
    assert 0.0 <= acc <= 1.0


# ---------------------------------------------------------------------------------------------
# Accuracy.
# ---------------------------------------------------------------------------------------------


def test_accuracy_matches_numpy_argmax():
    arch = nets.ConvNetConfig(width=4, norm="none", num_classes=5)
    variables = nets.init_feature_params(jax.random.key(0), (H, H, 1), arch)
    x = np.asarray(jax.random.normal(jax.random.key(1), (23, H, H, 1)), np.float32)
    _, logits = nets.ConvNet(arch).apply(variables, jnp.asarray(x))
    pred = np.argmax(np.asarray(logits), axis=1)
    y = np.array(jax.random.randint(jax.random.key(2), (23,), 0, 5))
    y[:7] = pred[:7]  # make sure some are right
    expected = np.sum(pred == y) / 23
    # batch 5 -> 5 batches, the last one padded.
    assert evaluate.accuracy(variables, x, y, arch, batch_size=5) == pytest.approx(expected)
    assert evaluate.accuracy(variables, x, y, arch, batch_size=1000) == pytest.approx(expected)
    onehot = np.eye(5)[y]  # (n, C) rows: argmax
    assert evaluate.accuracy(variables, x, onehot, arch, batch_size=7) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# Seeds, statistics, compilation.
# ---------------------------------------------------------------------------------------------


def test_mean_std_from_per_seed_and_json(separable):
    result, _ = separable
    per_seed = np.asarray(result["per_seed"])
    assert result["mean"] == pytest.approx(np.mean(per_seed))
    assert result["std"] == pytest.approx(np.std(per_seed))  # population std, as FRePo
    text = json.dumps(result)  # JSON-serialisable as is
    back = json.loads(text)
    assert evaluate.EvalProtocol.from_dict(back["protocol"]) == TINY
    assert result["seconds"] > 0


def test_seeds_differ_same_seed_reproducible(problem):
    xs, ys, _, _ = problem
    proto = dataclasses.replace(TINY, num_seeds=3, steps=10)
    # A noisy test set keeps accuracy off 100% so that networks can differ on it.
    xt_noisy, yt_noisy = _bright_dark(jax.random.key(9), N_TEST, noise=4.0)
    a = evaluate.evaluate_synthetic(
        jax.random.key(0), xs, ys, xt_noisy, yt_noisy, proto, progress=False
    )
    b = evaluate.evaluate_synthetic(
        jax.random.key(0), xs, ys, xt_noisy, yt_noisy, proto, progress=False
    )
    assert a["per_seed"] == b["per_seed"] and a["final_losses"] == b["final_losses"]
    assert len(set(a["final_losses"])) == 3
    assert len(set(a["per_seed"])) > 1, a["per_seed"]
    c = evaluate.evaluate_synthetic(
        jax.random.key(1), xs, ys, xt_noisy, yt_noisy, proto, progress=False
    )
    assert c["final_losses"] != a["final_losses"]


def test_train_step_compiles_once_per_run(separable, problem):
    _, traces = separable
    assert traces == 1  # two seeds, one trace
    xs, ys, xt, yt = problem
    before = evaluate.TRACE_COUNTS["train_step"]
    evaluate.evaluate_synthetic(jax.random.key(5), xs, ys, xt, yt, TINY, progress=False)
    assert evaluate.TRACE_COUNTS["train_step"] == before  # cached: no new trace


def test_nonfinite_loss_raises_with_step(problem):
    xs, _, _, _ = problem
    huge = np.full((N_SYN, 2), 1e30, np.float32)  # (logits - 1e30)^2 overflows float32
    with pytest.raises(ValueError, match=r"non-finite training loss .* at step 0 of 40"):
        evaluate.train_on_synthetic(jax.random.key(0), xs, huge, TINY)


def test_progress_reports(problem, capsys):
    xs, ys, _, _ = problem
    proto = dataclasses.replace(TINY, steps=10)
    seen = []
    evaluate.train_on_synthetic(jax.random.key(0), xs, ys, proto, progress=seen.append)
    assert [info["step"] for info in seen] == list(range(1, 11))
    assert all({"loss", "learning_rate", "eta_seconds", "steps"} <= set(info) for info in seen)
    capsys.readouterr()
    evaluate.train_on_synthetic(jax.random.key(0), xs, ys, proto, progress=True)
    err = capsys.readouterr().err
    assert "step 10/10" in err and "loss" in err and "ETA" in err
    evaluate.train_on_synthetic(jax.random.key(0), xs, ys, proto, progress=None)
    assert capsys.readouterr().err == ""


def test_evaluate_progress_silenceable(problem, capsys):
    xs, ys, xt, yt = problem
    proto = dataclasses.replace(TINY, num_seeds=1, steps=10)
    evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, proto, progress=False)
    assert capsys.readouterr().err == ""
    evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, proto, progress=True)
    err = capsys.readouterr().err
    assert "[eval seed 1/1]" in err and "test accuracy" in err


# ---------------------------------------------------------------------------------------------
# Protocol.
# ---------------------------------------------------------------------------------------------


def test_steps_for_rule():
    frepo = evaluate.PROTOCOLS["frepo"]
    # FRePo's own sizes get FRePo's steps (script/eval.py table).
    for n, steps in evaluate.FREPO_STEPS_TABLE:
        assert frepo.steps_for(n) == steps
    # Other sizes: the smallest table size >= n; beyond the table, its last entry.
    assert frepo.steps_for(1) == 1000
    assert frepo.steps_for(50) == 2000
    assert frepo.steps_for(300) == 5000
    assert frepo.steps_for(100_000) == 40000
    cpu = evaluate.PROTOCOLS["cpu"]
    assert [cpu.steps_for(n) for n in (10, 11, 100, 500, 5000)] == [1000, 2000, 2000, 2000, 2000]
    assert all(cpu.steps_for(n) <= frepo.steps_for(n) for n in range(1, 6000, 7))
    assert cpu.width < frepo.width
    assert dataclasses.replace(frepo, steps=7).steps_for(5000) == 7
    with pytest.raises(ValueError):
        frepo.steps_for(0)
    assert frepo.batch_for(100) == 100 and frepo.batch_for(2000) == 500


def test_frepo_values_and_schedule():
    p = evaluate.PROTOCOLS["frepo"]
    assert (p.width, p.depth, p.norm, p.double_width) == (128, 3, "none", False)
    assert p.learning_rate == 3e-4 and p.weight_decay == 0.0 and p.batch_size == 500
    assert p.augment == "flip_color_crop_rotate_translate_cutout"
    assert evaluate.PROTOCOLS["frepo_noflip"].augment == "color_crop_rotate_translate_cutout"
    assert p.warmup_for(2000) == 500 and p.warmup_for(40) == 20
    sched = p.schedule(2000)
    assert float(sched(0)) == 0.0
    assert float(sched(500)) == pytest.approx(3e-4)
    assert float(sched(2000)) == pytest.approx(3e-6, rel=1e-3)
    assert float(sched(250)) == pytest.approx(1.5e-4)


def test_get_protocol_drops_flip_for_digits():
    assert "flip" not in evaluate.get_protocol("frepo", "mnist").augment
    assert "flip" not in evaluate.get_protocol("cpu", "fashion_mnist").augment
    assert evaluate.get_protocol("frepo", "cifar10") == evaluate.PROTOCOLS["frepo"]
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        evaluate.get_protocol("nope")


def test_protocol_dict_round_trip():
    for proto in [*evaluate.PROTOCOLS.values(), TINY]:
        d = proto.to_dict()
        text = json.dumps(d)
        back = evaluate.EvalProtocol.from_dict(json.loads(text))
        assert back == proto and hash(back) == hash(proto)
    with pytest.raises(ValueError, match="unknown EvalProtocol field"):
        evaluate.EvalProtocol.from_dict({**TINY.to_dict(), "lr": 1.0})


@pytest.mark.parametrize(
    "changes",
    [
        {"num_seeds": 0},
        {"steps": 0},
        {"learning_rate": 0.0},
        {"learning_rate": float("nan")},
        {"batch_size": 0},
        {"weight_decay": -1.0},
        {"augment": "flip_spin"},
        {"norm": "group"},
        {"steps_table": ((100, 10), (10, 5))},
    ],
)
def test_protocol_rejects_bad_values(changes):
    with pytest.raises(ValueError):
        dataclasses.replace(TINY, **changes)


def test_weight_decay_is_decoupled_and_kernel_only():
    """weight_decay > 0 decays kernels only (FRePo's 'adam' branch ignored its weight_decay)."""
    params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    proto = dataclasses.replace(TINY, weight_decay=0.1, warmup_steps=0)
    tx = proto.optimizer(10)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["Dense_0"]["kernel"]) < 1.0)
    np.testing.assert_array_equal(new["Dense_0"]["bias"], params["Dense_0"]["bias"])
    tx0 = dataclasses.replace(TINY, warmup_steps=0).optimizer(10)
    updates0, _ = tx0.update(zeros, tx0.init(params), params)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates0))


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError before any training.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(evaluate, "_train", fail)


def _bad_cases(xs, ys, xt, yt):
    nan_x = xs.copy()
    nan_x[3, 2, 2, 0] = np.nan
    soft = np.asarray(krr.centred_onehot(jnp.asarray(ys), 2))
    nan_y = soft.copy()
    nan_y[0, 1] = np.nan
    return {
        "x_syn not 4-D": ((xs[..., 0], ys, xt, yt), "4-D NHWC"),
        "label count": ((xs, ys[:-1], xt, yt), "labels"),
        "soft label count": ((xs, soft[:-1], xt, yt), "labels"),
        "NaN pixels": ((nan_x, ys, xt, yt), "non-finite"),
        "NaN labels": ((xs, nan_y, xt, yt), "non-finite"),
        "empty set": ((xs[:0], ys[:0], xt, yt), "empty"),
        "test size": ((xs, ys, xt[:, :4, :4], yt), "must match"),
        "test channels": ((xs, ys, np.repeat(xt, 3, axis=-1), yt), "must match"),
        "test not 4-D": ((xs, ys, xt[..., 0], yt), "4-D NHWC"),
        "test label count": ((xs, ys, xt, yt[:-1]), "labels"),
        "test label range": ((xs, soft, xt, yt + 5), "class ids"),
        "uint8 test images": ((xs, ys, (xt > 0).astype(np.uint8), yt), "floating point"),
        "float 1-D labels": ((xs, ys.astype(np.float32), xt, yt), "integer class ids"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "x_syn not 4-D",
        "label count",
        "soft label count",
        "NaN pixels",
        "NaN labels",
        "empty set",
        "test size",
        "test channels",
        "test not 4-D",
        "test label count",
        "test label range",
        "uint8 test images",
        "float 1-D labels",
    ],
)
def test_bad_input_raises_before_training(case, problem, no_training):
    args, message = _bad_cases(*problem)[case]
    with pytest.raises(ValueError, match=message):
        evaluate.evaluate_synthetic(jax.random.key(0), *args, TINY, progress=False)


def test_bad_num_seeds_and_train_inputs(problem, no_training):
    xs, ys, _, _ = problem
    with pytest.raises(ValueError, match="num_seeds"):
        dataclasses.replace(TINY, num_seeds=0)
    with pytest.raises(ValueError, match="4-D NHWC"):
        evaluate.train_on_synthetic(jax.random.key(0), xs[0], ys, TINY)
    with pytest.raises(ValueError, match="empty"):
        evaluate.train_on_synthetic(jax.random.key(0), xs[:0], ys[:0], TINY)
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        evaluate.train_on_synthetic(jax.random.key(0), xs, ys, "fast")


# ---------------------------------------------------------------------------------------------
# Augmentation.
# ---------------------------------------------------------------------------------------------


def _images(n=8, h=H, c=3, key=7):
    return jax.random.normal(jax.random.key(key), (n, h, h, c))


# Jitted once and shared: the augmentation tests use (8, H, H, 3) batches where they can.
JIT = {name: jax.jit(fn) for name, fn in augment.BATCHED.items()}


@pytest.mark.parametrize("name", augment.OPERATIONS)
def test_augment_shape_dtype_determinism(name):
    x = _images()
    fn = JIT[name]
    a = fn(jax.random.key(0), x)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, fn(jax.random.key(0), x))
    outs = [np.asarray(fn(jax.random.key(k), x)) for k in range(1, 6)]
    assert any(not np.array_equal(o, a) for o in outs)


def test_augment_per_sample_keys():
    """Identical images in a batch get different augmentations."""
    x = jnp.broadcast_to(_images(n=1), (8, H, H, 3))
    for name in ("crop", "rotate", "translate", "color", "cutout"):
        out = np.asarray(JIT[name](jax.random.key(0), x))
        assert len({o.tobytes() for o in out}) > 1, name


def test_augment_disabled_is_identity():
    x = _images()
    for strategy in ("none", ""):
        assert augment.make_augment(strategy)(jax.random.key(0), x) is x
    assert augment.parse_strategy("none") == ()


def test_composite_strategy():
    x = _images()
    fn = jax.jit(augment.make_augment(augment.FREPO_STRATEGY))
    outs = [np.asarray(fn(jax.random.key(k), x)) for k in range(8)]
    assert all(o.shape == x.shape for o in outs)
    np.testing.assert_array_equal(outs[0], fn(jax.random.key(0), x))
    assert len({o.tobytes() for o in outs}) > 1
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.make_augment("flip_spin")
    with pytest.raises(ValueError, match="twice"):
        augment.parse_strategy("flip_flip")


def test_geometric_content_comes_from_image():
    """Crop / rotate / translate only interpolate image pixels (edge-extended)."""
    x = _images()
    lo = np.asarray(x).min(axis=(1, 2), keepdims=True)
    hi = np.asarray(x).max(axis=(1, 2), keepdims=True)
    const = jnp.full(x.shape, 0.3)
    for name in ("crop", "rotate", "translate"):
        out = np.asarray(JIT[name](jax.random.key(3), x))
        assert np.all(out >= lo - 1e-5) and np.all(out <= hi + 1e-5), name
        assert not np.allclose(out, np.asarray(x)), name
        np.testing.assert_allclose(JIT[name](jax.random.key(3), const), 0.3, rtol=1e-6)


def test_flip_and_cutout_exact():
    x = _images(key=8) + 10.0  # no zeros in the images
    xn = np.asarray(x)
    kinds = set()
    for key in range(3):
        flipped = np.asarray(JIT["flip"](jax.random.key(key), x))
        for f, o in zip(flipped, xn):
            kinds.add(
                "same"
                if np.array_equal(f, o)
                else "mirror"
                if np.array_equal(f, o[:, ::-1])
                else "other"
            )
    assert kinds == {"same", "mirror"}
    cut = np.asarray(JIT["cutout"](jax.random.key(0), x))
    for c, o in zip(cut, xn):
        changed = np.any(c != o, axis=-1)
        rows, cols = np.nonzero(changed)
        assert changed.sum() == (H // 4) ** 2
        assert rows.max() - rows.min() + 1 == H // 4 and cols.max() - cols.min() + 1 == H // 4
        assert np.all(c[changed] == 0.0)


def test_color_is_affine_per_image_for_grey():
    """One channel: brightness + contrast is out = s * x + t, s in [e^-0.25, e^0.25]."""
    x = np.asarray(_images(c=1))
    out = np.asarray(JIT["color"](jax.random.key(0), jnp.asarray(x)))
    for o, i in zip(out, x):
        s, t = np.polyfit(i.ravel(), o.ravel(), 1)
        np.testing.assert_allclose(o, s * i + t, atol=1e-5)
        assert math.exp(-0.25) - 1e-5 <= s <= math.exp(0.25) + 1e-5


def test_strategy_for_dataset():
    assert augment.strategy_for_dataset("mnist") == augment.FREPO_STRATEGY_NO_FLIP
    assert augment.strategy_for_dataset("Fashion_MNIST") == augment.FREPO_STRATEGY_NO_FLIP
    assert augment.strategy_for_dataset("cifar10") == augment.FREPO_STRATEGY
    assert augment.strategy_for_dataset("mnist", "flip") == "none"
