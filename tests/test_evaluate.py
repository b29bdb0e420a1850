"""mgdd_jax.evaluation and mgdd_jax.augment: the protocol, the training loop, accuracy, inputs.

Everything is tiny (8x8x1 images, width 8, tens of steps) so the module runs in seconds on a
2-core CPU. Tests that share a protocol and set size share one compiled train step.

The learning problem is four classes that differ only in *where* the image is bright (one
quadrant each), so a network must use spatial structure: a working training loop separates
them, a loop that ignores the labels or scrambles the images cannot.
"""

import dataclasses
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from mgdd_jax import augment, krr, nets
from mgdd_jax import evaluation as evaluate
from mgdd_jax.evaluation import batched as eval_batched
from mgdd_jax.evaluation import evaluate as eval_evaluate
from mgdd_jax.evaluation import predict as eval_predict
from mgdd_jax.evaluation import trainer as eval_trainer

H = 8
C = 4
N_SYN = 32  # 8 per class
N_TEST = 200

# One protocol for most tests: one compile of the train step serves them all.
TINY = evaluate.EvalProtocol(
    width=8,
    learning_rate=1e-2,
    warmup_steps=5,
    steps=40,
    augment="none",
    num_seeds=2,
    test_batch_size=64,
    name="tiny",
)


def _quadrants(key, n, noise=0.5, h=H):
    """Four classes: class k has its k-th quadrant raised by 2, plus Gaussian noise everywhere.

    Every image has the same expected mean, so only the position of the bright block tells the
    classes apart. Labels cycle 0, 1, 2, 3, 0, ...
    """
    y = np.arange(n) % C
    x = noise * np.asarray(jax.random.normal(key, (n, h, h, 1)))
    half = h // 2
    for k in range(C):
        r, c = divmod(k, 2)
        x[y == k, r * half : (r + 1) * half, c * half : (c + 1) * half] += 2.0
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def problem():
    xs, ys = _quadrants(jax.random.key(1), N_SYN)
    xt, yt = _quadrants(jax.random.key(2), N_TEST)
    return xs, ys, xt, yt


@pytest.fixture(scope="module")
def separable(problem):
    """One evaluate_synthetic run of TINY on the problem (also warms the caches up)."""
    xs, ys, xt, yt = problem
    return evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, TINY, progress=False)


# ---------------------------------------------------------------------------------------------
# Learning.
# ---------------------------------------------------------------------------------------------


def test_learns_separable_problem(separable):
    """8 images per class, 40 steps of a width-8 net: every seed > 90% on 200 test images."""
    result = separable
    assert len(result["per_seed"]) == TINY.num_seeds
    assert min(result["per_seed"]) > 0.9, result
    assert all(loss < 0.1 for loss in result["final_losses"]), result["final_losses"]
    assert result["steps"] == 40 and result["batch_size"] == N_SYN
    assert result["num_syn"] == N_SYN and result["num_test"] == N_TEST
    assert result["num_classes"] == C


