"""Session kNN (Jannach & Ludewig 2017): items of past sessions like the current one.

"When recurrent neural networks meet the neighborhood for session-based recommendation"
showed this simple neighbourhood method matching GRU4Rec; it is the session baseline a
streaming recommender has to beat.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.contract import Event
from worker.evaluate.baselines.common import (
    BaselineBase,
    FloatArray,
    GrowingArray,
    IntArray,
    Session,
    top_rows,
)

__all__ = ["SessionKnn"]

#: Count overlaps with a bincount over the serial span when it is at most this many times
#: the number of postings read, else sort them (np.unique): both give the same neighbours.
_DENSE_SPAN = 16


class SessionKnn(BaselineBase):
    """SKNN / V-SKNN over every session seen so far, scored on binary item sets.

    For the user's current session (its last ``current_items`` items), the candidate
    neighbours are the ``sample_size`` most recently started sessions sharing an item with
    it, found through an item -> sessions index; similarity is cosine on binary item sets
    (``weighting="linear"``: V-SKNN, later items of the current session count more), the
    ``k_neighbours`` most similar are kept and an item scores the summed similarity of the
    neighbours holding it. Other users' ongoing sessions take part with the items they
    have so far (all of them are in the past of the event being predicted); the user's own
    current session is never its own neighbour, while their earlier sessions are.
    """

    name = "sknn"

    def __init__(
        self,
        *,
        k_neighbours: int = 100,
        sample_size: int = 500,
        current_items: int = 2,
        weighting: str = "linear",
        hide_session: bool = True,
        session_gap_s: float = 1800.0,
    ) -> None:
        if weighting not in {"none", "linear"}:
            raise ValueError("weighting must be 'none' or 'linear'")
        if min(k_neighbours, sample_size, current_items) < 1:
            raise ValueError("k_neighbours, sample_size and current_items must be >= 1")
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.k_neighbours, self.sample_size = k_neighbours, sample_size
        self.current_items, self.weighting = current_items, weighting
        self._session_items: list[GrowingArray] = []  # by serial
        self._lengths = GrowingArray(np.float64)
        self._alive = GrowingArray(np.bool_)
        self._item_sessions: list[GrowingArray] = []  # by item row: serials, oldest first
        self._user_sessions: dict[str, list[int]] = {}

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        if session.serial == len(self._session_items):
            self._session_items.append(GrowingArray(np.int64, capacity=8))
            self._lengths.append(0.0)
            self._alive.append(True)
            self._user_sessions.setdefault(event.user_id, []).append(session.serial)
        if not new:
            return
        while len(self._item_sessions) <= row:
            self._item_sessions.append(GrowingArray(np.int64, capacity=8))
        self._item_sessions[row].append(session.serial)
        self._session_items[session.serial].append(row)
        self._lengths.view()[session.serial] += 1.0

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        session = self.sessions.current.get(user_id)
        if session is None or not session.items:
            return ()
        current = session.items[-self.current_items :]
        neighbours, similarity = self._neighbours(current, session.serial)
        if len(neighbours) == 0:
            return ()
        sessions = self._session_items
        members = [sessions[serial].data[: sessions[serial].size] for serial in neighbours.tolist()]
        items = np.concatenate(members)
        weights = np.repeat(similarity, [len(member) for member in members])
        scores = np.bincount(items, weights=weights, minlength=len(self.items)).astype(np.float64)
        return top_rows(scores, n)

    def _neighbours(self, current: list[int], own: int) -> tuple[IntArray, FloatArray]:
        """The most similar recent sessions and their cosine similarity to ``current``."""
        index, sample = self._item_sessions, self.sample_size
        postings = [
            index[row].data[max(0, index[row].size - sample) : index[row].size] for row in current
        ]
        if self.weighting == "linear":
            position = np.arange(1, len(current) + 1, dtype=np.float64) / len(current)
        else:
            position = np.ones(len(current), dtype=np.float64)
        serials = np.concatenate(postings)
        matched = np.repeat(position, [len(posting) for posting in postings])
        low = int(serials.min())
        span = int(serials.max()) - low + 1
        if span <= _DENSE_SPAN * len(serials):  # a bincount over the span beats sorting
            overlap = np.bincount(serials - low, weights=matched, minlength=span)
            candidates = np.flatnonzero(overlap) + low
            overlap = overlap[candidates - low]
        else:
            candidates, inverse = np.unique(serials, return_inverse=True)
            overlap = np.bincount(inverse, weights=matched, minlength=len(candidates))
        keep = (candidates != own) & self._alive.view()[candidates]
        candidates, overlap = (
            candidates[keep][-self.sample_size :],
            overlap[keep][-self.sample_size :],
        )
        similarity = overlap / np.sqrt(self._lengths.view()[candidates] * len(current))
        if len(candidates) > self.k_neighbours:
            best = np.argpartition(-similarity, self.k_neighbours - 1)[: self.k_neighbours]
            candidates, similarity = candidates[best], similarity[best]
        return candidates, similarity

    def _forget(self, user_id: str) -> None:
        for serial in self._user_sessions.pop(user_id, []):
            self._alive.view()[serial] = False
