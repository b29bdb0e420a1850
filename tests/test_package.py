"""The library stands alone: no import of the lab or of JAX internals, and a wheel that holds
the package and its shipped generator, nothing else."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "mgdd_jax")
FORBIDDEN = ("experiments", "jax._src")


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _forbidden(name):
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def _library_files():
    for root, _, files in os.walk(PACKAGE):
        yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))


def test_the_import_walk_sees_the_forbidden_forms(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import experiments.cli\nfrom jax._src import distributed\n"
                 "def f():\n    from experiments import distill\n"
                 "from jax import _src\nimport jax.numpy\n")
    found = [n for n in _imports(str(p)) if _forbidden(n)]
    assert sorted(found) == sorted(["experiments.cli", "jax._src", "jax._src.distributed",
                                    "jax._src", "experiments", "experiments.distill"])
    assert not _forbidden("jax.numpy") and not _forbidden("experimentsx")


def test_no_library_module_imports_experiments_or_jax_internals():
    files = list(_library_files())
    assert len(files) > 30
    bad = [(os.path.relpath(f, REPO), n) for f in files for n in _imports(f) if _forbidden(n)]
    assert not bad, f"library modules import the lab or JAX internals: {bad}"


def test_library_defaults_come_from_the_package():
    import mgdd_jax
    from mgdd_jax.configs import distill

    config = mgdd_jax.default_config("smoke")
    assert config.adapt.steps == distill.get_config("smoke").adapt.steps
    shipped = distill.get_config("cpu").meta_checkpoint
    assert shipped.startswith(PACKAGE) and os.path.isdir(shipped)


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_its_generator_only(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    (wheel,) = list(out.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"mgdd_jax", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assets = [n for n in names if n.startswith("mgdd_jax/assets/meta_generator/")]
    assert any(n.endswith("/params/manifest.ocdbt") for n in assets)
    assert any(n.endswith("/meta/metadata") for n in assets)
    assert not [n for n in names if "opt_state" in n or "results/" in n or "/v1/" in n]
    assert "mgdd_jax/configs/distill.py" in names and "mgdd_jax/py.typed" in names


def test_the_console_script_is_declared():
    from importlib import metadata

    (ep,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "mgdd-jax"]
    assert ep.value == "mgdd_jax.cli:main"


@pytest.mark.slow
@pytest.mark.parametrize("command", [[sys.executable, "-m", "mgdd_jax"], ["mgdd-jax"]])
def test_the_installed_command_runs_the_main_job_on_smoke(tmp_path, command):
    if command == ["mgdd-jax"] and shutil.which("mgdd-jax") is None:
        pytest.skip("the console script is on PATH only after pip install")
    out = tmp_path / "run"
    res = subprocess.run([*command, "distill", "--config=smoke", "--dataset=digits", "--ipc=2",
                          "--config.eval.enabled=False", f"--out={out}"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "ipc2.npz").is_file()
    bad = subprocess.run([*command, "distil"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'distil'" in bad.stderr