def test_labels_matter(problem):
    """Permuted classes give ~0 accuracy, labels independent of the class ~chance (1/4)."""
    xs, ys, xt, yt = problem
    swapped = evaluate.evaluate_synthetic(
        jax.random.key(0), xs, (ys + 1) % C, xt, yt, TINY, progress=False
    )
    assert max(swapped["per_seed"]) <= 0.05, swapped
    # Each class's 8 images get every label twice: the labels say nothing about the class.
    shuffled = (ys + np.arange(N_SYN) // C) % C
    for k in range(C):
        np.testing.assert_array_equal(np.bincount(shuffled[ys == k], minlength=C), 2)
    chance = evaluate.evaluate_synthetic(
        jax.random.key(0), xs, shuffled, xt, yt, TINY, progress=False
    )
    assert 0.1 <= chance["mean"] <= 0.45, chance


def test_soft_and_integer_labels_agree(problem):
    """Integer labels are centred one-hot: same training as passing those soft labels."""
    xs, ys, _, _ = problem
    proto = dataclasses.replace(TINY, steps=10)
    v_int, m_int = evaluate.train_on_synthetic(jax.random.key(3), xs, ys, proto)
    soft = np.asarray(krr.centred_onehot(jnp.asarray(ys), C))
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
    """Random batches (batch < n), FRePo's augmentation, weight decay and batch norm (test
    with running averages) still learn the problem."""
    xs, ys, xt, yt = problem
    proto = evaluate.EvalProtocol(
        width=8,
        norm="batch",
        learning_rate=1e-2,
        steps=40,
        warmup_steps=5,
        batch_size=16,
        augment=augment.FREPO_STRATEGY,
        weight_decay=1e-3,
        num_seeds=1,
        test_batch_size=128,
    )
    variables, metrics = evaluate.train_on_synthetic(jax.random.key(0), xs, ys, proto)
    assert metrics["batch_size"] == 16 and metrics["steps"] == 40
    assert "batch_stats" in variables
    assert all(math.isfinite(loss) for _, loss in metrics["loss_log"])
    assert metrics["loss_log"][-1][1] < 0.5 * metrics["loss_log"][0][1], metrics["loss_log"]
    acc = evaluate.accuracy(variables, xt, yt, proto.arch(C), batch_size=128)
    assert acc > 0.9, acc


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
    result = separable
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
    xt_noisy, yt_noisy = _quadrants(jax.random.key(9), N_TEST, noise=4.0)
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


def test_train_step_compiles_once_per_run(separable, problem, compile_events):
    """A new protocol costs one XLA compilation (its training chunk) for all its seeds and
    all chunks of steps; running it again costs none. ``separable`` has already compiled
    everything else for these shapes (network init and test predictions depend on the
    architecture, not on the protocol)."""
    xs, ys, xt, yt = problem
    proto = dataclasses.replace(TINY, name="compile-count")  # a new train-step cache key
    evaluate.evaluate_synthetic(jax.random.key(5), xs, ys, xt, yt, proto, progress=False)
    assert len(compile_events) == 1, compile_events  # two seeds, one compile
    evaluate.evaluate_synthetic(jax.random.key(6), xs, ys, xt, yt, proto, progress=False)
    assert len(compile_events) == 1, compile_events  # cached


def test_nonfinite_loss_raises_with_step(problem):
    xs, _, _, _ = problem
    huge = np.full((N_SYN, C), 1e30, np.float32)  # (logits - 1e30)^2 overflows float32
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
    assert "10/10" in err and "loss=" in err and "lr=" in err and "ETA" in err
    evaluate.train_on_synthetic(jax.random.key(0), xs, ys, proto, progress=None)
    assert capsys.readouterr().err == ""


def test_evaluate_progress_silenceable(problem, capsys):
    xs, ys, xt, yt = problem
    proto = dataclasses.replace(TINY, num_seeds=1, steps=10)
    evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, proto, progress=False)
    assert capsys.readouterr().err == ""
    evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, proto, progress=True)
    err = capsys.readouterr().err
    assert "eval seed 1/1 [" in err and "10/10" in err  # the Progress line
    assert "eval seed 1/1: test accuracy" in err


# ---------------------------------------------------------------------------------------------
# Batched training (all seeds, and sets of one shape, per jitted chunk) vs the per-seed loop.
# ---------------------------------------------------------------------------------------------

