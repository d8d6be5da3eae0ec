"""The user's own latest items: the trivial re-consumption baseline.

On logs where people come back to what they had (a shop's regular orders, music, news
sections) simply showing a user's own items again is hard to beat, and a recommender
that does not beat it has learned nothing beyond the user's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np

from worker.contract import Event
from worker.evaluate.baselines.common import BaselineBase, Session

__all__ = ["Recent"]


class Recent(BaselineBase):
    """The user's distinct items, newest first (or most often had first), then popular.

    ``order="recency"`` ranks by the last time the user had each item, newest first;
    ``order="frequency"`` by how much the user had it (summed :func:`event_weight`), the
    newer first among equals: regular orders favour the second, browsing the first.
    ``hide_session`` defaults to off: re-showing the session's items is the point here.
    """

    name = "recent"

    def __init__(
        self,
        *,
        order: str = "recency",
        hide_session: bool = False,
        session_gap_s: float = 1800.0,
    ) -> None:
        if order not in {"recency", "frequency"}:
            raise ValueError("order must be 'recency' or 'frequency'")
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.order = order
        # per user: row -> summed weight, in order of last use (a re-used row moves to the end)
        self._history: dict[str, dict[int, float]] = {}

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        history = self._history.setdefault(event.user_id, {})
        history[row] = history.pop(row, 0.0) + weight

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        history = self._history.get(user_id)
        if not history:
            return ()
        if self.order == "recency":
            return list(islice(reversed(history), n))
        rows = np.fromiter(history.keys(), dtype=np.int64, count=len(history))
        weights = np.fromiter(history.values(), dtype=np.float64, count=len(history))
        recency = np.arange(len(rows))  # larger = used more recently
        order = np.lexsort((-recency, -weights))[:n]
        ranked: list[int] = rows[order].tolist()
        return ranked

    def _forget(self, user_id: str) -> None:
        self._history.pop(user_id, None)
