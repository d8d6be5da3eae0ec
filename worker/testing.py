"""In-memory stand-ins for the worker's collaborators, for the harness and unit tests.

``tailor run`` keeps per-user state in Redis, the model log on Kafka and checkpoints in
Redis. The evaluation harness and the loop's unit tests run the very same recommender
and :class:`~worker.sync.model_sync.ModelSync` code against these instead (as bytewax's
``testing`` module does for its sources and sinks), so replays need no server and the
sync and restore logic is tested without one too. Nothing here is used in production.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

from worker.state.store import WriteOutcome
from worker.state.user import UserState, UserWrite
from worker.sync.model_sync import LogRecord

__all__ = ["MemoryCheckpoints", "MemoryModelLog", "MemoryStates"]


class MemoryStates:
    """User states in a dict (a :class:`~worker.state.store.StateStore`)."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}

    def read(self, user_ids: Sequence[str]) -> dict[str, UserState | None]:
        """Copies, as Redis hands out: the caller's changes count only once written."""
        return {user_id: _copy(self.states.get(user_id)) for user_id in user_ids}

    def check(self) -> None:
        """Always reachable."""

    def write(self, writes: Sequence[UserWrite]) -> WriteOutcome:
        """Each user's state, guarded by its offsets as the Redis script guards it."""
        stale = 0
        for write in writes:
            state = write.state
            held = self.states.get(state.user_id)
            if (
                held is not None
                and not write.erase_first
                and any(
                    offset <= held.offsets.get(partition, -1)
                    for partition, offset in state.offsets.items()
                )
            ):
                stale += 1
                continue
            self.states[state.user_id] = _copy(state)  # type: ignore[assignment]
        return WriteOutcome(written=len(writes) - stale, stale=stale)

    def erase(self, user_ids: Sequence[str]) -> int:
        return sum(self.states.pop(user_id, None) is not None for user_id in user_ids)


class MemoryModelLog:
    """The model topic as a list shared by every simulated worker.

    Each worker gets its own reader (:meth:`reader`) with its own position, as each
    Kafka consumer has; ``written_at`` is whatever clock the harness runs on (event
    time), which is how a sync lag is simulated.
    """

    def __init__(self) -> None:
        self.records: list[tuple[bytes, float, str]] = []
        self.first = 0  # position of records[0] (older ones trimmed)

    def reader(self, clock: Callable[[], float], lag_s: float = 0.0) -> MemoryLogReader:
        return MemoryLogReader(self, clock, lag_s)

    def trim(self, before: int) -> None:
        """Drop records before ``before`` (retention), keeping positions stable."""
        drop = max(0, min(before - self.first, len(self.records)))
        del self.records[:drop]
        self.first += drop


class MemoryLogReader:
    """One worker's view of a :class:`MemoryModelLog` (a :class:`ModelLog`)."""

    def __init__(self, shared: MemoryModelLog, clock: Callable[[], float], lag_s: float) -> None:
        self.shared = shared
        self.clock = clock
        self.lag_s = lag_s
        self.position = 0

    def prepare(self) -> None:
        """Nothing to create."""

    def close(self) -> None:
        """Nothing to release."""

    def append(self, data: bytes, origin: str) -> None:
        self.shared.records.append((data, self.clock(), origin))

    def flush(self, timeout_s: float) -> None:
        """Appends are durable at once."""

    def seek(self, position: int) -> None:
        self.position = position

    def read(self, limit: int, timeout_s: float) -> list[LogRecord]:
        """Records written at least ``lag_s`` ago (a simulated sync lag)."""
        shared, out = self.shared, list[LogRecord]()
        horizon = self.clock() - self.lag_s
        self.position = max(self.position, shared.first)
        while len(out) < limit and self.position - shared.first < len(shared.records):
            data, written_at, origin = shared.records[self.position - shared.first]
            if written_at > horizon:
                break
            out.append(LogRecord(self.position, data, written_at, origin))
            self.position += 1
        return out

    def bounds(self) -> tuple[int, int]:
        """The end is that of the records visible at the lag (what Kafka would have
        delivered by now)."""
        shared, horizon = self.shared, self.clock() - self.lag_s
        end = shared.first + len(shared.records)
        while end > shared.first and shared.records[end - 1 - shared.first][1] > horizon:
            end -= 1
        return shared.first, end


class MemoryCheckpoints:
    """Checkpoints in a list (newest last), with the same lease rule as Redis."""

    def __init__(self, clock: Callable[[], float], keep: int = 2) -> None:
        self.clock = clock
        self.keep = keep
        self.saved: list[bytes] = []
        self._lease_until = float("-inf")

    def save(self, data: bytes) -> None:
        self.saved.append(data)
        del self.saved[: -self.keep]

    def newest_first(self) -> Iterator[bytes]:
        return iter(list(reversed(self.saved)))

    def claim(self, seconds: float) -> bool:
        now = self.clock()
        if now < self._lease_until:
            return False
        self._lease_until = now + 0.9 * seconds  # expires just before the holder's next turn
        return True


def _copy(state: UserState | None) -> UserState | None:
    """A copy whose later changes do not reach the stored state (interactions are frozen,
    so the lists are copied, not their items)."""
    if state is None:
        return state
    return dataclasses.replace(
        state,
        vector=state.vector.copy(),
        recent=list(state.recent),
        last_list=list(state.last_list),
        offsets=dict(state.offsets),
        sessions=list(state.sessions),
    )
