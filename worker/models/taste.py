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
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from worker.models.arrays import grow_rows
from worker.models.hashing import hashed_normal

__all__ = ["TasteModel"]

F32 = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_INIT_SCALE = 1.0  # unit-scale starts: skip-gram steps move vectors in proportion to them
_USER_START_SCALE = 0.01  # a new user's vector: next to nothing, their first event dominates
_USER_STARTS = 8192
_MAX_NORM = 8.0  # item vectors start near length 1; see TasteModel._bound


class TasteModel:
    def __init__(
        self,
        dim: int,
        learning_rate: float,
        regularization: float,
        seed: int,
        memory: float = 0.9,
        item_ids: Sequence[str] | None = None,
    ) -> None:
        self.dim = dim
        self.memory = memory
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.seed = seed
        self.item_ids: Sequence[str] = item_ids if item_ids is not None else ()
        self.vectors: F32 = np.zeros((0, dim), dtype=np.float32)
        self.content_set: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._pending: dict[int, F32] = {}  # content for rows not started yet
        self._ready = 0
        self._user_starts: F32 | None = None

    def ensure(self, rows: int) -> None:
        """Give new rows a small random start drawn from the item's id.

        The start depends on the item id (and the seed), not on its row, so every worker
        starts an item at the same place however items arrived there, and vectors learned
        from the same deltas stay comparable across workers and restarts.
        """
        if rows <= self._ready:
            return
        rows = max(rows, len(self.item_ids))  # every item known by now, in one go
        self.vectors = grow_rows(self.vectors, rows)
        self.content_set = grow_rows(self.content_set, rows, fill=False)
        ids = self.item_ids
        fresh = [ids[row] if row < len(ids) else str(row) for row in range(self._ready, rows)]
        self.vectors[self._ready : rows] = hashed_normal(fresh, self.dim, self.seed) * (
            _INIT_SCALE / np.sqrt(self.dim)
        )
        begin, self._ready = self._ready, rows
        for row in [r for r in self._pending if begin <= r < rows]:
            self._blend(row, self._pending.pop(row))

    def wants_content(self, row: int) -> bool:
        """Whether :meth:`set_content` would still move the item's vector.

        After a checkpoint restore most items have had theirs: a catalog reload then need
        not compute their content vectors again (most of a 100k-item start-up).
        """
        return row >= self._ready or not bool(self.content_set[row])

    def set_content(self, row: int, vector: F32) -> None:
        """Blend a catalog content vector into the item's start, once (learning moves it on).

        A catalog update of an item already placed (or a reload of the catalog after a
        checkpoint restored the vectors) must not drag a learned vector back.
        """
        if row >= self._ready:  # started in bulk later: a catalog load is 100k upserts
            self._pending[row] = vector
            return
        self._blend(row, vector)

    def _blend(self, row: int, vector: F32) -> None:
        if self.content_set[row]:
            return
        self.vectors[row] = 0.5 * self.vectors[row] + _INIT_SCALE * vector
        self.content_set[row] = True

    def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """The item vectors as a checkpoint keeps them (copies)."""
        return {
            "vectors": self.vectors[: self._ready].copy(),
            "content_set": self.content_set[: self._ready].copy(),
        }

    def load(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        vectors = arrays["vectors"]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"item vectors of dimension {vectors.shape[1:]}, not {self.dim}")
        self.vectors = vectors.astype(np.float32)
        self.content_set = arrays["content_set"].astype(bool)
        self._ready = vectors.shape[0]

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
        self._bound(np.concatenate([sources, targets, negatives]))

    def _bound(self, rows: IntArray) -> None:
        """Cap the length of the rows just moved at ``_MAX_NORM``.

        All of a batch's steps are computed from the vectors as they were before it, so
        a popular item pulled by hundreds of pairs at once takes hundreds of steps in one
        direction: without a cap that overshoots, grows, and ends in overflow (seen in the
        fault suite's busy stream: 1e18 after 17k events, then NaN everywhere).
        """
        touched = np.unique(rows)
        norms = np.linalg.norm(self.vectors[touched], axis=1)
        long = ~(norms <= _MAX_NORM)  # NaN too: such a row restarts from zero
        if long.any():
            scale = np.where(np.isfinite(norms[long]), _MAX_NORM / norms[long], 0.0)
            self.vectors[touched[long]] = np.nan_to_num(
                self.vectors[touched[long]] * scale[:, None].astype(np.float32)
            )

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
