"""What every baseline shares: dense item rows, growable arrays, counts, sessions, fallback.

Baselines keep item scores in numpy arrays indexed by a dense row per item, because the
harness asks for a fresh list after almost every event (a batch is often one event) and a
dict-of-floats ranking would dominate the replay time.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.contract import Event, EventType
from worker.models.index import ItemIndex
from worker.recommend.signals import event_weight

__all__ = [
    "SHARED_PARAMS",
    "BaselineBase",
    "GrowingArray",
    "ItemScores",
    "Session",
    "Sessions",
    "decay_weights",
    "top_rows",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Knobs of :class:`BaselineBase` itself, which ``make_baseline`` sets on every baseline after
#: building it: they only filter the finished list, no model's learning depends on them, so
#: a baseline (including one added later) gets them without forwarding anything.
SHARED_PARAMS: dict[str, type] = {"hide_seen": bool}

#: Decayed counts are stored multiplied by 2**(age/half-life); rescale before float overflow.
_MAX_EXPONENT = 600.0


class GrowingArray:
    """An append-only numpy vector: slicing a view is free where a list would need converting."""

    def __init__(self, dtype: npt.DTypeLike, capacity: int = 64) -> None:
        self.data: npt.NDArray[Any] = np.zeros(capacity, dtype=dtype)
        self.size = 0

    def append(self, value: float) -> None:
        if self.size == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.size] = value
        self.size += 1

    def grow_to(self, size: int) -> None:
        """Extend with zeros so that ``size`` slots exist (rows created elsewhere)."""
        if size > len(self.data):
            bigger = np.zeros(max(size, 2 * len(self.data)), dtype=self.data.dtype)
            bigger[: self.size] = self.data[: self.size]
            self.data = bigger
        self.size = max(self.size, size)

    def view(self) -> npt.NDArray[Any]:
        return self.data[: self.size]


def top_rows(scores: FloatArray, n: int, rows: IntArray | None = None) -> list[int]:
    """The ``n`` best rows with a positive score, best first; ties go to the lower row.

    ``rows`` restricts the ranking to those rows (``scores`` is then aligned with them).
    """
    if rows is None:
        candidates = np.flatnonzero(scores > 0)
        values = scores[candidates]
    else:
        keep = scores > 0
        candidates, values = rows[keep], scores[keep]
    if n <= 0 or len(candidates) == 0:
        return []
    if len(candidates) > n:
        part = np.argpartition(-values, n - 1)[:n]
        candidates, values = candidates[part], values[part]
    order = np.lexsort((candidates, -values))
    result: list[int] = candidates[order].tolist()
    return result


class ItemScores:
    """A weight per item, optionally decayed exponentially in event time, and its top rows.

    Decay uses one global scale instead of touching every item per event: a weight added at
    time t is stored as ``w * 2**((t - t_ref) / half_life)``, so every stored value is the
    true decayed value times the same factor and the ranking is unchanged; adding stays
    O(1) and the vector is rescaled only when the factor nears float overflow.
    """

    def __init__(self, half_life_s: float | None = None) -> None:
        if half_life_s is not None and half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = half_life_s
        self._values = GrowingArray(np.float64)
        self._reference: float | None = None
        self.version = 0  # bumped by every add
        self._cache: tuple[int, int, list[int]] = (-1, 0, [])

    @property
    def values(self) -> FloatArray:
        values: FloatArray = self._values.view()
        return values

    def add(self, row: int, weight: float, at: float) -> None:
        self._values.grow_to(row + 1)
        if self.half_life_s is not None:
            if self._reference is None:
                self._reference = at
            exponent = (at - self._reference) / self.half_life_s
            if exponent > _MAX_EXPONENT:
                self._values.view()[:] *= 2.0**-exponent
                self._reference, exponent = at, 0.0
            weight *= 2.0**exponent
        self._values.view()[row] += weight
        self.version += 1

    def top(self, n: int) -> list[int]:
        """Cached until the next ``add``: a batch of many users asks for the same list."""
        version, length, rows = self._cache
        if version == self.version and length >= n:
            return rows[:n]
        rows = top_rows(self.values, n)
        self._cache = (self.version, n, rows)
        return rows

    def copy(self) -> ItemScores:
        twin = ItemScores(self.half_life_s)
        twin._values.grow_to(self._values.size)
        twin._values.view()[:] = self.values
        twin._reference = self._reference
        return twin


@dataclass(slots=True)
class Session:
    """One visit of one user: the items seen in it, first time first, each once."""

    serial: int
    user_id: str
    key: str | None
    last_at: float
    items: list[int] = field(default_factory=list)
    members: set[int] = field(default_factory=set)


class Sessions:
    """Each user's current session: ``Event.session_id`` when given, else cut at a time gap."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.current: dict[str, Session] = {}
        self.started = 0

    def add(self, event: Event, row: int, at: float) -> tuple[Session, bool]:
        """The user's session after ``event``, and whether ``row`` is new in it."""
        session = self.current.get(event.user_id)
        if (
            session is None
            or (event.session_id is not None and event.session_id != session.key)
            or (event.session_id is None and at - session.last_at > self.gap_s)
        ):
            session = Session(self.started, event.user_id, event.session_id, at)
            self.started += 1
            self.current[event.user_id] = session
        session.last_at = max(session.last_at, at)
        if row in session.members:
            return session, False
        session.items.append(row)
        session.members.add(row)
        return session, True

    def items_of(self, user_id: str) -> list[int]:
        session = self.current.get(user_id)
        return session.items if session is not None else []

    def forget(self, user_id: str) -> None:
        self.current.pop(user_id, None)


