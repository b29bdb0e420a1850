"""Reader for IDX files (the MNIST / Fashion-MNIST container format).

Layout: two zero bytes, a type code, the number of dimensions ``k``, then ``k``
big-endian uint32 sizes, then the row-major big-endian data. Files ending in
``.gz`` are decompressed with :mod:`gzip`.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """An IDX file is corrupt, truncated or not an IDX file."""


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise IdxFormatError(
            f"{path} is not a valid gzip file or is truncated ({e}); delete it and "
            "reinstall / re-download the dataset"
        ) from e


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an (uncompressed) IDX file.

    Args:
      data: the file contents.
      source: name used in error messages.

    Returns:
      The array, in native byte order, with the shape from the header.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{source}: only {len(data)} bytes, too short for an IDX header")
    zero0, zero1, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{source}: bad IDX magic number {data[:4].hex()} (expected 0000 followed by a "
            f"type code in {sorted(IDX_DTYPES)} and a dimension count >= 1); the file is "
            "corrupt or not an IDX file"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(f"{source}: truncated IDX header ({ndim} dimensions declared)")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        raise IdxFormatError(
            f"{source}: header declares shape {shape} ({expected} data bytes) but the file "
            f"holds {actual} data bytes; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzip-compressed if its name ends in ``.gz``)."""
    return parse_idx(_read_bytes(path), source=str(path))

