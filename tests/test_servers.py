"""Smoke tests for the real servers in ``tests/servers.py``.

Why: every integration test builds on these fixtures; when the broker or Redis cannot
start, or a restart loses data, this file should be the one that fails, with the
server's log in the error, rather than some worker test timing out mysteriously.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

# Same class as confluent_kafka.admin.NewTopic, whose re-export mypy --strict rejects.
from confluent_kafka.cimpl import NewTopic

from tests.servers import BOOTSTRAP_ENV, REDIS_URL_ENV, KafkaServer, RedisServer

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str) -> str:
    """Create a fresh one-partition topic, so the order of all its messages is defined."""
    topic = f"test-servers-{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )
    return topic


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0, "messages still in the producer queue after 30 s"


def _consume(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> list[bytes]:
    """Read ``count`` messages from the start of ``topic`` with a brand-new consumer group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-servers-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(received) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = message.value()
            assert value is not None
            received.append(value)
    finally:
        consumer.close()
    return received


def test_kafka_round_trip_keeps_order(kafka_bootstrap: str) -> None:
    topic = _create_topic(kafka_bootstrap)
    values = [f"message-{i}".encode() for i in range(10)]
    _produce(kafka_bootstrap, topic, values)
    assert _consume(kafka_bootstrap, topic, len(values)) == values


def test_redis_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"test-servers:{uuid.uuid4().hex}"
    try:
        assert client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
    finally:
        client.delete(key)
        client.close()


@pytest.mark.skipif(
    bool(os.environ.get(BOOTSTRAP_ENV)), reason=f"{BOOTSTRAP_ENV} set: no local broker"
)
def test_kafka_restart_keeps_address_and_data(tmp_path: Path) -> None:
    server = KafkaServer(bootstrap="", directory=tmp_path).start()
    try:
        topic = _create_topic(server.bootstrap)
        _produce(server.bootstrap, topic, [b"before-restart"])
        address = server.bootstrap
        server.restart()
        assert server.bootstrap == address
        assert _consume(server.bootstrap, topic, 1) == [b"before-restart"]
    finally:
        server.stop()


@pytest.mark.skipif(
    bool(os.environ.get(REDIS_URL_ENV)), reason=f"{REDIS_URL_ENV} set: no local Redis"
)
def test_redis_restart_with_persistence_keeps_data(tmp_path: Path) -> None:
    server = RedisServer(url="", directory=tmp_path, persist=True).start()
    try:
        with redis.Redis.from_url(server.url) as client:
            client.set("survivor", b"yes")
        url = server.url
        server.restart()
        assert server.url == url
        with redis.Redis.from_url(server.url) as client:
            assert client.get("survivor") == b"yes"
    finally:
        server.stop()