# Random batches (16 of 32) and FRePo's augmentation: every key-dependent part of a step
# (subset, augmentation op and its per-sample parameters, init) must line up per seed.
EQUIV = evaluate.EvalProtocol(
    width=4,
    norm="none",
    learning_rate=1e-2,
    warmup_steps=2,
    steps=6,
    batch_size=16,
    augment=augment.FREPO_STRATEGY,
    num_seeds=2,
    test_batch_size=64,
    name="equiv",
)
BATCHED_MODES = ("unrolled", "vmap")


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-5, loose=lambda name: False, loose_atol=0.0):
    """Leaves allclose; leaves whose path ``loose(name)`` selects only within ``loose_atol``."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    strict = 0
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        name = jax.tree_util.keystr(path)
        tol = {"rtol": 0.0, "atol": loose_atol} if loose(name) else {"rtol": rtol, "atol": atol}
        strict += not loose(name)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=name, **tol)
    assert strict > 0


@pytest.fixture(scope="module")
def per_seed_reference(problem):
    """EQUIV trained seed by seed with the reference loop (one jitted call per step)."""
    xs, ys, _, _ = problem
    y = krr.centred_onehot(jnp.asarray(ys), C)
    keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(EQUIV.num_seeds)]
    runs = [eval_trainer._train(k, jnp.asarray(xs), y, C, EQUIV, None) for k in keys]
    return keys, y, runs


def test_resolve_seeds():
    assert evaluate.resolve_seeds("auto", "cpu") == "unrolled"
    assert evaluate.resolve_seeds("auto", "gpu") == "vmap"
    assert evaluate.resolve_seeds("auto") == "unrolled"  # the tests run on CPU
    for mode in ("loop", "vmap", "unrolled"):
        assert evaluate.resolve_seeds(mode, "gpu") == mode
        assert evaluate.resolve_seeds(mode, "cpu", "alexnet") == mode  # explicit modes stay
    # Tab. 4's architectures: stock convs, slow inside a CPU loop body -> the per-step loop.
    for arch in ("alexnet", "vgg11", "resnet18"):
        assert evaluate.resolve_seeds("auto", "cpu", arch) == "loop"
        assert evaluate.resolve_seeds("auto", "gpu", arch) == "vmap"
    assert evaluate.resolve_seeds("auto", "cpu", "convnet") == "unrolled"
    with pytest.raises(ValueError, match="seeds must be one of"):
        evaluate.resolve_seeds("parallel")
    with pytest.raises(ValueError, match="network must be one of"):
        evaluate.resolve_seeds("auto", "cpu", "lenet")


def test_auto_trains_unseen_architectures_with_the_loop_on_cpu(monkeypatch):
    """evaluate_synthetic's "auto" follows the protocol's network (the loop path for VGG11)."""
    used = []
    real_loop, real_batched = eval_evaluate._evaluate_loop, eval_batched._train_batched
    monkeypatch.setattr(eval_evaluate, "_evaluate_loop",
                        lambda *a, **k: used.append("loop") or real_loop(*a, **k))
    monkeypatch.setattr(eval_batched, "_train_batched",
                        lambda *a, **k: used.append("batched") or real_batched(*a, **k))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 8, 8, 1)).astype(np.float32), np.array([0, 1, 0, 1])
    xt, yt = rng.normal(size=(6, 8, 8, 1)).astype(np.float32), np.array([0, 1, 0, 1, 0, 1])
    for network, expected in (("vgg11", "loop"), ("convnet", "batched")):
        protocol = dataclasses.replace(evaluate.get_protocol("cpu"), network=network, steps=2,
                                       num_seeds=1)
        evaluate.evaluate_synthetic(jax.random.key(0), x, y, xt, yt, protocol, num_classes=2,
                                    progress=False)
        assert used[-1] == expected


@pytest.mark.parametrize("mode", BATCHED_MODES)
def test_batched_training_equals_per_seed_loop(mode, problem, per_seed_reference):
    """Same keys -> the same networks (params, batch stats, logged losses) and accuracies as
    the per-seed loop, to float tolerance; and the seeds do differ from each other."""
    xs, _, xt, yt = problem
    keys, y, runs = per_seed_reference
    variables, metrics = eval_batched._train_batched(
        keys, jnp.asarray(xs)[None], y[None], C, EQUIV, None, "test", mode
    )
    assert metrics["steps"] == EQUIV.steps and metrics["batch_size"] == 16
    arch = EQUIV.arch(C)
    accs = eval_predict._accuracies(variables, xt, yt, arch, EQUIV.test_batch_size, mode)
    for i, (ref_vars, ref_metrics) in enumerate(runs):
        got = jax.tree.map(lambda a, i=i: a[i], variables)
        _assert_trees_close(got, ref_vars)
        log, ref_log = metrics["loss_logs"][i], ref_metrics["loss_log"]
        assert [s for s, _ in log] == [s for s, _ in ref_log]
        np.testing.assert_allclose([v for _, v in log], [v for _, v in ref_log], rtol=1e-5)
        ref_acc = evaluate.accuracy(ref_vars, xt, yt, arch, EQUIV.test_batch_size)
        assert accs[i] == pytest.approx(ref_acc, abs=1.5 / N_TEST)  # a borderline argmax at most
    a, b = (jax.tree.leaves(v[0]["params"]) for v in runs)
    assert not np.allclose(np.asarray(a[0]), np.asarray(b[0]))  # seeds differ: not vacuous


@pytest.mark.parametrize("mode", BATCHED_MODES)
def test_evaluate_synthetic_modes_equal_loop(mode, problem, separable):
    """evaluate_synthetic's per-seed keys (fold_in(key, i)) are the loop's in every mode."""
    xs, ys, xt, yt = problem
    ref = evaluate.evaluate_synthetic(
        jax.random.key(0), xs, ys, xt, yt, TINY, progress=False, seeds="loop"
    )
    got = separable if mode == "unrolled" else evaluate.evaluate_synthetic(
        jax.random.key(0), xs, ys, xt, yt, TINY, progress=False, seeds=mode
    )
    assert set(got) == set(ref)
    for k in ref:
        if k in ("seconds", "final_losses", "per_seed", "mean", "std"):
            continue
        assert got[k] == ref[k], k
    np.testing.assert_allclose(got["final_losses"], ref["final_losses"], rtol=1e-4)
    np.testing.assert_allclose(got["per_seed"], ref["per_seed"], atol=1.5 / N_TEST)


def _bn_noise(name):
    """Leaves that batch norm makes rounding-sensitive: a conv bias before the norm has an
    exact gradient of 0 (the norm removes the mean), so Adam turns float rounding (~1e-9) into
    steps of up to the learning rate whose sign differs between two XLA programs; the running
    means inherit them. Each differs by at most ~2 * learning rate * steps."""
    return ("Conv_" in name and "bias" in name) or ("batch_stats" in name and "mean" in name)


@pytest.mark.parametrize("mode", BATCHED_MODES)
def test_train_on_synthetic_chunked_equals_loop(mode, problem):
    """One seed, chunked vs the per-step loop, with batch norm's state (``batch_stats``)."""
    xs, ys, _, _ = problem
    proto = dataclasses.replace(EQUIV, norm="batch", num_seeds=1)
    v_loop, m_loop = evaluate.train_on_synthetic(jax.random.key(4), xs, ys, proto, seeds="loop")
    v_new, m_new = evaluate.train_on_synthetic(jax.random.key(4), xs, ys, proto, seeds=mode)
    assert "batch_stats" in v_new
    bound = 2 * proto.learning_rate * proto.steps
    _assert_trees_close(v_new, v_loop, loose=_bn_noise, loose_atol=bound)
    assert set(m_new) == set(m_loop)
    assert [s for s, _ in m_new["loss_log"]] == [s for s, _ in m_loop["loss_log"]]
    np.testing.assert_allclose(m_new["final_loss"], m_loop["final_loss"], rtol=1e-5)


def _many_sets(problem):
    """Three sets, two shapes: A and C have 32 images, B has 16."""
    xs, ys, _, _ = problem
    xc, _ = _quadrants(jax.random.key(11), N_SYN)
    return [(xs, ys), (xs[:16], ys[:16]), (xc, (ys + 1) % C)]


@pytest.mark.parametrize("mode, sets_per_call, calls", [
    ("vmap", None, [2, 1]),      # vmap: every set of a shape in one call
    ("unrolled", 2, [2, 1]),     # two sets x two seeds unrolled in one call
])
def test_evaluate_many_equals_separate_calls(mode, sets_per_call, calls, problem, monkeypatch):
    """evaluate_many == one evaluate_synthetic per set (same key); sets grouped by shape."""
    xt_noisy, yt_noisy = _quadrants(jax.random.key(9), N_TEST, noise=4.0)  # accuracies < 1
    proto = dataclasses.replace(TINY, steps=10)
    sets = _many_sets(problem)
    key = jax.random.key(3)
    separate = [
        evaluate.evaluate_synthetic(key, x, y, xt_noisy, yt_noisy, proto, progress=False,
                                    seeds=mode)
        for x, y in sets
    ]
    seen = []
    real = eval_batched._train_batched

    def spy(keys, x, *args, **kwargs):
        seen.append((len(keys), tuple(x.shape)))
        return real(keys, x, *args, **kwargs)

    monkeypatch.setattr(eval_batched, "_train_batched", spy)
    many = evaluate.evaluate_many(key, sets, xt_noisy, yt_noisy, proto, progress=False,
                                  seeds=mode, sets_per_call=sets_per_call)
    assert [g for _, (g, *_) in seen] == calls
    assert [k for k, _ in seen] == [2 * g for g in calls]  # two seeds per set
    assert sorted(shape[1] for _, shape in seen) == [16, 32]
    assert len(many) == len(sets)
    for got, ref in zip(many, separate):
        assert set(got) == set(ref)
        for k in ("steps", "batch_size", "num_syn", "num_test", "num_classes", "protocol"):
            assert got[k] == ref[k], k
        np.testing.assert_allclose(got["final_losses"], ref["final_losses"], rtol=1e-4)
        np.testing.assert_allclose(got["per_seed"], ref["per_seed"], atol=1.5 / N_TEST)
    # Not vacuous: the three sets give three different results.
    assert len({tuple(r["final_losses"]) for r in many}) == 3
    # One key per set: set j with keys[j] is evaluate_synthetic with keys[j].
    other = jax.random.key(8)
    mixed = evaluate.evaluate_many([other, key, key], sets, xt_noisy, yt_noisy, proto,
                                   progress=False, seeds=mode, sets_per_call=sets_per_call)
    np.testing.assert_allclose(mixed[1]["final_losses"], separate[1]["final_losses"], rtol=1e-4)
    assert mixed[0]["final_losses"] != many[0]["final_losses"]


