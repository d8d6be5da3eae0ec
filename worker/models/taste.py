"""Taste vectors: users and items in one space, learned online with pairwise (BPR) steps.

A user's vector lives in Redis with the rest of their state; item vectors live here. One
micro-batch is one vectorised update (``np.add.at``), not a Python loop over events.
Items start from their content vector (catalog) so that content-based and collaborative
similarity share one score.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

from worker.models.arrays import grow_rows

__all__ = ["TasteModel"]

F32 = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_INIT_SCALE = 0.1
_BLOCK = 1024
_USER_STARTS = 8192


class TasteModel:
    def __init__(self, dim: int, learning_rate: float, regularization: float, seed: int) -> None:
        self.dim = dim
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.seed = seed
        self.vectors: F32 = np.zeros((0, dim), dtype=np.float32)
        self._ready = 0
        self._user_starts: F32 | None = None
        self._last_block: tuple[int, npt.NDArray[np.float64]] | None = None

    def ensure(self, rows: int) -> None:
        """Give new rows a small random start, the same whatever the batching.

        Starts are drawn in blocks seeded by the block number, so row r always gets the
        same vector however many rows arrived with it (worker and evaluation agree).
        """
        if rows <= self._ready:
            return
        self.vectors = grow_rows(self.vectors, rows)
        first_block, last_block = self._ready // _BLOCK, (rows - 1) // _BLOCK
        for block in range(first_block, last_block + 1):
            start = block * _BLOCK
            fresh = self._block(block)
            begin, end = max(start, self._ready), min(start + _BLOCK, rows)
            self.vectors[begin:end] = fresh[begin - start : end - start]
        self._ready = rows

    def _block(self, block: int) -> npt.NDArray[np.float64]:
        """Initial vectors of one block of rows (the last one is kept: rows arrive in order)."""
        cached = self._last_block
        if cached is not None and cached[0] == block:
            return cached[1]
        rng = np.random.default_rng([self.seed, block])
        fresh: npt.NDArray[np.float64] = rng.standard_normal((_BLOCK, self.dim))
        fresh *= _INIT_SCALE / np.sqrt(self.dim)
        self._last_block = (block, fresh)
        return fresh

    def set_content(self, row: int, vector: F32) -> None:
        """Blend a catalog content vector into the item (a new item takes it whole)."""
        self.ensure(row + 1)
        self.vectors[row] = 0.5 * self.vectors[row] + _INIT_SCALE * vector

    def new_user(self, user_id: str) -> F32:
        """A small random start picked by the user id from a fixed table.

        Seeding a generator per user costs ~17 us; a table lookup costs nothing, and two
        users sharing a start vector only share where they begin.
        """
        starts = self._user_starts
        if starts is None:
            rng = np.random.default_rng([self.seed, -1 % 2**32])
            drawn = rng.standard_normal((_USER_STARTS, self.dim))
            starts = self._user_starts = (drawn * (_INIT_SCALE / np.sqrt(self.dim))).astype(
                np.float32
            )
        start: F32 = starts[zlib.crc32(user_id.encode("utf-8")) % _USER_STARTS].copy()
        return start

    def learn(
        self,
        users: F32,
        user_slot: IntArray,
        positives: IntArray,
        negatives: IntArray,
        weights: FloatArray,
    ) -> None:
        """One BPR step per event: the user prefers ``positive`` to ``negative``.

        ``users`` is the ``[n_users, dim]`` matrix of this batch's user vectors (updated in
        place); ``user_slot[e]`` is event e's row in it; ``weights`` scale each step.
        """
        if user_slot.size == 0:
            return
        self.ensure(int(max(positives.max(), negatives.max())) + 1)
        u = users[user_slot]
        vp = self.vectors[positives]
        vn = self.vectors[negatives]
        difference = vp - vn
        margin = np.einsum("ij,ij->i", u, difference)
        gradient = (weights / (1.0 + np.exp(np.clip(margin, -30, 30)))).astype(np.float32)[:, None]
        rate, reg = np.float32(self.learning_rate), np.float32(self.regularization)
        np.add.at(users, user_slot, rate * (gradient * difference - reg * u))
        np.add.at(self.vectors, positives, rate * (gradient * u - reg * vp))
        np.add.at(self.vectors, negatives, rate * (-gradient * u - reg * vn))

    def scores(self, user: F32, rows: IntArray) -> FloatArray:
        if rows.size == 0:
            return np.zeros(0)
        self.ensure(int(rows.max()) + 1)
        return (self.vectors[rows] @ user).astype(np.float64)
