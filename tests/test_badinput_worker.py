"""Fuzz the real worker on the real Kafka and Redis with bad input among good input.

Why: the decoder's property tests show each bad message gets the right reason; only the
running worker shows that a dead letter carries its origin, that good events around bad
ones are still processed, that no partition stalls behind a bad message (the group's
committed offsets reach the end of every partition) and that the worker survives.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from tests.badinput import (
    CATALOG_CATEGORIES,
    EVENT_CATEGORIES,
    Bad,
    Limits,
    odd_unicode_event,
    valid_catalog_item,
    valid_event,
)
from tests.helpers import TopicReader, body_of, headers_of, running_worker, wait_until
from worker.config import Settings
from worker.decode import DeadLetterReason

pytestmark = pytest.mark.integration

BAD_MESSAGES = 1500
GOOD_MESSAGES = 400
DUPLICATES = 60


def _produce_tracked(
    settings: Settings, topic: str, messages: list[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Produce in order; returns each message's (partition, offset)."""
    where: list[tuple[int, int]] = [(-1, -1)] * len(messages)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            assert error is None, error
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            where[index] = (partition, offset)

        return report

    for index, (key, value) in enumerate(messages):
        producer.produce(topic, key=key, value=value, on_delivery=delivered(index))
        producer.poll(0)
    assert producer.flush(60) == 0
    return where


def _limits(settings: Settings) -> Limits:
    """The worker's limits; 'now' a little ahead so a far-future event stays far ahead."""
    return Limits(
        max_bytes=settings.max_message_bytes,
        max_id_length=settings.max_id_length,
        now=datetime.now(UTC) + timedelta(minutes=2),
        min_event_time=settings.min_event_time,
    )


def _stream(
    rng: random.Random, limits: Limits
) -> tuple[list[tuple[bytes | None, bytes | None]], list[Bad | None], list[str]]:
    """Bad and good messages shuffled, then repeats of some good ones after their original.

    Returns the messages, what each must become (a Bad, or None for good) and the good
    event ids.
    """
    categories = sorted(EVENT_CATEGORIES)
    entries: list[tuple[bytes | None, bytes | None, Bad | None, str]] = []
    for n in range(BAD_MESSAGES):
        bad = EVENT_CATEGORIES[categories[n % len(categories)]](rng, limits)
        key = rng.choice([None, f"u-{rng.randrange(50)}".encode()])
        entries.append((key, bad.raw, bad, ""))
    for n in range(GOOD_MESSAGES):
        user = f"u-{rng.randrange(50)}"
        if n % 4 == 0:
            raw, body = odd_unicode_event(rng, limits)
        else:
            body = valid_event(rng, limits, user=user)
            raw = orjson.dumps(body)
        entries.append((body["user_id"].encode(), raw, None, body["event_id"]))
    rng.shuffle(entries)
    goods = [k for k, entry in enumerate(entries) if entry[2] is None]
    for original in sorted(rng.sample(goods, DUPLICATES), reverse=True):
        same_key, same_value, _, _ = entries[original]
        later = rng.randrange(original + 1, len(entries) + 1)
        repeat = Bad(same_value, DeadLetterReason.DUPLICATE, "event_id")
        entries.insert(later, (same_key, same_value, repeat, ""))
    messages = [(key, raw) for key, raw, _, _ in entries]
    return messages, [bad for _, _, bad, _ in entries], [e for *_, e in entries if e]


def _covering(event_ids: set[str]) -> Callable[[list[Message]], bool]:
    """True once the lists read so far cover every one of ``event_ids``."""
    covered: set[str] = set()
    read = 0

    def check(seen: list[Message]) -> bool:
        nonlocal read
        for message in seen[read:]:
            covered.update(body_of(message).get("covered_event_ids", []))
        read = len(seen)
        return covered >= event_ids

    return check


def _committed_to_the_end(settings: Settings) -> bool:
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group_id}
    )
    try:
        partitions = [TopicPartition(settings.events_topic, p) for p in range(2)]
        committed = consumer.committed(partitions, timeout=10)
        ends = [consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions]
    finally:
        consumer.close()
    return [max(p.offset, 0) for p in committed] == ends


