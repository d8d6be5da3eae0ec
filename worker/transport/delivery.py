"""Which offsets are safe to commit: those whose every output has been acknowledged.

Each micro-batch registers how many messages it produced and the next offset of each
partition it consumed. Delivery reports count down; when the oldest batches are fully
acknowledged their offsets are handed to ``store`` (in consumption order, so a later
batch never commits past an earlier unacknowledged one).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DeliveryFailed", "DeliveryTracker", "NotYetAcknowledged", "PendingBatch"]


class DeliveryFailed(RuntimeError):
    """librdkafka gave up on a message: stop without committing, so it is replayed."""


class NotYetAcknowledged(DeliveryFailed):
    """Nothing failed, but the wait ran out: Kafka is slow or away, so waiting again may
    help (the loop does, up to ``outage_timeout_s``)."""


@dataclass(slots=True)
class PendingBatch:
    next_offsets: dict[tuple[str, int], int]
    outstanding: int = 0
    sealed: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.sealed and self.outstanding == 0


class DeliveryTracker:
    def __init__(self, store: Callable[[dict[tuple[str, int], int]], None]) -> None:
        self._store = store
        self._pending: deque[PendingBatch] = deque()

    def open(self, next_offsets: dict[tuple[str, int], int]) -> PendingBatch:
        batch = PendingBatch(next_offsets)
        self._pending.append(batch)
        return batch

    @staticmethod
    def sent(batch: PendingBatch) -> None:
        batch.outstanding += 1

    def acknowledged(self, batch: PendingBatch, error: str | None) -> None:
        batch.outstanding -= 1
        if error is not None:
            batch.errors.append(error)

    def seal(self, batch: PendingBatch) -> None:
        """No more outputs will be added to this batch."""
        batch.sealed = True
        self.advance()

    def advance(self) -> int:
        """Store offsets of the leading finished batches; returns how many were released."""
        released = 0
        while self._pending and self._pending[0].done:
            batch = self._pending[0]
            if batch.errors:  # stays at the head: nothing after it is ever stored
                raise DeliveryFailed(f"delivery failed: {batch.errors[0]}")
            self._pending.popleft()
            self._store(batch.next_offsets)
            released += 1
        return released

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions were lost: their offsets must not be committed by anyone here."""
        for batch in self._pending:
            for key in partitions:
                batch.next_offsets.pop(key, None)

    def forget_all(self) -> None:
        """The consumer itself was lost (fenced): no offset in flight may be committed."""
        for batch in self._pending:
            batch.next_offsets.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)
