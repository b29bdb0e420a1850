"""Test helper: encode arrays as IDX bytes (the inverse of ``mgdd_jax.data.idx.parse_idx``)."""

from __future__ import annotations

import struct

import numpy as np

from mgdd_jax.data.idx import IDX_DTYPES


def encode_idx(array: np.ndarray) -> bytes:
    """Encodes an array as IDX bytes: header (type code, sizes) + big-endian data."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    dtype = IDX_DTYPES[codes[native]]
    header = struct.pack(">BBBB", 0, 0, codes[native], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()
