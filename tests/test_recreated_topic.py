"""The events topic deleted and created again, on the real Kafka broker and Redis server.

Why: Kafka numbers a recreated topic's messages from 0 again, so the offsets kept in
each user's state (which make replays harmless) would make every new event of a known
user look like a replay; issue 13 saw three new events all counted as ``replayed`` and
none applied. The offsets are stored with the topic's id and are void under another one.
"""

from __future__ import annotations

import logging
import time

import pytest
import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.helpers import event, produce_events, running_worker, wait_until
from worker.config import Settings
from worker.state.store import UserStore
from worker.transport.kafka import KafkaTopicIds, create_topics, make_admin

pytestmark = pytest.mark.integration


def _recreate(settings: Settings, topic: str, timeout_s: float = 60.0) -> None:
    """Delete ``topic`` with the admin client, then create it again once the broker lets
    us (deletion completes in the background: creating too early is refused)."""
    admin = make_admin(settings)
    admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
    deadline = time.monotonic() + timeout_s
    while topic not in create_topics(settings, partitions=2):
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} not created again within {timeout_s} s")
        time.sleep(0.5)


def _served(settings: Settings, topics: list[str], timeout_s: float = 60.0) -> None:
    """Wait until the broker serves offsets of every partition of ``topics``: on a loaded
    machine a topic just created has no leader yet for a while, and a worker starting
    then fails reading the model topic's bounds (NOT_LEADER_FOR_PARTITION)."""
    probe = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "probe"})
    deadline = time.monotonic() + timeout_s
    try:
        for topic in topics:
            for partition in probe.list_topics(topic, timeout=10).topics[topic].partitions:
                while True:
                    try:
                        probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
                        break
                    except KafkaException:
                        assert time.monotonic() < deadline, f"{topic} not served in time"
                        time.sleep(0.2)
    finally:
        probe.close()


def test_a_known_users_events_in_a_recreated_topic_are_all_applied(
    settings: Settings, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = settings.events_topic
    ids = KafkaTopicIds(settings)
    old_id = ids.topic_id(topic)
    assert len(old_id) == 22  # Kafka's topic UUID in its base64 form
    _served(settings, [topic, settings.model_topic, settings.catalog_topic])
    with running_worker(settings) as worker:
        produce_events(settings, [event("erin", f"item-{n}") for n in range(5)])
        wait_until(lambda: worker.stats.processed == 5)
        assert worker.topic_id == old_id

    try:
        _recreate(settings, topic)
    except KafkaException as error:  # pragma: no cover - says what the broker refused
        raise AssertionError(f"could not recreate {topic}: {error}") from error
    new_id = ids.topic_id(topic)  # retried while the broker cannot describe it yet
    assert new_id not in ("", old_id)
    _served(settings, [topic])

    with caplog.at_level(logging.INFO, logger="tailor.worker"), running_worker(settings) as worker:
        produce_events(settings, [event("erin", f"item-{n}") for n in (5, 6, 7)])
        wait_until(lambda: worker.stats.processed + worker.stats.replayed >= 3)
        stats = worker.stats
        wait_until(lambda: worker.recommender.totals.events == 8)  # the models learn them
        voided = worker.metrics.registry.get_sample_value("tailor_offsets_voided_total")
        assert worker.topic_id == new_id

    assert (stats.processed, stats.replayed, stats.voided) == (3, 0, 1)
    assert voided == 1
    assert any(m.startswith("offsets of 1 users void") and new_id in m for m in caplog.messages), (
        caplog.messages
    )
    store = UserStore(redis.Redis.from_url(redis_url), settings)
    state = store.read(["erin"])["erin"]
    assert state is not None
    assert (state.events, state.topic_id) == (8, new_id)
    assert max(state.offsets.values()) <= 2  # offsets of the new topic only
