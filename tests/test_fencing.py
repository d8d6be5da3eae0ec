"""A fenced static member rebuilds its consumer instead of stopping, on the real broker.

Why: with ``group.instance.id`` (static membership, one id per StatefulSet pod) the broker
fences a member when another process joins under the same id, and librdkafka reports it
as a fatal error: that consumer can never be used again. The chaos suite once saw a
broker restart fence a worker that way, and the worker, which raised on every fatal
error, stalled. Here a real second consumer takes the worker's instance id while events
keep coming: the worker must log it, count it, replace its consumer (which fences the
intruder back), take its partitions again and apply every event exactly once.
"""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, KafkaError
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.driver import applied_counts
from tests.helpers import event, produce_events, tailor_process, wait_until
from worker.config import Settings
from worker.state.store import UserStore

pytestmark = pytest.mark.integration

USERS = 12
PER_PHASE = 5  # events per user in each of the three phases


def test_a_fenced_static_member_rebuilds_its_consumer_and_applies_every_event_once(
    settings: Settings, tmp_path: Path
) -> None:
    instance = f"{settings.group_id}-pod-0"
    static = settings.with_overrides(
        kafka_extra={"group.instance.id": instance, "session.timeout.ms": "10000"}
    )
    client = redis.Redis.from_url(settings.redis_url)
    store = UserStore(client, settings)
    users = [f"fenced-u{n}" for n in range(USERS)]
    log = tmp_path / "worker.log"

    def applied_all(phases: int) -> bool:
        return all(n == phases * PER_PHASE for n in applied_counts(client, store, users).values())

    def send_phase() -> None:
        produce_events(settings, [event(u, f"i{k}") for u in users for k in range(PER_PHASE)])

    with tailor_process(static, log) as worker:
        wait_until(lambda: f"assigned {settings.events_topic}[" in log.read_text(), 60)
        send_phase()
        wait_until(lambda: applied_all(1), 60)

        # The intruder joins under the worker's instance id: the broker hands it the
        # member's place and fences the worker. It consumes but never commits.
        intruder_errors: list[KafkaError] = []
        intruder = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": settings.group_id,
                "group.instance.id": instance,
                "session.timeout.ms": 10000,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "error_cb": intruder_errors.append,
            }
        )
        intruder.subscribe([settings.events_topic])
        stop = threading.Event()
        polling = threading.Thread(
            target=_poll_until, args=(intruder, stop, intruder_errors), daemon=True
        )
        polling.start()
        try:
            wait_until(lambda: "fatal Kafka consumer error" in log.read_text(), 60)
            send_phase()  # while the worker rejoins: its new member must apply these
            # The worker's new member takes the instance id back: the intruder is fenced.
            wait_until(
                lambda: any(e.fatal() or e.code() == KafkaError._FATAL for e in intruder_errors), 60
            )
        finally:
            stop.set()
            polling.join(30)
            intruder.close()
        send_phase()
        wait_until(lambda: applied_all(3), 90)
        rebuilds = _sample(worker.metrics_url, "tailor_consumer_rebuilds_total")
    # Stopped cleanly (exit status 0, checked by tailor_process); nothing applied twice.
    assert applied_all(3), applied_counts(client, store, users)
    assert rebuilds == 1
    text = log.read_text()
    assert text.count("fatal Kafka consumer error") == 1, text[-3000:]
    assert "Static consumer fenced" in text, text[-3000:]
    client.close()


def _poll_until(consumer: Consumer, stop: threading.Event, errors: list[KafkaError]) -> None:
    """Serve the intruder's group membership until told to stop, keeping its errors
    (librdkafka hands a consumer's fatal error back from ``poll`` as well)."""
    while not stop.is_set():
        message = consumer.poll(0.2)
        if message is not None and (error := message.error()) is not None:
            errors.append(error)


def _sample(metrics_url: str, name: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported")
