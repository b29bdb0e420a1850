"""Helpers shared by the library's tests (tests/*.py) and the launchers' (tests/launchers/).

Library code only: this module imports nothing from ``experiments`` (tests/test_package.py
checks every tests/*.py, this one too).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mgdd_jax import checkpoint, meta_train
from mgdd_jax import generator as gen
from mgdd_jax.configs import meta as meta_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------ meta-training
# The smoke config's generator on grey 8x8 digits.
SMOKE_GEN = gen.GeneratorConfig(width=4, embed_dim=8, embed_channels=2, image_channels=1)


def meta_smoke_config(steps, *, val=False, **meta_overrides):
    """The smoke config (mgdd_jax/configs/meta.py:smoke) on digits; the validation bank off
    unless ``val`` (it costs each run a compile; the SIGTERM/resume test keeps it on and
    checks its rows)."""
    c = meta_config.get_config("smoke")
    c.source = "digits"
    c.meta.steps = steps
    c.meta.update(meta_overrides)
    if not val:
        c.val.tasks = 0
    return c


def run_meta(config, workdir, **kw):
    """``meta_train.train(meta_train.prepare(config, workdir), **kw)``."""
    return meta_train.train(meta_train.prepare(config, str(workdir)), **kw)


def final_meta_params(workdir):
    """``(step, params, meta)`` of the latest checkpoint of a smoke run's workdir."""
    step, _ = checkpoint.read_meta(os.path.join(workdir, "checkpoints"))
    params, meta_json = checkpoint.load_generator(os.path.join(workdir, "checkpoints"),
                                                  SMOKE_GEN, (8, 8, 1))
    return step, params, meta_json


# ------------------------------------------------------------------------------ multi-host
def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multihost_env(devices, write_log, cache):
    """The environment of one multi-host test process: ``devices`` CPU devices, loopback
    only, a shared compilation cache, ``$MGDD_WRITE_LOG`` for the launcher's worker."""
    env = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower()}  # loopback only
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                         # compile time dominates these runs; same flags for every process
                         "--xla_backend_optimization_level=0 "
                         "--xla_llvm_disable_expensive_passes=true",
               JAX_PLATFORMS="cpu", MGDD_WRITE_LOG=str(write_log),
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")])),
               # One compilation cache for this module's processes: the step is compiled
               # once per topology (the CPU compiles dominate these runs), not per launch.
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def write_tiny_npz_source(path):
    """10 classes of 24 random 8x8 grey images (the tasks need 8 per class) -> ``path``."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 24)
    x = rng.integers(0, 256, (len(y), 8, 8), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    return path


MULTIHOST_TIMEOUT = 100  # seconds for any one subprocess


class Procs:
    """The subprocesses of one test: started with logs, waited with timeouts, killed.

    ``python -c CODE ARGS``, or ``python WORKER ARGS`` where a ``worker`` script is given
    (the launchers' tests subclass this with theirs)."""

    def __init__(self, tmp_path, cache, worker=None):
        self.tmp_path, self.cache, self.worker, self.started = tmp_path, cache, worker, []

    def start(self, name, args, *, port, devices=2, code=None):
        """``python WORKER ARGS`` (the launcher), or ``python -c CODE ARGS``; a coordinator
        started by it listens on 127.0.0.1:port only (jax's default: every interface)."""
        log = self.tmp_path / f"{name}.log"
        program = [self.worker] if code is None else ["-c", code]
        env = multihost_env(devices, self.tmp_path / f"{name}.writes", self.cache)
        env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
        with open(log, "w") as out:
            p = subprocess.Popen([sys.executable, *program, *args], cwd=REPO, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=env)
        p.name, p.log, p.writes = name, log, self.tmp_path / f"{name}.writes"
        self.started.append(p)
        return p

    def wait(self, procs, timeout=MULTIHOST_TIMEOUT):
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{p.name} still running after {timeout}s:\n{self.tails()}")
        return [p.returncode for p in procs]

    def kill(self):
        for p in self.started:
            if p.poll() is None:
                p.kill()  # by pid: only what this test started
                p.wait(timeout=30)

    def tails(self):
        return "\n".join(f"--- {p.name}:\n{p.log.read_text()[-2500:]}" for p in self.started)


# ------------------------------------------------------------------------------ glyph corpus
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
TEST_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf")

needs_test_fonts = pytest.mark.skipif(
    not all((DEJAVU / f).is_file() for f in TEST_FONTS),
    reason="needs the DejaVu fonts (apt-get install fonts-dejavu-core)",
)


def link_test_fonts(directory: Path) -> Path:
    """``directory`` holding (links to) the three test fonts."""
    for name in TEST_FONTS:
        (directory / name).symlink_to(DEJAVU / name)
    return directory


def check_make_glyphs_cli(module: str, tmp_path: Path, font_dir: Path) -> None:
    """``python -m MODULE`` builds a tiny corpus from ``font_dir`` and refuses a font
    directory without fonts (exit 2, one error, nothing written)."""
    from mgdd_jax.data import glyphs

    out = tmp_path / "cli.npz"
    run = subprocess.run(
        [sys.executable, "-m", module, f"--font_dirs={font_dir}",
         "--num_classes=3", "--per_class=2", "--image_size=8", f"--out={out}"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert run.returncode == 0, run.stderr
    assert "fonts: 3" in run.stderr and "classes available:" in run.stderr
    assert f"wrote {out}" in run.stderr
    assert "rendering classes [" in run.stderr and "3/3" in run.stderr  # progress.Progress
    loaded, manifest = glyphs.load_corpus(out)
    assert loaded.masks.shape == (6, 8, 8) and manifest["seed"] == 0
    bad = subprocess.run(
        [sys.executable, "-m", module, f"--font_dirs={tmp_path / 'none'}",
         f"--out={tmp_path / 'x.npz'}"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "fonts-noto-core" in bad.stderr
    assert not (tmp_path / "x.npz").exists()