class BaselineBase(ABC):
    """Positive events in, top-k lists out; the shared parts of every baseline.

    Only events with a positive :func:`event_weight` teach a baseline (a dislike is not a
    co-purchase), ``forget`` drops what the baseline keeps about the user, and every list
    is topped up with the fallback ranking (all-time popular unless a baseline says
    otherwise) so that a cold user still gets ``k`` items, as Tailor's lists do.

    ``hide_session`` drops the items of the user's current session from the list: on logs
    of baskets the next item is almost never one already in the basket, and Tailor has the
    same kind of filter (``just_bought_window_s``), so it is tuned like any other knob.
    ``hide_seen`` (see :data:`SHARED_PARAMS`) drops every item the user ever had: on logs
    where nobody consumes an item twice (film ratings) a list showing them wastes slots,
    and a baseline that could not filter them would be a strawman there. It keeps a set of
    rows per user, only when on; fine for an offline replay of a finite log.
    """

    name: str = ""

    def __init__(self, *, hide_session: bool, session_gap_s: float) -> None:
        self.hide_session = hide_session
        self.hide_seen = False  # set by make_baseline (a shared param), before any learning
        self.items = ItemIndex(max_items=sys.maxsize)  # a replayed log is finite: index all
        self.popular = ItemScores()
        self.sessions = Sessions(session_gap_s)
        self._seen: dict[str, set[int]] = {}

    def learn(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.type is EventType.FORGET:
                self.sessions.forget(event.user_id)
                self._seen.pop(event.user_id, None)
                self._forget(event.user_id)
                continue
            if event.item_id is None:
                continue
            weight = event_weight(event)
            if weight <= 0:
                continue
            at = event.epoch_seconds
            self._tick(at)
            row = self.items.row(event.item_id)
            session, new_in_session = self.sessions.add(event, row, at)
            if self.hide_seen:
                self._seen.setdefault(event.user_id, set()).add(row)
            self.popular.add(row, weight, at)
            self._learn(event, row, weight, at, session, new_in_session)

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]:
        lists: list[list[str]] = []
        for event in events:
            hidden = self._hidden(event.user_id)
            wanted = k + len(hidden)
            ranked = self._rank(event.user_id, wanted)
            lists.append(self._finish(ranked, hidden, k, wanted))
        return lists

    def _hidden(self, user_id: str) -> Collection[int]:
        """Rows the user's list may not show (the live sets themselves: no copy per request)."""
        if self.hide_seen:
            return self._seen.get(user_id, ())  # the current session is part of it
        if self.hide_session:
            session = self.sessions.current.get(user_id)
            return session.members if session is not None else ()
        return ()

    def _finish(
        self, ranked: Sequence[int], hidden: Collection[int], k: int, wanted: int
    ) -> list[str]:
        """Drop hidden and repeated rows, then top up from the fallback ranking if short."""
        taken: set[int] = set()
        rows: list[int] = []
        for source in (ranked, None):
            for row in self._fallback(wanted + len(rows)) if source is None else source:
                if row not in taken and row not in hidden:
                    taken.add(row)
                    rows.append(row)
                    if len(rows) == k:
                        ids = self.items.ids
                        return [ids[row] for row in rows]
        ids = self.items.ids
        return [ids[row] for row in rows]

    def _fallback(self, n: int) -> Sequence[int]:
        return self.popular.top(n)

    def _tick(self, at: float) -> None:  # noqa: B027 - a hook most baselines leave empty
        """Runs before each positive event is applied: time-driven work such as retraining."""

    @abstractmethod
    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None: ...

    @abstractmethod
    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        """Up to ``n`` rows for the user, best first (may be fewer: the fallback tops up)."""

    @abstractmethod
    def _forget(self, user_id: str) -> None: ...


def decay_weights(count: int, decay: float) -> FloatArray:
    """``decay**0`` for the most recent of ``count`` items, ``decay**1`` for the one before..."""
    weights: FloatArray = decay ** np.arange(count - 1, -1, -1, dtype=np.float64)
    return weights
