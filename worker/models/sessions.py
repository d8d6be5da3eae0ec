"""Similar sessions: what other visits holding the user's current items went on to hold.

Co-visitation links one item to another; a session neighbour model links a whole visit to
other whole visits, which is what "customers who filled a basket like yours also took"
means. VSTAN (Ludewig, Latifi & Jannach 2021) is the strongest simple form of it in the
session-rec comparisons, and ``tailor evaluate``'s ``vstan`` baseline follows it; this is
the same scoring made streaming-safe:

- **bounded**: the latest ``capacity`` sessions (a power of two) in one ring of
  ``[capacity, length]`` item rows, and per item the last ``per_item`` sessions holding
  it. A posting whose slot has since been reused is recognised (the slot's serial no
  longer matches) and ignored, so nothing is ever cleaned up;
- **batched**: neighbours and item scores for a whole micro-batch of users come from a
  few numpy calls over ``[users, current items, per_item]`` postings.

Sessions are anonymous item lists named by a random-looking 63-bit token (a hash of the
session's first event id), the same in every worker: visits learned elsewhere arrive as
(token, item, time) in model deltas. Which tokens are a user's lives only in that user's
state in Redis, so a ``forget`` request drops them everywhere and the shared model itself
never holds anything that points to a person.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.models.arrays import grow_rows

__all__ = ["SessionNeighbours", "session_token"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: VSTAN's weights (the reference's lambdas), as tuned for the ``vstan`` baseline on the
#: first fifth of both development logs, where the same values won on each: the current
#: session's later items count more (position weight), neighbours found through a later
#: item count more, and items next to the match in the neighbour count more.
_CURRENT_POSITION_SCALE = 2.0
_MATCH_POSITION_SCALE = 2.0
_NEIGHBOUR_DISTANCE_SCALE = 4.0
_SERIAL_MASK = 0x7FFFFFFF  # postings keep serials modulo 2**31, in int32: half the memory
_EMPTY = -1


class SessionNeighbours:
    def __init__(
        self,
        capacity: int,
        per_item: int,
        length: int,
        neighbours: int,
        gap_s: float,
        half_life_s: float,
    ) -> None:
        self.capacity = 1 << max(1, int(capacity - 1).bit_length())  # slot = serial & mask
        self.per_item = per_item
        self.length = length
        self.k = neighbours
        self.gap_s = gap_s
        self.half_life_s = half_life_s
        self.items = np.full((self.capacity, length), _EMPTY, dtype=np.int32)
        self.sizes = np.zeros(self.capacity, dtype=np.int32)
        self.serial_of = np.full(self.capacity, _EMPTY, dtype=np.int64)  # slot -> session
        self.last_at = np.zeros(self.capacity)
        self.token_of = np.full(self.capacity, _EMPTY, dtype=np.int64)  # slot -> token
        self.postings = np.full((0, per_item), _EMPTY, dtype=np.int32)  # item -> serials
        self.cursor = np.zeros(0, dtype=np.int64)  # item -> postings written
        self.next_serial = 0
        self.now = 0.0
        self._serial: dict[int, int] = {}  # token -> serial, for the slots still held

    # -- learning ------------------------------------------------------------------------

    def observe(self, tokens: Sequence[int], rows: Sequence[int], times: Sequence[float]) -> None:
        """Add each (session token, item, time), in event order, to its session.

        A session is its distinct items in order of first touch, at most ``length`` of
        them (VSTAN's neighbours keep first positions too). Where one session ends and the
        next begins (a gap in the user's visits) is the caller's call, made once, so every
        worker agrees on it.
        """
        posted_rows: list[int] = []
        posted_serials: list[int] = []
        mask = self.capacity - 1
        for token, row, at in zip(tokens, rows, times, strict=True):
            if row < 0:
                continue
            self.now = max(self.now, at)
            serial = self._serial.get(token, _EMPTY)
            slot = serial & mask
            if serial < 0 or self.serial_of[slot] != serial:
                serial = self._start(token)
                slot = serial & mask
            self.last_at[slot] = max(self.last_at[slot], at)
            size = int(self.sizes[slot])
            if size >= self.length or row in self.items[slot, :size]:
                continue
            self.items[slot, size] = row
            self.sizes[slot] = size + 1
            posted_rows.append(row)
            posted_serials.append(serial & _SERIAL_MASK)
        if posted_rows:
            self._post(posted_rows, posted_serials)

    def _start(self, token: int) -> int:
        serial = self.next_serial
        self.next_serial += 1
        slot = serial & (self.capacity - 1)
        if self.serial_of[slot] >= 0:  # the slot's old session is overwritten
            self._serial.pop(int(self.token_of[slot]), None)
        self.serial_of[slot] = serial
        self.sizes[slot] = 0
        self.items[slot] = _EMPTY
        self.last_at[slot] = 0.0
        self.token_of[slot] = token
        self._serial[token] = serial
        return serial

    def reserve(self, rows: int) -> None:
        """Postings for ``rows`` items now, so that no batch pays for growing them."""
        if rows > self.postings.shape[0]:
            self.postings = grow_rows(self.postings, rows, fill=_EMPTY)
            self.cursor = np.concatenate(
                [self.cursor, np.zeros(self.postings.shape[0] - self.cursor.size, np.int64)]
            )

    def _post(self, rows: list[int], serials: list[int]) -> None:
        """Append each session to its item's ring of latest sessions."""
        self.reserve(max(rows) + 1)
        for row, serial in zip(rows, serials, strict=True):
            at = int(self.cursor[row])
            self.postings[row, at % self.per_item] = serial
            self.cursor[row] = at + 1

    def forget(self, tokens: Sequence[int]) -> None:
        """Drop the sessions named by ``tokens`` (a privacy request)."""
        for token in tokens:
            serial = self._serial.pop(token, None)
            if serial is None:
                continue
            slot = serial & (self.capacity - 1)
            if self.serial_of[slot] == serial:
                self.serial_of[slot] = _EMPTY
                self.sizes[slot] = 0
                self.items[slot] = _EMPTY
                self.token_of[slot] = _EMPTY

    # -- checkpoints ---------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        """The whole model as arrays (copies): what a checkpoint keeps."""
        return {
            "items": self.items.copy(),
            "sizes": self.sizes.copy(),
            "serial_of": self.serial_of.copy(),
            "last_at": self.last_at.copy(),
            "token_of": self.token_of.copy(),
            "postings": self.postings.copy(),
            "cursor": self.cursor.copy(),
            "clock": np.array([self.next_serial, self.now], dtype=np.float64),
        }

    def load(self, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
        """Install :meth:`arrays` of a model with the same shape settings."""
        if arrays["items"].shape != self.items.shape or arrays["postings"].shape[1:] != (
            self.per_item,
        ):
            raise ValueError("similar-sessions arrays do not match this worker's settings")
        self.items = arrays["items"].astype(np.int32)
        self.sizes = arrays["sizes"].astype(np.int32)
        self.serial_of = arrays["serial_of"].astype(np.int64)
        self.last_at = arrays["last_at"].astype(np.float64)
        self.token_of = arrays["token_of"].astype(np.int64)
        self.postings = arrays["postings"].astype(np.int32)
        self.cursor = arrays["cursor"].astype(np.int64)
        self.next_serial, self.now = int(arrays["clock"][0]), float(arrays["clock"][1])
        held = np.flatnonzero(self.serial_of >= 0)
        self._serial = dict(
            zip(self.token_of[held].tolist(), self.serial_of[held].tolist(), strict=True)
        )

    # -- recommending --------------------------------------------------------------------

    def recommend(
        self, own: Sequence[int], current: IntArray, n: int
    ) -> tuple[IntArray, FloatArray]:
        """Each user's ``n`` best items from the sessions most like their current one.

        ``current`` is ``[users, C]``: each user's current session, newest item first, -1
        padded; ``own`` is each user's open session token (-1 for none), which is no
        neighbour of itself. Returns ``[users, n]`` rows (-1 padded) and their VSTAN
        scores, best first.
        """
        count, width = current.shape
        rows_out = np.full((count, n), _EMPTY, dtype=np.int64)
        scores_out = np.zeros((count, n))
        neighbour_user, slots, similarity = self._neighbours(own, current)
        if slots.size == 0:
            return rows_out, scores_out
        items = self.items[slots].astype(np.int64)  # [neighbours, length]
        present = items >= 0
        # The position (0 = newest) of each neighbour item in its user's current session.
        stride = int(max(items.max(initial=0), current.max(initial=0))) + 2
        current_keys = (np.arange(count)[:, None] * stride + current + 1).ravel()
        current_at = np.tile(np.arange(width), count)
        known = current.ravel() >= 0
        current_keys, current_at = current_keys[known], current_at[known]
        order = np.argsort(current_keys)
        current_keys, current_at = current_keys[order], current_at[order]
        keys = neighbour_user[:, None] * stride + items + 1
        found = np.minimum(np.searchsorted(current_keys, keys), max(current_keys.size - 1, 0))
        matched = present & (current_keys[found] == keys)
        match_at = np.where(matched, current_at[found], width)
        # Found through a later current item: weigh more (VSTAN's lambda_ipw).
        log_weight = np.log(similarity) - match_at.min(axis=1) / _MATCH_POSITION_SCALE
        # Items near the neighbour's last match: weigh more (lambda_inh).
        position = np.broadcast_to(np.arange(self.length), items.shape)
        last_match = np.where(matched, position, -1).max(axis=1)
        distance = np.abs(position - last_match[:, None])
        contribution = np.exp(log_weight[:, None] - distance / _NEIGHBOUR_DISTANCE_SCALE)
        take = present & ~matched  # what the neighbours hold beyond the current session
        user_item = (neighbour_user[:, None] * stride + items)[take]
        distinct, inverse = np.unique(user_item, return_inverse=True)
        summed = np.bincount(inverse, weights=contribution[take], minlength=distinct.size)
        owner, item = distinct // stride, distinct % stride
        best = np.lexsort((-summed, owner))
        owner, item, summed = owner[best], item[best], summed[best]
        rank = np.arange(owner.size) - np.searchsorted(owner, owner)
        keep = rank < n
        rows_out[owner[keep], rank[keep]] = item[keep]
        scores_out[owner[keep], rank[keep]] = summed[keep]
        return rows_out, scores_out

    def _neighbours(
        self, own_tokens: Sequence[int], current: IntArray
    ) -> tuple[IntArray, IntArray, FloatArray]:
        """The ``k`` sessions most like each user's current one: (user, slot, similarity).

        Cosine between the position-weighted current session and each candidate's item
        set, decayed by the candidate's age (VSTAN's lambda_snh as a half-life).
        """
        count, width = current.shape
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        held = (current >= 0) & (current < self.postings.shape[0])
        if not held.any():
            return empty
        postings = self.postings[np.where(held, current, 0)].astype(np.int64)  # [U, C, P]
        mask = self.capacity - 1
        slot = postings & mask
        own = np.array(
            [self._serial.get(token, _EMPTY) & _SERIAL_MASK for token in own_tokens],
            dtype=np.int64,
        )
        valid = (
            held[..., None]
            & (postings >= 0)
            & ((self.serial_of[slot] & _SERIAL_MASK) == postings)
            & (self.serial_of[slot] >= 0)
            & (postings != own[:, None, None])
        )
        if not valid.any():
            return empty
        position_weight = np.exp(-np.arange(width) / _CURRENT_POSITION_SCALE)
        weight = np.broadcast_to(position_weight[None, :, None], postings.shape)[valid]
        user = np.broadcast_to(np.arange(count)[:, None, None], postings.shape)[valid]
        pair = user * self.capacity + slot[valid]
        distinct, inverse = np.unique(pair, return_inverse=True)
        overlap = np.bincount(inverse, weights=weight, minlength=distinct.size)
        user, slot_of = distinct // self.capacity, distinct % self.capacity
        norm = ((held * position_weight[None, :]) ** 2).sum(axis=1)
        similarity = overlap / np.sqrt(norm[user] * np.maximum(self.sizes[slot_of], 1))
        age = np.maximum(self.now - self.last_at[slot_of], 0.0)
        similarity *= np.exp2(-age / self.half_life_s)
        best = np.lexsort((-similarity, user))
        user, slot_of, similarity = user[best], slot_of[best], similarity[best]
        rank = np.arange(user.size) - np.searchsorted(user, user)
        keep = (rank < self.k) & (similarity > 0)
        return user[keep], slot_of[keep], similarity[keep]


def session_token(first_event_id: str) -> int:
    """A session's name: a 63-bit hash of its first event's id, the same in every process.

    Event ids are unique, so tokens are too (up to hash collisions, about one in 2**31
    among 2**16 live sessions); they say nothing about who the user is.
    """
    digest = hashlib.blake2b(first_event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFFFFFFFFFF
