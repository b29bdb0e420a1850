"""experiments.paper.benchmark: one command, every method, resumable; the summary's arithmetic."""

import json
import os

import pytest

from experiments.paper import benchmark
from mgdd_jax.configs import benchmark as benchmark_config
from mgdd_jax import baselines


def smoke(out, methods="random,frepo,identity", ipc="1,2"):
    c = benchmark_config.get_config("smoke")
    c.dataset, c.out, c.methods, c.ipc = "digits", str(out), methods, ipc
    c.adapt.batch_size = 20
    c.feature.depth = 1  # a third of the compile time on XLA:CPU
    c.eval.num_seeds = 2
    return c


def test_smoke_run_writes_every_artefact(tmp_path):
    out = tmp_path / "bench"
    result = benchmark.run(benchmark.prepare(smoke(out, ipc="2")))
    names = set(os.listdir(out))
    assert {"benchmark_smoke.json", "benchmark_smoke.md", "benchmark_smoke_curves.png",
            "benchmark_smoke_samples_ipc2.png"} <= names
    assert {n for n in names if n.startswith(".")} == set()  # no temporary files left
    on_disk = json.loads((out / "benchmark_smoke.json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(result["runs"]))
    keys = {(r["method"], r["ipc"], r["steps"]) for r in on_disk["runs"]}
    assert keys == ({("random", 2, 0)}
                    | {(m, 2, s) for m in ("frepo", "identity") for s in (0, 1, 3)})
    for r in on_disk["runs"]:
        assert {"method", "ipc", "steps", "seconds", "acc_mean", "acc_std"} <= set(r)
        assert 0 <= r["acc_mean"] <= 1 and len(r["per_seed"]) == 2
    assert set(on_disk["summary"]["accuracy"]) == {"random", "frepo", "identity"}
    assert set(on_disk["summary"]["time_to_accuracy"]) == {"2"}  # FRePo is the target
    assert on_disk["complete"] is True and on_disk["pending"] == []
    md = (out / "benchmark_smoke.md").read_text()
    assert "| fresh (identity init) |" in md and "IPC 2" in md


def test_identical_sets_get_identical_accuracies(tmp_path):
    """identity at step 0 is the random set with the labels of its mode: at IPC 1 one-hot."""
    result = benchmark.run(benchmark.prepare(smoke(tmp_path / "b", "random,identity", "1")))
    by = {(r["method"], r["steps"]): r for r in result["runs"]}
    assert by[("identity", 0)]["per_seed"] == by[("random", 0)]["per_seed"]


def test_resume_skips_finished_runs_and_refuses_another_config(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    calls = []
    real = dict(baselines.METHODS)

    def failing(*args):
        raise FloatingPointError("loss is nan")

    def counting(name):
        def fn(*args):
            calls.append(name)
            return real[name](*args)
        return fn

    monkeypatch.setitem(baselines.METHODS, "random", counting("random"))
    monkeypatch.setitem(baselines.METHODS, "identity", failing)
    config = smoke(out, "random,identity", "1")
    with pytest.raises(FloatingPointError):
        benchmark.run(benchmark.prepare(config))
    assert calls == ["random"]
    partial = json.loads((out / "benchmark_smoke.json").read_text())  # what finished so far
    assert partial["complete"] is False and partial["pending"] == [["identity", 1]]
    assert {r["method"] for r in partial["runs"]} == {"random"}
    assert "partial" in (out / "benchmark_smoke.md").read_text()

    other = smoke(out, "random,identity", "1")
    other.adapt.learning_rate = 1e-2
    with pytest.raises(ValueError, match="another config"):
        benchmark.prepare(other)

    monkeypatch.setitem(baselines.METHODS, "identity", counting("identity"))
    result = benchmark.run(benchmark.prepare(config))
    assert calls == ["random", "identity"]  # random came from the earlier results
    assert {r["method"] for r in result["runs"]} == {"random", "identity"}
    assert result["complete"] is True and result["pending"] == []
    # The time of a resumed run adds up over its invocations.
    assert result["seconds_all_invocations"] == pytest.approx(
        partial["seconds_all_invocations"] + result["seconds_this_invocation"])
    assert result["seconds_all_invocations"] > result["seconds_this_invocation"] > 0

    # Nothing left to run: the files are rewritten, the earlier invocations' time is kept.
    again = benchmark.run(benchmark.prepare(config))
    assert calls == ["random", "identity"]
    assert again["seconds_all_invocations"] >= result["seconds_all_invocations"]

    # More IPCs later: the same command with a longer --ipc list runs only what is new.
    result = benchmark.run(benchmark.prepare(smoke(out, "random", "1,2")))
    assert calls == ["random", "identity", "random"]
    assert sorted({(r["method"], r["ipc"]) for r in result["runs"]}) == [
        ("identity", 1), ("random", 1), ("random", 2)]
    assert result["complete"] is False and result["pending"] == [["identity", 2]]


@pytest.mark.parametrize("change, match", [
    ({"methods": "random,,identity"}, "empty item"),
    ({"methods": "random,dc"}, "unknown method"),
    ({"methods": "random,random"}, "twice"),
    ({"snapshot_steps": "0,10,5"}, "strictly increasing"),
    ({"snapshot_steps": "0,ten"}, "comma list of integers"),
    ({"ipc": "1,500"}, "IPC=500 is larger than"),
    ({"dataset": "nope"}, "unknown dataset"),
])
def test_bad_config_is_refused_before_work(tmp_path, change, match):
    c = smoke(tmp_path / "b")
    for k, v in change.items():
        setattr(c, k, v)
    with pytest.raises(ValueError, match=match):
        benchmark.prepare(c)
    assert not (tmp_path / "b").exists()


def test_results_of_another_config_need_overwrite(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "benchmark_smoke.json").write_text("{}")
    with pytest.raises(ValueError, match="another config; pass --overwrite"):
        benchmark.prepare(smoke(out))
    c = smoke(out)
    c.overwrite = True
    benchmark.prepare(c)


def test_long_adds_the_2000_step_snapshot():
    assert benchmark.parse_steps("0,500,1000", True) == (0, 500, 1000, 2000)
    assert benchmark.parse_steps("0,500,1000", False) == (0, 500, 1000)


def _run(method, ipc, steps, seconds, acc, **timing):
    return {"method": method, "ipc": ipc, "steps": steps, "seconds": seconds,
            "acc_mean": acc, "acc_std": 0.01, "per_seed": [acc], "timing": timing}


def test_summary_time_to_accuracy_and_new_ipc_cost():
    runs = [
        _run("random", 10, 0, 0.1, 0.70),
        _run("frepo", 10, 0, 1.0, 0.70), _run("frepo", 10, 100, 50.0, 0.78),
        _run("frepo", 10, 1000, 500.0, 0.80),
        _run("mgdd", 10, 0, 20.0, 0.72), _run("mgdd", 10, 100, 45.0, 0.805),
        _run("mgdd", 10, 1000, 300.0, 0.82, warm_generation_s=0.05, label_solve_s=18.0,
             distill_s=281.9, generation_s=0.1),
        _run("identity", 10, 0, 20.0, 0.72), _run("identity", 10, 1000, 300.0, 0.79),
    ]
    s = benchmark.summarise(runs, 1000, "fashion_mnist")
    t = s["time_to_accuracy"]["10"]
    assert t["target_acc"] == 0.80
    assert t["reached"]["frepo"] == {"steps": 1000, "seconds": 500.0}
    assert t["reached"]["mgdd"] == {"steps": 100, "seconds": 45.0}
    assert t["reached"]["identity"] is None and t["reached"]["random"] is None
    assert t["frepo_over_mgdd"] == pytest.approx(500.0 / 45.0)
    assert s["new_ipc_cost"]["10"]["ratio"] == pytest.approx(500.0 / 0.05)
    assert s["accuracy"]["mgdd"]["10"]["paper"] == 83.4
    assert s["accuracy"]["random"]["10"]["steps"] == 0
    assert s["timing"]["mgdd"]["10"]["label_solve_s"] == 18.0
    assert benchmark.summarise(runs, 1000, "digits")["accuracy"]["mgdd"]["10"]["paper"] is None
    # The paper's figures are at 28x28: none beside a run resized to another resolution.
    assert benchmark.summarise(runs, 1000, "fashion_mnist", "krr", 28)["accuracy"]["mgdd"][
        "10"]["paper"] == 83.4
    assert benchmark.summarise(runs, 1000, "fashion_mnist", "krr", 64)["accuracy"]["mgdd"][
        "10"]["paper"] is None
    md = benchmark.markdown({"summary": s, "ipcs": [10], "methods": ["random", "frepo", "mgdd"],
                             "eval_protocol": {"num_seeds": 3, "name": "cpu"},
                             "dataset": "fashion_mnist", "variant": "cpu", "device": "cpu"})
    assert "82.0 ± 1.0 (83.4)" in md and "11.1×" in md and "10000×" in md
    # With another adaptation objective (Tab. 3) the paper's KRR figures are not shown.
    s_dm = benchmark.summarise(runs, 1000, "fashion_mnist", "dm")
    assert s_dm["accuracy"]["mgdd"]["10"]["paper"] is None
    md_dm = benchmark.markdown({"summary": s_dm, "ipcs": [10], "methods": ["mgdd"],
                                "eval_protocol": {"num_seeds": 3, "name": "cpu"},
                                "config": {"adapt": {"objective": "dm"}},
                                "dataset": "fashion_mnist", "variant": "cpu", "device": "cpu"})
    assert "Adaptation objective: **dm**" in md_dm and "(83.4)" not in md_dm
    assert "Adaptation objective" not in md
