"""All-time popular and decayed trending: the lists every shop shows without any learning."""

from __future__ import annotations

from collections.abc import Sequence

from worker.contract import Event
from worker.evaluate.baselines.common import BaselineBase, ItemScores, Session

__all__ = ["Popular", "Trending"]


class Popular(BaselineBase):
    """The same top-k for everyone: items by summed :func:`event_weight`, all time.

    Weighted rather than plainly counted so that, on logs mixing views and purchases, a
    purchase counts as much more than a view, the way Tailor weighs them; on a
    purchase-only log the two are the same ranking.
    """

    name = "popular"

    def __init__(self, *, hide_session: bool = True, session_gap_s: float = 1800.0) -> None:
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        return  # the shared popularity counts are the whole model

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        return ()  # the fallback (all-time popular) is the list

    def _forget(self, user_id: str) -> None:
        return  # counts are anonymous aggregates; the user's session went with ``sessions``


class Trending(BaselineBase):
    """Items by exponentially time-decayed weight: what sells now, half-life in event time."""

    name = "trending"

    def __init__(
        self,
        *,
        half_life_s: float = 604800.0,
        hide_session: bool = True,
        session_gap_s: float = 1800.0,
    ) -> None:
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.trending = ItemScores(half_life_s)

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        self.trending.add(row, weight, at)

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        return ()  # the fallback (trending) is the list

    def _fallback(self, n: int) -> Sequence[int]:
        return self.trending.top(n)

    def _forget(self, user_id: str) -> None:
        return
