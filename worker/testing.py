"""In-memory stand-ins for the worker's collaborators, for the harness and unit tests.

``tailor run`` keeps per-user state in Redis, the model log on Kafka and checkpoints in
Redis. The evaluation harness and the loop's unit tests run the very same recommender
and :class:`~worker.sync.model_sync.ModelSync` code against these instead (as bytewax's
``testing`` module does for its sources and sinks), so replays need no server and the
sync and restore logic is tested without one too. Nothing here is used in production.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from worker.state.user import UserState, UserWrite
from worker.sync.model_sync import LogRecord

__all__ = ["MemoryCheckpoints", "MemoryModelLog", "MemoryStates"]


class MemoryStates:
    """User states in a dict (a :class:`~worker.state.store.StateStore`)."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}

    def read(self, user_ids: Sequence[str]) -> dict[str, UserState | None]:
        return {user_id: self.states.get(user_id) for user_id in user_ids}

    def write(self, writes: Sequence[UserWrite]) -> None:
        for write in writes:
            self.states[write.state.user_id] = write.state

    def erase(self, user_ids: Sequence[str]) -> None:
        for user_id in user_ids:
            self.states.pop(user_id, None)


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