def test_evaluate_many_checks_every_set_before_training(problem, no_training):
    xs, ys, xt, yt = problem
    bad = xs.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"sets\[1\]: x_syn contains 1 non-finite"):
        evaluate.evaluate_many(jax.random.key(0), [(xs, ys), (bad, ys)], xt, yt, TINY,
                               progress=False)
    with pytest.raises(ValueError, match="2 keys for 1 sets"):
        evaluate.evaluate_many([jax.random.key(0)] * 2, [(xs, ys)], xt, yt, TINY,
                               progress=False)
    with pytest.raises(ValueError, match="sets is empty"):
        evaluate.evaluate_many(jax.random.key(0), [], xt, yt, TINY, progress=False)
    with pytest.raises(ValueError, match="seeds must be one of"):
        evaluate.evaluate_many(jax.random.key(0), [(xs, ys)], xt, yt, TINY, seeds="x")


@pytest.mark.parametrize("mode", BATCHED_MODES)
def test_nonfinite_loss_batched_reports_the_loops_step(mode, problem):
    """A loss that overflows mid-chunk (a huge learning rate; 40 steps -> chunks of 4) raises
    with the same step number as the per-step loop, which stops at the first bad step."""
    xs, ys, xt, yt = problem
    proto = dataclasses.replace(TINY, learning_rate=1e5, warmup_steps=2)
    pattern = r"non-finite training loss .* at step (\d+) of 40"
    with pytest.raises(ValueError, match=pattern) as ref:
        evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, proto, progress=False,
                                    seeds="loop")
    step = int(re.search(pattern, str(ref.value)).group(1))
    assert 0 < step < 40 and step % 4 != 0  # inside a chunk, not at its start
    with pytest.raises(ValueError, match=rf"non-finite training loss .* at step {step} of 40"):
        evaluate.evaluate_synthetic(jax.random.key(0), xs, ys, xt, yt, proto, progress=False,
                                    seeds=mode)


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


