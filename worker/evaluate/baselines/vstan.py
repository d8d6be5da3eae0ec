"""VSTAN: session kNN weighted by position, time and rarity, the strongest simple session model.

STAN (Garg et al. 2019, "Sequence and Time Aware Neighborhood for session-based
recommendations") weighs session kNN by where items sit in the sessions and by how old a
neighbour session is; VSTAN (Ludewig, Latifi & Jannach 2021, "Empirical analysis of
session-based recommendation algorithms"; Latifi et al., "Session-aware recommendation: a
surprising quest for the state of the art") adds V-SKNN's weighting by the position of the
matched item and IDF-weighted scores. Those studies found it matching or beating the neural
session models on most data sets, so a streaming recommender has to be measured against it.
This follows the reference implementation (rn5l/session-rec, ``algorithms/knn/vstan.py``)
with cosine similarity and "recent" sampling, computed with numpy over the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

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

__all__ = ["Vstan"]

#: Sum weights per session serial with a bincount over the serial span when it is at most
#: this many times the number of postings read, else sort them (np.unique).
_DENSE_SPAN = 16
_DAY_S = 86400.0


class SessionArena:
    """Every session's items in one numpy array, each session in a block of its own.

    A list needs the items of about a hundred neighbour sessions; gathering them from one
    array is a handful of vector operations where a slice per session costs a hundred
    Python calls. A session that outgrows its block moves to a block twice the size at the
    end (the old one is left unused), so appending stays amortised O(1) and at most about
    half the array is slack.
    """

    def __init__(self) -> None:
        self._rows = GrowingArray(np.int64, capacity=1024)
        self._start = GrowingArray(np.int64)  # by serial
        self._capacity = GrowingArray(np.int64)  # by serial
        self.sizes = GrowingArray(np.int64)  # by serial

    def __len__(self) -> int:
        return self.sizes.size

    def open(self) -> int:
        """A new empty session; its serial."""
        self._start.append(self._rows.size)
        self._capacity.append(0)
        self.sizes.append(0)
        return self.sizes.size - 1

    def append(self, serial: int, row: int) -> None:
        start, size = int(self._start.data[serial]), int(self.sizes.data[serial])
        if size == self._capacity.data[serial]:
            moved = self._rows.size
            self._rows.grow_to(moved + max(4, 2 * size))
            rows = self._rows.data
            rows[moved : moved + size] = rows[start : start + size]
            self._start.data[serial], self._capacity.data[serial] = moved, max(4, 2 * size)
            start = moved
        self._rows.data[start + size] = row
        self.sizes.data[serial] = size + 1

    def gather(self, serials: IntArray) -> tuple[IntArray, IntArray, IntArray, IntArray]:
        """The sessions' items one after the other: items, the index of the session each
        came from, its 1-based position in that session, and where each session begins."""
        sizes = self.sizes.view()[serials]
        begins = np.cumsum(sizes) - sizes
        segment = np.repeat(np.arange(len(serials)), sizes)
        within = np.arange(int(sizes.sum())) - begins[segment]
        items: IntArray = self._rows.data[self._start.view()[serials][segment] + within]
        return items, segment, within + 1, begins


class Vstan(BaselineBase):
    """VSTAN over every session seen so far (other users' ongoing ones included).

    With the user's current session as its last ``current_items`` distinct items, in order
    of last use, position p of L (the latest is L):

    - candidates are the ``sample_size`` most recently active sessions sharing an item with
      it (read from an item -> sessions index), never the current session itself;
    - similarity is cosine between the current session, each item weighted
      ``exp((p - L) / lambda_spw)`` (later items count more), and the neighbour's binary
      item set, times ``exp(-age / lambda_snh)`` with the neighbour's age in days since its
      last event (recent sessions count more); the ``k_neighbours`` most similar are kept;
    - an item of a neighbour scores the neighbour's similarity times
      ``exp(-|q - q*| / lambda_inh)`` (q its position in the neighbour, q* that of the
      neighbour's last item also in the current session: items bought next to the match
      count more), times ``exp((p* - L) / lambda_ipw)`` (p* the latest current position the
      neighbour matched: neighbours found through the latest item count more), times
      ``1 + lambda_idf * log(sessions / sessions with the item)`` (rare items count more).

    A lambda of 0 switches its weighting off. A session is its distinct items (a repeat
    moves an item to the end of the current session; a neighbour keeps first positions).
    The sampled candidates per item and ``current_items`` bound the work per list; in the
    reference, which uses the whole session, an item 10 positions back weighs e^-5 at
    ``lambda_spw=2`` anyway.
    """

    name = "vstan"

    def __init__(
        self,
        *,
        k_neighbours: int = 100,
        sample_size: int = 1000,
        current_items: int = 10,
        lambda_spw: float = 2.0,
        lambda_snh: float = 100.0,
        lambda_inh: float = 4.0,
        lambda_ipw: float = 2.0,
        lambda_idf: float = 0.0,
        hide_session: bool = True,
        session_gap_s: float = 1800.0,
    ) -> None:
        if min(k_neighbours, sample_size, current_items) < 1:
            raise ValueError("k_neighbours, sample_size and current_items must be >= 1")
        if min(lambda_spw, lambda_snh, lambda_inh, lambda_ipw, lambda_idf) < 0:
            raise ValueError("the lambdas must be >= 0 (0 switches a weighting off)")
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.k_neighbours, self.sample_size = k_neighbours, sample_size
        self.current_items = current_items
        self.lambda_spw, self.lambda_snh, self.lambda_inh = lambda_spw, lambda_snh, lambda_inh
        self.lambda_ipw, self.lambda_idf = lambda_ipw, lambda_idf
        self._sessions = SessionArena()  # by serial: items, first position first
        self._last_at = GrowingArray(np.float64)  # by serial: time of its latest event
        self._alive = GrowingArray(np.bool_)  # by serial: False once its user is forgotten
        self._item_sessions: list[GrowingArray] = []  # by item row: serials, oldest first
        self._sessions_with = GrowingArray(np.float64)  # by item row: the IDF's counts
        self._idf_offset = GrowingArray(np.float64)  # lambda_idf * log(each), kept current
        self._user_sessions: dict[str, list[int]] = {}
        # per user: (serial, current session's rows in order of last use)
        self._current: dict[str, tuple[int, dict[int, None]]] = {}
        self._position = GrowingArray(np.float64)  # scratch: row -> current position, else 0
        self._now = float("-inf")

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        serial = session.serial
        if serial == len(self._sessions):
            self._sessions.open()
            self._last_at.append(session.last_at)
            self._alive.append(True)
            self._user_sessions.setdefault(event.user_id, []).append(serial)
        self._last_at.view()[serial] = session.last_at
        self._now = max(self._now, at)
        current = self._current.get(event.user_id)
        if current is None or current[0] != serial:
            current = self._current[event.user_id] = (serial, {})
        current[1].pop(row, None)
        current[1][row] = None
        if not new:
            return
        while len(self._item_sessions) <= row:
            self._item_sessions.append(GrowingArray(np.int64, capacity=8))
        self._item_sessions[row].append(serial)
        self._sessions_with.grow_to(row + 1)
        self._idf_offset.grow_to(row + 1)
        self._sessions_with.view()[row] += 1.0
        self._idf_offset.view()[row] = self.lambda_idf * np.log(self._sessions_with.view()[row])
        self._sessions.append(serial, row)

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        session = self.sessions.current.get(user_id)
        current = self._current.get(user_id)
        if session is None or current is None or current[0] != session.serial:
            return ()
        latest = list(islice(reversed(current[1]), self.current_items))
        rows = np.array(latest[::-1], dtype=np.int64)
        neighbours, log_weights = self._neighbours(rows, session.serial)
        if len(neighbours) == 0:
            return ()
        items, scores = self._score(rows, neighbours, log_weights)
        if len(self.items) <= _DENSE_SPAN * len(items):  # rank a dense vector: no sorting
            return top_rows(_summed(items, scores, len(self.items)), n)
        distinct, inverse = np.unique(items, return_inverse=True)
        return top_rows(_summed(inverse, scores, len(distinct)), n, distinct)

    def _neighbours(self, rows: IntArray, own: int) -> tuple[IntArray, FloatArray]:
        """The ``k_neighbours`` best sessions and their log weights, the best at 0.

        Scaling by the best weight changes no ranking (every score is linear in the
        weights) and keeps the time decay from underflowing to 0 on a long log.
        """
        length = len(rows)
        spw = _decay(np.arange(1 - length, 1, dtype=np.float64), self.lambda_spw)
        index, sample = self._item_sessions, self.sample_size
        read = sample + 1  # the current session is the latest posting of each of its items
        postings = [
            index[row].data[max(0, index[row].size - read) : index[row].size]
            for row in rows.tolist()
        ]
        serials = np.concatenate(postings)
        matched = np.repeat(spw, [len(posting) for posting in postings])
        candidates, overlap = _sum_by_key(serials, matched)
        keep = (candidates != own) & self._alive.view()[candidates]
        candidates, overlap = candidates[keep], overlap[keep]
        last_at = self._last_at.view()[candidates]
        if len(candidates) > sample:
            recent = np.argpartition(-last_at, sample - 1)[:sample]
            candidates, overlap, last_at = candidates[recent], overlap[recent], last_at[recent]
        if len(candidates) == 0:
            return candidates, overlap
        norms = np.sqrt(float(np.dot(spw, spw)) * self._sessions.sizes.view()[candidates])
        log_weights = np.log(overlap / norms)
        if self.lambda_snh > 0:
            log_weights -= (self._now - last_at) / (self.lambda_snh * _DAY_S)
        if len(candidates) > self.k_neighbours:
            best = np.argpartition(-log_weights, self.k_neighbours - 1)[: self.k_neighbours]
            candidates, log_weights = candidates[best], log_weights[best]
        log_weights -= log_weights.max()
        return candidates, log_weights

    def _score(
        self, rows: IntArray, neighbours: IntArray, log_weights: FloatArray
    ) -> tuple[IntArray, FloatArray]:
        """Every item occurrence in the neighbours and its share of the VSTAN score.

        The per-neighbour factors are summed as logs and exponentiated once per
        occurrence: the neighbours of a basket log hold thousands of them.
        """
        length = len(rows)
        items, segment, position, begins = self._sessions.gather(neighbours)
        self._position.grow_to(len(self.items))
        scratch = self._position.view()
        scratch[rows] = np.arange(1, length + 1, dtype=np.float64)
        current_position = scratch[items]  # 0 where the item is not in the current session
        scratch[rows] = 0.0
        if self.lambda_ipw > 0:  # every neighbour holds a current item: found through it
            latest_current = np.maximum.reduceat(current_position, begins)
            log_weights = log_weights + (latest_current - length) / self.lambda_ipw
        exponent = log_weights[segment]
        if self.lambda_inh > 0:
            last_match = np.maximum.reduceat(position * (current_position > 0), begins)
            exponent -= np.abs(position - last_match[segment]) / self.lambda_inh
        scores: FloatArray = np.exp(exponent)
        if self.lambda_idf > 0:  # 1 + lambda * log(N / n_i) = (1 + lambda log N) - lambda log n_i
            top = 1.0 + self.lambda_idf * np.log(len(self._sessions))
            scores *= top - self._idf_offset.view()[items]
        return items, scores

    def _forget(self, user_id: str) -> None:
        self._current.pop(user_id, None)
        for serial in self._user_sessions.pop(user_id, []):
            self._alive.view()[serial] = False


def _decay(offsets: FloatArray, scale: float) -> FloatArray:
    """``exp(offsets / scale)`` for offsets <= 0; all ones when the weighting is off."""
    if scale <= 0:
        return np.ones_like(offsets)
    weights: FloatArray = np.exp(offsets / scale)
    return weights


def _sum_by_key(keys: IntArray, weights: FloatArray) -> tuple[IntArray, FloatArray]:
    """Distinct keys, ascending, and the summed weight of each."""
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    if span <= _DENSE_SPAN * len(keys):  # a bincount over the span beats sorting
        sums = _summed(keys - low, weights, span)
        present: IntArray = np.flatnonzero(sums).astype(np.int64, copy=False)
        return present + low, sums[present]
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, _summed(inverse, weights, len(distinct))


def _summed(keys: IntArray, weights: FloatArray, size: int) -> FloatArray:
    """``weights`` summed per key in ``range(size)``."""
    sums: FloatArray = np.bincount(keys, weights=weights, minlength=size).astype(
        np.float64, copy=False
    )
    return sums