def _dlq_by_origin(dlq: TopicReader) -> dict[tuple[str, int, int], Message]:
    found = {}
    for message in dlq.messages:
        headers = headers_of(message)
        origin = (
            headers["tailor.dlq.source.topic"].decode(),
            int(headers["tailor.dlq.source.partition"]),
            int(headers["tailor.dlq.source.offset"]),
        )
        assert origin not in found, f"dead-lettered twice: {origin}"
        found[origin] = message
    return found


def test_fuzzed_events_dead_letter_with_reason_and_origin_and_nothing_stalls(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    settings = settings.with_overrides(max_message_bytes=4096, max_id_length=64)
    messages, expected, good_ids = _stream(random.Random(20261125), _limits(settings))
    dlq = reader(settings.dlq_topic)
    recommendations = reader(settings.recommendations_topic)
    letters = sum(bad is not None for bad in expected)
    started = time.monotonic()
    with running_worker(settings) as worker:
        where = _produce_tracked(settings, settings.events_topic, messages)
        dlq.wait_for(lambda seen: len(seen) >= letters, timeout_s=90)
        recommendations.wait_for(_covering(set(good_ids)), timeout_s=90)
        wait_until(lambda: _committed_to_the_end(settings), timeout_s=30)
        assert worker.stats.dead_lettered == letters
        assert worker.stats.processed == len(good_ids)
    elapsed = time.monotonic() - started

    by_origin = _dlq_by_origin(dlq)
    assert len(by_origin) == letters
    for (key, raw), bad, (partition, offset) in zip(messages, expected, where, strict=True):
        origin = (settings.events_topic, partition, offset)
        if bad is None:
            assert origin not in by_origin, f"a good event was dead-lettered: {raw!r}"
            continue
        letter = by_origin[origin]
        headers = headers_of(letter)
        reason = headers["tailor.dlq.reason"].decode()
        assert reason == bad.reason.value, f"{raw!r}: {reason} {headers['tailor.dlq.detail']!r}"
        assert (letter.value() or b"") == (raw or b""), "the DLQ keeps the original bytes"
        assert letter.key() == key
        assert headers["tailor.dlq.detail"]
    print(f"{len(messages)} messages ({letters} dead letters) handled in {elapsed:.1f} s")


def test_bad_catalog_records_dead_letter_and_loading_goes_on(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    rng = random.Random(7)
    limits = _limits(settings)
    good = [valid_catalog_item(rng, f"item-{n}") for n in range(20)]
    bad = [CATALOG_CATEGORIES["catalog_broken"](rng, limits) for _ in range(30)]
    records: list[tuple[bytes | None, bytes | None]] = [
        (item["item_id"].encode(), orjson.dumps(item)) for item in good
    ]
    for n, letter in enumerate(bad):  # bad records among the good, before and after them
        records.insert(n * 2, (f"bad-{n}".encode(), letter.raw))
    _produce_tracked(settings, settings.catalog_topic, records)
    dlq = reader(settings.dlq_topic)
    with running_worker(settings) as worker:
        assert worker.recommender.catalog.size == len(good)  # loaded before serving
        late = valid_catalog_item(rng, "item-late")
        late_bad = CATALOG_CATEGORIES["catalog_broken"](rng, limits)
        _produce_tracked(
            settings,
            settings.catalog_topic,
            [(b"late-bad", late_bad.raw), (b"item-late", orjson.dumps(late))],
        )
        wait_until(lambda: worker.recommender.catalog.size == len(good) + 1)
        dlq.wait_for(lambda seen: len(seen) == len(bad) + 1)

    reasons: dict[bytes | None, str] = {}
    for message in dlq.messages:
        headers = headers_of(message)
        assert headers["tailor.dlq.source.topic"].decode() == settings.catalog_topic
        assert int(headers["tailor.dlq.source.offset"]) >= 0
        reasons[message.key()] = headers["tailor.dlq.reason"].decode()
    expected: dict[bytes | None, Any] = {f"bad-{n}".encode(): b.reason for n, b in enumerate(bad)}
    expected[b"late-bad"] = late_bad.reason
    assert reasons == {key: reason.value for key, reason in expected.items()}
