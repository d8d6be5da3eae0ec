"""Offset release after delivery, and dead-letter headers.

Why: committing an offset before its outputs are acknowledged loses recommendations on
a crash; committing a later batch past an earlier unfinished one does the same. The DLQ
headers are how an operator finds where a bad message came from and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest
from confluent_kafka import Message

from worker.decode import DeadLetter, DeadLetterReason
from worker.transport.delivery import DeliveryFailed, DeliveryTracker
from worker.transport.dlq import HEADER_PREFIX, dead_letter_headers

Offsets = dict[tuple[str, int], int]


def _tracker() -> tuple[DeliveryTracker, list[Offsets]]:
    stored: list[Offsets] = []
    return DeliveryTracker(lambda offsets: stored.append(dict(offsets))), stored


def test_offsets_stored_only_when_sealed_and_acknowledged() -> None:
    tracker, stored = _tracker()
    batch = tracker.open({("events", 0): 11})
    tracker.sent(batch)
    tracker.sent(batch)
    tracker.acknowledged(batch, None)
    assert tracker.advance() == 0
    tracker.acknowledged(batch, None)
    assert tracker.advance() == 0  # every output acknowledged, but more may still come
    assert stored == []
    tracker.seal(batch)
    assert stored == [{("events", 0): 11}]
    assert tracker.pending == 0


def test_sealed_batch_waits_for_its_acknowledgements() -> None:
    tracker, stored = _tracker()
    batch = tracker.open({("events", 1): 5})
    tracker.sent(batch)
    tracker.seal(batch)
    assert stored == []
    assert tracker.pending == 1
    tracker.acknowledged(batch, None)
    assert tracker.advance() == 1
    assert stored == [{("events", 1): 5}]


def test_batch_without_outputs_is_released_when_sealed() -> None:
    tracker, stored = _tracker()
    tracker.seal(tracker.open({("events", 0): 3}))
    assert stored == [{("events", 0): 3}]


def test_later_batch_waits_for_an_earlier_unfinished_one() -> None:
    tracker, stored = _tracker()
    first = tracker.open({("events", 0): 10})
    tracker.sent(first)
    tracker.seal(first)
    second = tracker.open({("events", 0): 20, ("events", 1): 7})
    tracker.sent(second)
    tracker.seal(second)
    tracker.acknowledged(second, None)
    assert tracker.advance() == 0
    assert stored == []
    assert tracker.pending == 2
    tracker.acknowledged(first, None)
    assert tracker.advance() == 2
    assert stored == [{("events", 0): 10}, {("events", 0): 20, ("events", 1): 7}]
    assert tracker.pending == 0
    assert tracker.advance() == 0


def test_failed_delivery_raises_and_stores_nothing() -> None:
    tracker, stored = _tracker()
    batch = tracker.open({("events", 0): 10})
    tracker.sent(batch)
    tracker.sent(batch)
    tracker.acknowledged(batch, None)
    tracker.acknowledged(batch, "Local: Message timed out")
    with pytest.raises(DeliveryFailed, match="Message timed out"):
        tracker.seal(batch)
    assert stored == []


def test_failure_in_a_later_batch_keeps_the_earlier_one() -> None:
    tracker, stored = _tracker()
    first = tracker.open({("events", 0): 10})
    tracker.seal(first)
    second = tracker.open({("events", 0): 20})
    tracker.sent(second)
    tracker.seal(second)
    tracker.acknowledged(second, "broker down")
    with pytest.raises(DeliveryFailed):
        tracker.advance()
    assert stored == [{("events", 0): 10}]


def test_forget_drops_lost_partitions() -> None:
    tracker, stored = _tracker()
    first = tracker.open({("events", 0): 10, ("events", 1): 4})
    tracker.sent(first)
    tracker.seal(first)
    second = tracker.open({("events", 1): 9, ("events", 2): 1})
    tracker.seal(second)
    tracker.forget({("events", 1)})
    tracker.acknowledged(first, None)
    tracker.advance()
    assert stored == [{("events", 0): 10}, {("events", 2): 1}]


def test_forget_all_stores_nothing_in_flight_but_releases_the_batches() -> None:
    """A fenced consumer is replaced: no offset of its batches may reach the new one."""
    tracker, stored = _tracker()
    first = tracker.open({("events", 0): 10, ("events", 1): 4})
    tracker.sent(first)
    tracker.seal(first)
    tracker.forget_all()
    tracker.acknowledged(first, None)
    tracker.advance()
    later = tracker.open({("events", 0): 12})
    tracker.seal(later)
    assert stored == [{}, {("events", 0): 12}]
    assert tracker.pending == 0


# -- dead-letter headers ----------------------------------------------------------------


@dataclass
class FakeMessage:
    """The four Message methods the header builder reads."""

    original: list[tuple[str, bytes]] | None = field(default_factory=list)
    coordinates: tuple[str, int, int] = ("tailor.events", 3, 1234)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.original

    def topic(self) -> str:
        return self.coordinates[0]

    def partition(self) -> int:
        return self.coordinates[1]

    def offset(self) -> int:
        return self.coordinates[2]

    def as_message(self) -> Message:
        return cast(Message, self)


def test_dead_letter_headers_keep_originals_and_add_origin() -> None:
    letter = DeadLetter(DeadLetterReason.MISSING_FIELD, "item_id", "item_id is required")
    original = [("traceparent", b"00-abc-def-01"), ("source", b"web")]
    headers = dead_letter_headers(letter, FakeMessage(original=list(original)).as_message())
    assert headers[: len(original)] == original
    added = dict(headers[len(original) :])
    assert added == {
        f"{HEADER_PREFIX}reason": b"missing_field",
        f"{HEADER_PREFIX}field": b"item_id",
        f"{HEADER_PREFIX}detail": b"item_id is required",
        f"{HEADER_PREFIX}source.topic": b"tailor.events",
        f"{HEADER_PREFIX}source.partition": b"3",
        f"{HEADER_PREFIX}source.offset": b"1234",
    }


def test_dead_letter_headers_without_original_headers() -> None:
    letter = DeadLetter(DeadLetterReason.EMPTY, "", "message has no value")
    headers = dead_letter_headers(letter, FakeMessage(original=None).as_message())
    names = [name for name, _ in headers]
    assert names[0] == f"{HEADER_PREFIX}reason"
    assert len(names) == 6
    assert dict(headers)[f"{HEADER_PREFIX}field"] == b""


def test_dead_letter_detail_with_odd_text_is_still_bytes() -> None:
    letter = DeadLetter(DeadLetterReason.INVALID_FIELD, "user_id", "bad \udcff surrogate é")
    headers = dict(dead_letter_headers(letter, FakeMessage().as_message()))
    detail = headers[f"{HEADER_PREFIX}detail"]
    assert isinstance(detail, bytes)
    assert "é".encode() in detail


def test_nothing_after_a_failed_batch_is_ever_stored() -> None:
    stored: list[dict[tuple[str, int], int]] = []
    tracker = DeliveryTracker(stored.append)
    failed = tracker.open({("t", 0): 5})
    tracker.sent(failed)
    later = tracker.open({("t", 0): 9})
    tracker.sent(later)
    tracker.acknowledged(failed, "broker said no")
    tracker.acknowledged(later, None)
    tracker.seal(later)
    with pytest.raises(DeliveryFailed):
        tracker.seal(failed)
    with pytest.raises(DeliveryFailed):  # asking again must not skip past the failure
        tracker.advance()
    assert stored == []
