"""The one check that a config (or one of its subtrees) holds exactly the expected keys.

The library's config dataclasses have no defaults, so a config must name every field, and a
misspelled field must not pass silently: :func:`check_keys` refuses both with one line.
"""

from __future__ import annotations

from collections.abc import Iterable


def check_keys(given: Iterable[str], expected: Iterable[str], what: str, hint: str) -> None:
    """Refuse ``given`` unless it is exactly the set ``expected``.

    Args:
      given: the keys a config holds (a mapping, a ``ConfigDict`` or its ``keys()``).
      expected: the keys it must hold, no more and no fewer.
      what: what holds them, as the message names it (e.g. ``"config.meta"``).
      hint: what to do about it, the message's last clause.

    Raises:
      ValueError: one line, ``"{what}: unknown fields [...], missing fields [...]; {hint}"``
        (each list sorted, and named only when it is not empty).
    """
    given, expected = set(given), set(expected)
    unknown, missing = sorted(given - expected, key=str), sorted(expected - given, key=str)
    if not (unknown or missing):
        return
    found = [f"{name} fields {keys}" for name, keys in (("unknown", unknown),
                                                        ("missing", missing)) if keys]
    raise ValueError(f"{what}: {', '.join(found)}; {hint}")
