"""The library stands alone: no import of the lab or of JAX internals, and a wheel that holds
the package and its shipped generator, nothing else."""

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
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
    # the shipped v2 generator is package data (opt-in); the benchmark's mgdd row starts from it
    shipped = distill.SHIPPED_META_CHECKPOINT
    assert shipped.startswith(PACKAGE) and os.path.isdir(shipped)
    from mgdd_jax.configs import benchmark
    assert benchmark.get_config("cpu").meta_checkpoint == shipped


def test_the_default_start_and_its_learned_number_load_from_the_package():
    """Issue 30: the default start is the fresh generator at the tuned α = 1e-3, for the main
    job and for fit(meta="default"), in every built-in size."""
    import jax
    import numpy as np

    import mgdd_jax
    from mgdd_jax import api, generator, job

    for variant in ("cpu", "paper", "smoke"):
        config = mgdd_jax.default_config(variant)
        assert config.meta_checkpoint == "" and config.adapt.learning_rate == 1e-3, variant
        assert api._meta_checkpoint(api.META_FROM_CONFIG, config) == ""
    config = mgdd_jax.default_config("cpu")
    fit = job.FitConfig.from_config(config, (1,), config.meta_checkpoint)
    assert fit.meta_checkpoint == "" and fit.adapt.learning_rate == 1e-3
    # the fresh start is exactly the identity map at step 0
    gcfg = generator.GeneratorConfig(**{**config.generator.to_dict(), "image_channels": 1})
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    params = generator.init_generator(jax.random.key(1), (28, 28, 1), gcfg)
    np.testing.assert_array_equal(generator.generate(params, x, 1, gcfg), x)


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


# ------------------------------------------------------------------------------ the tests
# tests/*.py test the library (they mirror mgdd_jax/); the lab's launchers and configs are
# tested in tests/launchers/, the one place that may import experiments.
TESTS = os.path.join(REPO, "tests")
LAB_COMMAND = re.compile(r"-m\s+experiments\b")  # python -m experiments..., in one string
LAB_MODULE = re.compile(r"experiments(\.\w+)+")  # a lab module's name, the whole string
LAB_FILE = re.compile(r"(^|=)experiments/")  # a lab file as an argument: --config=experiments/
LOADERS = ("import_module", "run_module", "run_path", "__import__")


def _library_test_files():
    return sorted(os.path.join(TESTS, f) for f in os.listdir(TESTS) if f.endswith(".py"))


def _lab_strings(path, tmp_path):
    """``(line, text)`` of each string in ``path`` that runs forbidden code: a ``python -m
    experiments...`` command, in one string or as ``"-m", "experiments..."`` in a list or
    tuple; a lab module's name (``"experiments.make_glyphs"``, e.g. a parameter) or file
    (``--config=experiments/configs/...``); a module name given to ``import_module`` or
    ``run_module``; source code (a ``python -c`` script) whose imports ``_imports`` finds
    forbidden."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if (LAB_COMMAND.search(node.value) or LAB_MODULE.fullmatch(node.value)
                    or LAB_FILE.search(node.value)):
                yield node.lineno, node.value
            elif "import" in node.value:
                try:
                    ast.parse(textwrap.dedent(node.value))
                except SyntaxError:
                    continue
                code = tmp_path / f"code_{node.lineno}_{node.col_offset}.py"
                code.write_text(textwrap.dedent(node.value), encoding="utf-8")
                if any(_forbidden(n) for n in _imports(str(code))):
                    yield node.lineno, node.value
        elif isinstance(node, (ast.List, ast.Tuple)):
            for flag, module in zip(node.elts, node.elts[1:]):
                if (isinstance(flag, ast.Constant) and flag.value == "-m"
                        and isinstance(module, ast.Constant) and isinstance(module.value, str)
                        and _forbidden(module.value)):
                    yield module.lineno, module.value
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (name in LOADERS and isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    and _forbidden(arg.value)):
                yield arg.lineno, arg.value


def test_the_lab_string_walk_sees_the_forbidden_forms(tmp_path):
    p = tmp_path / "t.py"
    p.write_text(textwrap.dedent('''
        import runpy, subprocess, sys, textwrap
        subprocess.run([sys.executable, "-m", "experiments.distill", "--config=smoke"])
        subprocess.run("python -m experiments.meta_train --workdir=w", shell=True)
        script = textwrap.dedent("""
            from experiments.configs import meta_glyphs
        """)
        runpy.run_module("experiments.meta_train", run_name="__main__")
        ok = [sys.executable, "-m", "mgdd_jax", "distill", "--config=smoke"]
        also_ok = "python -m mgdd_jax.glyph_corpus" + " the word experiments alone"
        code = "import sys, mgdd_jax.data; print(sys.modules)"
        modules = ["mgdd_jax.glyph_corpus", "experiments.make_glyphs"]
        flags = ["--config=experiments/configs/meta_glyphs.py:smoke", "--config=smoke"]
        said = "experiments" not in "its launchers are in experiments/ (not run here)"
        '''), encoding="utf-8")
    found = sorted({line for line, _ in _lab_strings(str(p), tmp_path)})
    assert found == [3, 4, 5, 8, 12, 13], found
    assert not _forbidden("mgdd_jax")


def test_no_library_test_imports_or_runs_experiments():
    """The library's tests (tests/*.py, helpers and conftest included; not tests/launchers/)
    import nothing from the lab (nor JAX internals), at module level or in a function, and run
    none of it: no ``python -m experiments...`` and no ``python -c`` script that imports it
    (the package's own command, ``python -m mgdd_jax ...``, runs the main job)."""
    files = _library_test_files()
    assert len(files) > 25 and os.path.abspath(__file__) in files
    assert not any(os.sep + "launchers" + os.sep in f for f in files)
    bad = [(os.path.relpath(f, REPO), n) for f in files for n in _imports(f) if _forbidden(n)]
    assert not bad, f"library tests import the lab (move them to tests/launchers/): {bad}"


def test_no_library_test_names_a_lab_command(tmp_path):
    # This file names the forbidden forms as test data (above): its imports are checked, not
    # its strings.
    files = [f for f in _library_test_files() if f != os.path.abspath(__file__)]
    bad = [(os.path.relpath(f, REPO), line, text[:80]) for f in files
           for line, text in _lab_strings(f, tmp_path)]
    assert not bad, f"library tests run the lab (move them to tests/launchers/): {bad}"