# The names the loaders take (mgdd_jax.data.load_dataset), grey digit / character data first.
NO_FLIP_NAMES = ("fashion_mnist", "digits", "glyphs", "glyphs:classes=20,per_class=50",
                 "tfds:mnist", "tfds:fashion_mnist", "tfds:emnist/letters", "tfds:kmnist",
                 "tfds:svhn_cropped")
FLIP_NAMES = ("tfds:cifar10", "tfds:cifar100", "tfds:imagenet_resized/32x32", "tfds:other",
              "npz:/data/x.npz")


@pytest.mark.parametrize("name", NO_FLIP_NAMES)
def test_get_protocol_drops_flip_for_loader_names_of_grey_glyph_data(name):
    for protocol in ("frepo", "cpu"):
        got = evaluate.get_protocol(protocol, name)
        assert got.augment == "color_crop_rotate_translate_cutout", (protocol, name)
        assert dataclasses.replace(got, augment=evaluate.PROTOCOLS[protocol].augment) == \
            evaluate.PROTOCOLS[protocol]


@pytest.mark.parametrize("name", FLIP_NAMES)
def test_get_protocol_keeps_flip_for_natural_images(name):
    assert evaluate.get_protocol("frepo", name) == evaluate.PROTOCOLS["frepo"]
    assert evaluate.get_protocol("frepo") == evaluate.PROTOCOLS["frepo"]


def test_get_protocol_refuses_unknown_protocol():
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

    monkeypatch.setattr(eval_trainer, "_train", fail)
    monkeypatch.setattr(eval_batched, "_train_batched", fail)


def _bad_cases(xs, ys, xt, yt):
    nan_x = xs.copy()
    nan_x[3, 2, 2, 0] = np.nan
    soft = np.asarray(krr.centred_onehot(jnp.asarray(ys), C))
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


# Geometric ops against scipy.ndimage at fixed parameters: bilinear (order=1), edge pixels
# repeated outside the image (mode="nearest"). A non-square image with an odd and an even side
# catches a swapped axis or an off-by-half centre; the match is exact to float32 rounding on
# every pixel, the border included.
IMG = np.asarray(jax.random.normal(jax.random.key(11), (9, 6, 2)), np.float32)
CENTRE = np.array([(IMG.shape[0] - 1) / 2, (IMG.shape[1] - 1) / 2])


def _scipy_affine(image, matrix, offset):
    """scipy's convention: output pixel o reads input ``matrix @ o + offset`` (absolute)."""
    return np.stack(
        [
            ndimage.affine_transform(
                image[..., ch].astype(np.float64), matrix, offset, order=1, mode="nearest"
            )
            for ch in range(image.shape[-1])
        ],
        axis=-1,
    )


@pytest.mark.parametrize(
    "matrix, offset",
    [
        ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
        ([[0.9, 0.3], [-0.2, 1.1]], [0.4, -1.3]),
        ([[1.7, -0.4], [0.5, 0.6]], [3.2, 2.5]),  # reads far outside: edge extension
    ],
)
def test_affine_matches_scipy(matrix, offset):
    """``_affine`` reads ``matrix @ (u - c) + offset + c``: scipy's offset ``c + offset - M c``."""
    m, off = np.array(matrix), np.array(offset)
    got = augment._affine(jnp.asarray(IMG), jnp.asarray(m, jnp.float32), jnp.asarray(off))
    ref = _scipy_affine(IMG, m, CENTRE + off - m @ CENTRE)
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize(
    "zoom, centre", [(1.0, (0.0, 0.0)), (1.25, (0.7, -0.4)), (0.8, (-1.1, 0.3))]
)
def test_apply_crop_matches_scipy(zoom, centre):
    """Window of size H/zoom centred at c + centre: input ``c + centre + (u - c) / zoom``."""
    got = augment.apply_crop(jnp.asarray(IMG), jnp.float32(zoom), jnp.asarray(centre))
    matrix = np.eye(2) / zoom
    ref = _scipy_affine(IMG, matrix, CENTRE + np.array(centre) - CENTRE / zoom)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    if zoom == 1.0:
        np.testing.assert_allclose(got, IMG, atol=1e-6)


