"""experiments.paper.cross_arch: the benchmark's sets on other architectures (Tab. 4), resumable."""

import json
import os

import numpy as np
import pytest

from experiments.paper import benchmark, cross_arch
from mgdd_jax import evaluation
from tests.launchers.test_benchmark import smoke


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A finished smoke benchmark on digits: random and identity at IPC 1."""
    out = tmp_path_factory.mktemp("bench")
    result = benchmark.run(benchmark.prepare(smoke(out, "random,identity", "1")))
    return out, result


def _final_acc(result, method, ipc):
    rows = [r for r in result["runs"] if r["method"] == method and r["ipc"] == ipc]
    return max(rows, key=lambda r: r["steps"])


def test_convnet_cells_reproduce_the_benchmark_and_others_are_added(bench, tmp_path):
    bench_dir, bench_result = bench
    out = tmp_path / "xa"
    result = cross_arch.run(str(bench_dir), ["random", "identity"], [1], ["convnet", "vgg11"],
                            str(out), variant="smoke")
    assert result["complete"] is True and result["pending"] == []
    assert {(c["method"], c["arch"]) for c in result["cells"]} == {
        (m, a) for m in ("random", "identity") for a in ("convnet", "vgg11")}
    for c in result["cells"]:
        assert c["ipc"] == 1 and 0 <= c["acc_mean"] <= 1 and len(c["per_seed"]) == 2
        if c["arch"] == "convnet":  # the benchmark's keys and protocol: its own figure again
            ref = _final_acc(bench_result, c["method"], 1)
            np.testing.assert_allclose(c["per_seed"], ref["per_seed"], atol=2e-3)
            assert c["set_steps"] == ref["steps"]
    assert sorted(os.listdir(out)) == ["cross_arch.json", "cross_arch.md", "cross_arch.png"]
    on_disk = json.loads((out / "cross_arch.json").read_text())
    assert on_disk["cells"] == json.loads(json.dumps(result["cells"]))
    assert on_disk["eval_protocol"]["network"] == "convnet"
    md = (out / "cross_arch.md").read_text()
    assert "| IPC | method | steps | convnet | vgg11 |" in md
    assert "| 1 | fresh (identity init) |" in md and "Partial" not in md


def test_resume_evaluates_only_new_cells_and_refuses_another_benchmark(bench, tmp_path,
                                                                       monkeypatch):
    bench_dir, _ = bench
    out = tmp_path / "xa"
    calls = []
    real = evaluation.evaluate_synthetic

    def counting(*args, **kwargs):
        calls.append(args[5].network)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_synthetic", counting)
    first = cross_arch.run(str(bench_dir), ["random"], [1], ["convnet"], str(out),
                           variant="smoke")
    second = cross_arch.run(str(bench_dir), ["random"], [1], ["convnet", "alexnet"], str(out),
                            variant="smoke")
    assert calls == ["convnet", "alexnet"]
    assert second["cells"][0] == json.loads(json.dumps(first["cells"][0]))
    assert [c["arch"] for c in second["cells"]] == ["convnet", "alexnet"]
    # A narrower command keeps the wider table's cells.
    third = cross_arch.run(str(bench_dir), ["random"], [1], ["convnet"], str(out),
                           variant="smoke")
    assert calls == ["convnet", "alexnet"] and third["archs"] == ["convnet", "alexnet"]
    # Cells of another benchmark are refused, or replaced with overwrite.
    data = json.loads((out / "cross_arch.json").read_text())
    data["bench"] = "/elsewhere"
    (out / "cross_arch.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another benchmark or config; pass --overwrite"):
        cross_arch.run(str(bench_dir), ["random"], [1], ["convnet"], str(out), variant="smoke")
    cross_arch.run(str(bench_dir), ["random"], [1], ["convnet"], str(out), overwrite=True,
                   variant="smoke")
    assert calls == ["convnet", "alexnet", "convnet"]


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"bench": "/nonexistent-bench"}, FileNotFoundError, "has no benchmark_smoke.json"),
    ({"variant": "cpu"}, FileNotFoundError, "has no benchmark.json"),
    ({"methods": ["frepo"]}, FileNotFoundError, "did not run frepo at IPC 1"),
    ({"ipcs": [2]}, FileNotFoundError, "did not run random at IPC 2"),
])
def test_bad_input_is_refused_before_work(bench, tmp_path, monkeypatch, kwargs, exc, match):
    bench_dir, _ = bench
    monkeypatch.setattr(evaluation, "evaluate_synthetic",
                        lambda *a, **k: pytest.fail("evaluated despite bad input"))
    args = {"bench": str(bench_dir), "methods": ["random"], "ipcs": [1], "archs": ["convnet"],
            "out": str(tmp_path / "xa"), "variant": "smoke", **kwargs}
    with pytest.raises(exc, match=match):
        cross_arch.run(**args)
    assert not (tmp_path / "xa").exists()


def test_bad_files_and_flags_are_refused(bench, tmp_path):
    bench_dir, _ = bench
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is a file"):
        cross_arch.run(str(bench_dir), ["random"], [1], ["convnet"], str(tmp_path / "file"),
                       variant="smoke")
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="lacks .*'labels'.*not a benchmark set"):
        cross_arch.load_set(str(bad))
    with pytest.raises(ValueError, match="unknown architecture"):
        cross_arch.parse_archs("convnet,lenet")
    with pytest.raises(ValueError, match="twice"):
        cross_arch.parse_archs("convnet,convnet")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "benchmark.json").write_text("{}")
    with pytest.raises(ValueError, match="not a benchmark result with a config"):
        cross_arch.benchmark_config(str(broken))


def test_a_set_of_another_shape_is_refused(bench, tmp_path):
    bench_dir, _ = bench
    copy = tmp_path / "bench"
    (copy / "benchmark_smoke_sets").mkdir(parents=True)
    (copy / "benchmark_smoke.json").write_text((bench_dir / "benchmark_smoke.json").read_text())
    np.savez(copy / "benchmark_smoke_sets" / "random_ipc1.npz", images=np.zeros((10, 9, 9, 1)),
             labels=np.zeros((10, 10)), steps=np.int64(0))
    with pytest.raises(ValueError, match=r"holds images \(10, 9, 9, 1\).*but digits has"):
        cross_arch.run(str(copy), ["random"], [1], ["convnet"], str(tmp_path / "xa"),
                       variant="smoke")
