"""A small data-only container for model deltas and checkpoints: JSON plus raw arrays.

Model state crosses process boundaries twice (deltas on the ``tailor.model`` topic,
checkpoints in Redis) and is read back by other processes, possibly of another version.
Pickle would run whatever code the bytes name, so the format is plain data instead:

    b"TLRF" | u32 header length | JSON header | array bytes | u32 CRC-32 of all before

The header names the frame's kind and format version, free-form metadata, and each
array's dtype (from a short whitelist), shape and place in the body. Reading checks the
magic, the checksum, the kind, the version and that every array lies inside the body, so
a truncated, corrupt or foreign frame raises :class:`FrameError` and is never half-read.
Checkpoints compress the body (zlib level 1: a few hundred MB/s, about 3x smaller here).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

__all__ = ["FORMAT_VERSION", "FrameError", "pack", "unpack"]

#: Bumped whenever a reader of the previous version would misread a frame.
FORMAT_VERSION = 1
_MAGIC = b"TLRF"
_DTYPES = frozenset({"<i4", "<i8", "<f4", "<f8", "|u1", "|b1"})
_U32 = struct.Struct("<I")


class FrameError(ValueError):
    """The bytes are not a complete, intact frame of the expected kind and version."""


def pack(
    kind: str,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray[Any, Any]],
    *,
    compress: bool = False,
) -> bytes:
    """Serialise ``arrays`` (little-endian, C order) with ``meta`` under ``kind``."""
    layout: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, array in arrays.items():
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        dtype = data.dtype.str
        if dtype not in _DTYPES:
            raise TypeError(f"array {name!r} has dtype {dtype}, not one a frame can hold")
        raw = data.tobytes()
        layout.append({"name": name, "dtype": dtype, "shape": list(data.shape), "at": offset})
        chunks.append(raw)
        offset += len(raw)
    body = b"".join(chunks)
    if compress:
        body = zlib.compress(body, 1)
    header = orjson.dumps(
        {
            "kind": kind,
            "version": FORMAT_VERSION,
            "compressed": compress,
            "size": offset,
            "meta": dict(meta),
            "arrays": layout,
        }
    )
    framed = b"".join((_MAGIC, _U32.pack(len(header)), header, body))
    return framed + _U32.pack(zlib.crc32(framed))


def unpack(data: bytes, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """``(meta, arrays)`` of a frame of ``kind``; raises :class:`FrameError` otherwise.

    Arrays are read-only views of ``data`` (copy before changing them).
    """
    if len(data) < len(_MAGIC) + 2 * _U32.size or not data.startswith(_MAGIC):
        raise FrameError("not a Tailor model frame (bad magic or too short)")
    (checksum,) = _U32.unpack_from(data, len(data) - _U32.size)
    if zlib.crc32(memoryview(data)[: -_U32.size]) != checksum:
        raise FrameError("checksum mismatch: the frame is truncated or corrupt")
    (header_size,) = _U32.unpack_from(data, len(_MAGIC))
    start = len(_MAGIC) + _U32.size
    try:
        header = orjson.loads(data[start : start + header_size])
        found_kind, version = header["kind"], header["version"]
        body = data[start + header_size : -_U32.size]
        if header["compressed"]:
            body = zlib.decompress(body)
        size, meta, layout = int(header["size"]), dict(header["meta"]), list(header["arrays"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, zlib.error) as error:
        raise FrameError(f"unreadable frame header or body: {error}") from None
    if found_kind != kind:
        raise FrameError(f"a {found_kind!r} frame where a {kind!r} one was expected")
    if version != FORMAT_VERSION:
        raise FrameError(f"format version {version}, this worker reads {FORMAT_VERSION}")
    if len(body) != size:
        raise FrameError(f"body holds {len(body)} bytes, the header says {size}")
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for entry in layout:
        try:
            name, dtype_name = str(entry["name"]), entry["dtype"]
            if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
                raise ValueError(f"dtype {dtype_name!r} not allowed")
            dtype = np.dtype(dtype_name)
            shape = tuple(int(n) for n in entry["shape"])
            at = int(entry["at"])
        except (KeyError, TypeError, ValueError) as error:
            raise FrameError(f"bad array entry {entry!r}: {error}") from None
        count = 1
        for n in shape:  # Python ints: a crafted shape cannot overflow to a small count
            count *= n
        if min(shape, default=0) < 0 or at < 0 or at + count * dtype.itemsize > size:
            raise FrameError(f"array {name!r} has a bad shape or runs past the body")
        arrays[name] = np.frombuffer(body, dtype, count, at).reshape(shape)
    return meta, arrays