@pytest.mark.parametrize("degrees", [0.0, 11.0, -14.5, 90.0])
def test_apply_rotate_matches_scipy(degrees):
    got = augment.apply_rotate(jnp.asarray(IMG), jnp.float32(degrees))
    ref = ndimage.rotate(
        IMG.astype(np.float64), degrees, axes=(1, 0), reshape=False, order=1, mode="nearest"
    )
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (1.3, -0.6), (-0.25, 2.0)])
def test_apply_translate_matches_scipy(shift):
    got = augment.apply_translate(jnp.asarray(IMG), jnp.asarray(shift))
    ref = ndimage.shift(IMG.astype(np.float64), (*shift, 0.0), order=1, mode="nearest")
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_random_geometric_ops_are_apply_at_drawn_params():
    """Each random op is its ``apply_*`` at the parameters its ``*_params`` draws, and the
    parameters stay in FRePo's ranges."""

    @jax.jit
    def both(key, img):
        return {
            "crop": (
                augment.crop_image(key, img),
                augment.apply_crop(img, *augment.crop_params(key, img.shape)),
            ),
            "rotate": (
                augment.rotate_image(key, img),
                augment.apply_rotate(img, augment.rotate_params(key)),
            ),
            "translate": (
                augment.translate_image(key, img),
                augment.apply_translate(img, augment.translate_params(key, img.shape)),
            ),
        }

    for k in range(3):
        for name, (op, applied) in both(jax.random.key(k), jnp.asarray(IMG)).items():
            np.testing.assert_array_equal(op, applied, err_msg=name)

    @jax.jit
    @jax.vmap
    def draw(key):
        return (
            *augment.crop_params(key, IMG.shape),
            augment.rotate_params(key),
            augment.translate_params(key, IMG.shape),
        )

    zoom, centre, degrees, shift = (
        np.asarray(a, np.float64) for a in draw(jax.random.split(jax.random.key(0), 200))
    )
    size = np.array(IMG.shape[:2], np.float64)
    assert 0.8 - 1e-6 <= zoom.min() < 0.85 and 1.2 < zoom.max() <= 1.25 + 1e-6
    # The window stays inside the image when it is smaller than the image (zoom > 1).
    assert np.all(np.abs(centre) <= np.abs(size - size / zoom[:, None]) / 2 + 1e-5)
    assert -15 <= degrees.min() < -13 and 13 < degrees.max() <= 15
    shift = shift / size
    assert np.all(np.abs(shift) <= 0.125 + 1e-6) and np.all(np.abs(shift).max(axis=0) > 0.11)
    assert np.all(shift.min(axis=0) < 0) and np.all(shift.max(axis=0) > 0)


def test_batched_op_uses_one_key_per_sample():
    x = _images()
    keys = jax.random.split(jax.random.key(4), x.shape[0])
    out = JIT["rotate"](jax.random.key(4), x)
    one = jax.jit(augment.rotate_image)
    for i in range(x.shape[0]):
        np.testing.assert_allclose(out[i], one(keys[i], x[i]), rtol=1e-5, atol=1e-5)


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


def test_without_flip():
    assert augment.without_flip(augment.FREPO_STRATEGY) == augment.FREPO_STRATEGY_NO_FLIP
    assert augment.without_flip(augment.FREPO_STRATEGY_NO_FLIP) == augment.FREPO_STRATEGY_NO_FLIP
    assert augment.without_flip("flip") == "none"
    assert augment.without_flip("none") == "none"
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.without_flip("flip_blur")
