"""Random draws that depend only on a key: the same in every worker, without a generator.

Item vectors start from their item id, so that every worker, every restart and every
replay places an item alike. Seeding a numpy generator per key costs tens of
microseconds; a counter-based hash of the key and the coordinate costs nothing per key
once vectorised, which matters when a catalog of 100k items starts at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["hashed_normal"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hashed_normal(keys: Sequence[str], dim: int, seed: int) -> npt.NDArray[np.float64]:
    """``[len(keys), dim]`` standard normal draws that depend only on each key and the seed.

    A counter-based generator (SplitMix64 over hash(key) and the coordinate, then
    Box-Muller): vectorised, so 100k items cost milliseconds rather than a seeded
    generator each.
    """
    hashes = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
            for key in keys
        ),
        dtype=np.uint64,
        count=len(keys),
    )
    with np.errstate(over="ignore"):
        state = hashes[:, None] ^ (
            (np.arange(dim, dtype=np.uint64)[None, :] + np.uint64(seed % 2**32) * np.uint64(dim))
            * _GOLDEN
        )
        state = state + _GOLDEN
        state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        state = state ^ (state >> np.uint64(31))
    high = ((state >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    low = ((state & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0**32
    normal: npt.NDArray[np.float64] = np.sqrt(-2.0 * np.log(high)) * np.cos(2.0 * np.pi * low)
    return normal
