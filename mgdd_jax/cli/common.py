"""What every launcher shares: one-line errors with exit status 2, and quiet library logs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from mgdd_jax import outputs

# What validation raises for bad input (unknown dataset, missing files, IPC too large, ...).
BAD_INPUT = (ValueError, FileNotFoundError, ImportError)


@contextlib.contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Turn a bad-input exception into ``error: ...`` on stderr and exit status 2."""
    try:
        yield
    except BAD_INPUT as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def exit_on_failed_run(out: str) -> Iterator[None]:
    """A numerical failure mid-run (a NaN loss, ...) ends in one line and exit status 1.

    The launchers write their results atomically, so the line can say that ``out`` was left
    as it was. Any other exception keeps its traceback (it is a bug, not bad input).
    """
    try:
        yield
    except FloatingPointError as e:
        print(f"error: {e} Nothing was written: {out} was left as it was.", file=sys.stderr)
        sys.exit(1)


def apply_shorthands(config: Any, shorthands: tuple[tuple[str, str], ...]) -> Any:
    """Set each ``(flag, config.path)`` shorthand flag that was given on the locked ``config``.

    The config stays locked, so a shorthand can only set a field that exists, with its type.
    """
    from absl import flags

    for flag, path in shorthands:
        value = flags.FLAGS[flag].value
        if value is not None:
            *parents, last = path.split(".")
            node = config
            for part in parents:
                node = node[part]
            setattr(node, last, value)
    return config


def quiet_library_logs() -> None:
    """Keep the launchers' output to their own stage and progress lines.

    orbax logs every checkpoint step at INFO through absl; only warnings and errors of the
    libraries are shown.
    """
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def write_result(out: str, stem: str, result: dict[str, Any],
                 plot: Callable[[dict[str, Any], str], None]) -> None:
    """An experiment's ``<stem>.json`` and its ``<stem>.png``, written into ``out`` at once."""
    with outputs.atomic_dir(out) as tmp:
        outputs.write_json(os.path.join(tmp, f"{stem}.json"), result)
        plot(result, os.path.join(tmp, f"{stem}.png"))
    print(f"wrote {out}/{stem}.json and {stem}.png", file=sys.stderr)


def write_summary(out: str, stem: str, result: dict[str, Any],
                  markdown: Callable[[dict[str, Any]], str],
                  plot: Callable[[dict[str, Any], str], None]) -> None:
    """A resumable study's ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` beside its cells in
    ``out`` (each file atomically; ``out`` itself is kept, unlike :func:`write_result`), and
    the table on stderr."""
    table = markdown(result)
    outputs.write_json(os.path.join(out, f"{stem}.json"), result)
    outputs.write_text(os.path.join(out, f"{stem}.md"), table)
    plot(result, os.path.join(out, f"{stem}.png"))
    print(table, file=sys.stderr)


def with_config_names(argv: list[str], config_file: str, flag: str = "config") -> list[str]:
    """``--config=NAME`` (a variant such as ``smoke`` or ``size=paper,eval=cpu``, no ``.py`` in
    it) -> ``--config=<config_file>:NAME``; a file path (``x.py`` or ``x.py:variant``) is kept.

    So ``--config=paper`` names a built-in variant of the launcher's config file.
    """
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        for prefix in (f"--{flag}=", f"-{flag}="):
            if a.startswith(prefix) and ".py" not in a[len(prefix):]:
                a = f"--{flag}={config_file}:{a[len(prefix):]}"
        if a in (f"--{flag}", f"-{flag}") and i + 1 < len(argv) and ".py" not in argv[i + 1]:
            a, i = f"--{flag}={config_file}:{argv[i + 1]}", i + 1
        out.append(a)
        i += 1
    return out

