"""Taste vectors: items placed by who touches them together, users by what they touched.

Item vectors are learned online with skip-gram steps over each user's history (item2vec:
two items one person liked move together, a popular item they did not take moves away),
starting from their catalog content vector, so a brand-new item already sits among items
that read alike. A user's vector is a decayed sum of the item vectors of what they
touched, kept in Redis with the rest of their state and updated after every event: the
long-term taste that co-visitation, which pairs items within a session, does not see.
One micro-batch is one vectorised update (``np.add.at``), not a Python loop over events.
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

_INIT_SCALE = 1.0  # unit-scale starts: skip-gram steps move vectors in proportion to them
_USER_START_SCALE = 0.01  # a new user's vector: next to nothing, their first event dominates
_BLOCK = 1024
_USER_STARTS = 8192


class TasteModel:
    def __init__(
        self,
        dim: int,
        learning_rate: float,
        regularization: float,
        seed: int,
        memory: float = 0.9,
    ) -> None:
        self.dim = dim
        self.memory = memory
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
        """Blend a catalog content vector into the item's start (learning moves it on)."""
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
            starts = self._user_starts = (drawn * (_USER_START_SCALE / np.sqrt(self.dim))).astype(
                np.float32
            )
        start: F32 = starts[zlib.crc32(user_id.encode("utf-8")) % _USER_STARTS].copy()
        return start

    def learn_pairs(
        self, sources: IntArray, targets: IntArray, negatives: IntArray, weights: FloatArray
    ) -> None:
        """One skip-gram step per pair (item2vec): items one user touched move together.

        Each ``source`` is pulled toward its ``target`` and pushed from a ``negative``
        drawn by the caller (popular items: the hard ones), all pairs of a micro-batch in
        one vectorised update. Pairs span a user's history, not only a session, so the
        vectors carry long-term taste where co-visitation carries the session.
        """
        if sources.size == 0:
            return
        self.ensure(int(max(sources.max(), targets.max(), negatives.max())) + 1)
        vs, vt, vn = self.vectors[sources], self.vectors[targets], self.vectors[negatives]
        pull = weights / (1.0 + np.exp(np.clip(np.einsum("ij,ij->i", vs, vt), -30, 30)))
        push = -weights / (1.0 + np.exp(np.clip(-np.einsum("ij,ij->i", vs, vn), -30, 30)))
        rate, reg = np.float32(self.learning_rate), np.float32(self.regularization)
        pull32, push32 = pull.astype(np.float32)[:, None], push.astype(np.float32)[:, None]
        np.add.at(self.vectors, sources, rate * (pull32 * vt + push32 * vn - reg * vs))
        np.add.at(self.vectors, targets, rate * (pull32 * vs - reg * vt))
        np.add.at(self.vectors, negatives, rate * (push32 * vs - reg * vn))

    def fold(self, users: F32, user_slot: IntArray, rows: IntArray, signs: FloatArray) -> None:
        """Fold each event's item into its user's vector: a decayed sum of unit vectors.

        ``u <- memory * u + sign * v / |v|`` in event order, so a user's vector is their
        history weighted toward the latest items (dislikes push away); one vectorised
        step per pass over the batch's events.
        """
        if user_slot.size == 0:
            return
        self.ensure(int(rows.max()) + 1)
        items = self.vectors[rows]
        units = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
        # Events of one user arrive in order; fold them one position at a time.
        order = np.argsort(user_slot, kind="stable")
        _, first = np.unique(user_slot[order], return_index=True)
        position = np.arange(order.size) - np.repeat(first, np.diff(np.append(first, order.size)))
        memory = np.float32(self.memory)
        for step in range(int(position.max()) + 1):
            at = order[position == step]
            users[user_slot[at]] = memory * users[user_slot[at]] + (
                signs[at].astype(np.float32)[:, None] * units[at]
            )

    def scores(self, user: F32, rows: IntArray) -> FloatArray:
        if rows.size == 0:
            return np.zeros(0)
        self.ensure(int(rows.max()) + 1)
        return (self.vectors[rows] @ user).astype(np.float64)
