"""Exceptions raised by :mod:`mgdd_jax.data`."""

from __future__ import annotations


class DatasetNotFoundError(ValueError):
    """The files of a dataset could not be found (or are not prepared).

    A :class:`ValueError` subclass so that callers validating user input with a
    single ``except ValueError`` also catch it. The message always names every
    location that was searched and how to make the data available.
    """
