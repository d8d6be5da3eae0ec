"""Item-to-item co-occurrence alone: "bought together with what you just bought"."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix

from worker.contract import Event
from worker.evaluate.baselines.common import (
    BaselineBase,
    FloatArray,
    Session,
    decay_weights,
    top_rows,
)

__all__ = ["Cooccurrence", "SparseRows"]

#: Pending cells merged into the CSR base at once: at least this many, and at least
#: 1/_MERGE_SHARE of the base, so merging costs O(_MERGE_SHARE) per cell over a run.
_MIN_MERGE = 20_000
_MERGE_SHARE = 8


class SparseRows:
    """A growing square count matrix: a CSR base plus a dict of recent additions.

    A dense matrix would be n_items**2 floats (fine for 4k items, not for 200k), and a dict
    of dicts is too slow to sum per request; so rows are read from CSR slices (numpy) plus
    the small pending dict, and the pending part is merged when it reaches a fixed share
    of the base, which keeps merging amortised O(1) per added pair.
    """

    def __init__(self) -> None:
        self._base: csr_matrix = csr_matrix((0, 0), dtype=np.float64)
        self._pending: dict[int, dict[int, float]] = {}
        self._pending_count = 0
        self._merge_at = _MIN_MERGE
        self._size = 0

    def add_pairs(self, row: int, partners: Sequence[int]) -> None:
        """Count ``row`` with each partner, both ways (co-occurrence is symmetric)."""
        pending = self._pending
        cells = pending.get(row)
        if cells is None:
            cells = pending[row] = {}
        added = 0
        for partner in partners:
            added += partner not in cells
            cells[partner] = cells.get(partner, 0.0) + 1.0
            other = pending.get(partner)
            if other is None:
                other = pending[partner] = {}
            added += row not in other
            other[row] = other.get(row, 0.0) + 1.0
        self._size = max(self._size, row + 1, max(partners, default=0) + 1)
        self._pending_count += added
        if self._pending_count >= self._merge_at:
            self._merge()

    def accumulate(self, row: int, weight: float, into: FloatArray) -> None:
        """``into += weight * matrix[row]`` (``into`` must be as long as the matrix)."""
        base = self._base
        if row < len(base.indptr) - 1:
            start, end = base.indptr[row], base.indptr[row + 1]
            into[base.indices[start:end]] += weight * base.data[start:end]
        cells = self._pending.get(row)
        if cells:
            cols = np.fromiter(cells.keys(), dtype=np.int64, count=len(cells))
            values = np.fromiter(cells.values(), dtype=np.float64, count=len(cells))
            into[cols] += weight * values

    def _merge(self) -> None:
        size = self._size
        lengths = [len(cells) for cells in self._pending.values()]
        rows = np.repeat(np.fromiter(self._pending.keys(), dtype=np.int64), lengths)
        cols = np.fromiter(
            (col for cells in self._pending.values() for col in cells), dtype=np.int64
        )
        values = np.fromiter(
            (value for cells in self._pending.values() for value in cells.values()),
            dtype=np.float64,
        )
        base = self._base
        indptr = np.concatenate(
            [base.indptr, np.full(size - base.shape[0], base.indptr[-1], dtype=base.indptr.dtype)]
        )
        grown = csr_matrix((base.data, base.indices, indptr), shape=(size, size))
        added = coo_matrix((values, (rows, cols)), shape=(size, size)).tocsr()
        self._base = csr_matrix(grown + added)
        self._pending.clear()
        self._pending_count = 0
        self._merge_at = max(_MIN_MERGE, self._base.nnz // _MERGE_SHARE)


class Cooccurrence(BaselineBase):
    """Counts of item pairs seen close together, summed over the user's last few items.

    ``scope="session"`` pairs a new item with the earlier items of the same session (the
    classic "bought together"); ``scope="user"`` pairs it with the user's last ``window``
    items across sessions, which also links a basket to the next one. A list sums the
    co-occurrence rows of the user's ``recent`` latest items, the latest weighing 1, the
    one before ``decay`` and so on, and is topped up with all-time popular items.
    """

    name = "cooccurrence"

    def __init__(
        self,
        *,
        scope: str = "session",
        window: int = 20,
        recent: int = 2,
        decay: float = 0.3,
        hide_session: bool = True,
        session_gap_s: float = 1800.0,
    ) -> None:
        if scope not in {"session", "user"}:
            raise ValueError("scope must be 'session' or 'user'")
        if window < 1 or recent < 1 or not 0 < decay <= 1:
            raise ValueError("window and recent must be >= 1 and decay in (0, 1]")
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.scope, self.window, self.recent, self.decay = scope, window, recent, decay
        self.pairs = SparseRows()
        self._recent: dict[str, list[int]] = {}

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        recent = self._recent.setdefault(event.user_id, [])
        if self.scope == "session":
            partners = session.items[-self.window - 1 : -1] if new else []
        else:
            partners = [item for item in recent[-self.window :] if item != row]
        self.pairs.add_pairs(row, partners)
        if row in recent:
            recent.remove(row)
        recent.append(row)
        if len(recent) > max(self.window, self.recent):
            del recent[0]

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        recent = self._recent.get(user_id, [])[-self.recent :]
        if not recent:
            return ()
        scores: FloatArray = np.zeros(len(self.items), dtype=np.float64)
        for item, weight in zip(recent, decay_weights(len(recent), self.decay), strict=True):
            self.pairs.accumulate(item, float(weight), scores)
        return top_rows(scores, n)

    def _forget(self, user_id: str) -> None:
        self._recent.pop(user_id, None)
