"""One core: the worker on real Kafka and Redis and the harness publish the same lists."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from tests.helpers import TopicReader, body_of, produce, running_worker
from worker.config import Settings
from worker.evaluate.harness import TailorModel
from worker.evaluate.logs import load_log
from worker.state.store import UserStore, connect_redis
from worker.transport.kafka import create_topics

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parents[1] / "worker" / "sample"
EVENTS = 150


def test_worker_and_harness_publish_the_same_lists(kafka_bootstrap: str, redis_url: str) -> None:
    log = load_log(SAMPLE / "events.jsonl.gz", catalog_path=SAMPLE / "catalog.jsonl.gz")
    events = log.events[:EVENTS]
    # One partition and batches of one event: both sides then see identical batches.
    base = Settings(bootstrap_servers=kafka_bootstrap, redis_url=redis_url, batch_size=1)
    settings = base.in_namespace(uuid.uuid4().hex[:10], metrics_port=0, batch_wait_ms=0)
    create_topics(settings, partitions=1)
    produce(
        settings,
        settings.catalog_topic,
        [
            (item_id.encode(), item.model_dump_json().encode())
            for item_id, item in log.catalog.items()
        ],
    )
    produce(
        settings,
        settings.events_topic,
        [(e.user_id.encode(), e.model_dump_json().encode()) for e in events],
    )
    reader = TopicReader(settings, settings.recommendations_topic)
    try:
        with running_worker(settings):
            messages = reader.wait_for(lambda seen: len(seen) >= EVENTS, timeout_s=90)
    finally:
        reader.close()
    published = [body_of(message) for message in messages]
    assert [body["source_event_id"] for body in published] == [e.event_id for e in events]

    harness_settings = base.in_namespace(uuid.uuid4().hex[:10])
    store = UserStore(connect_redis(harness_settings), harness_settings)
    model = TailorModel(harness_settings, log.catalog, store)
    for event, body in zip(events, published, strict=True):
        model.learn([event])
        [listed] = model.recommend([event], harness_settings.top_k)
        worker_items = [item["item_id"] for item in body["items"]]
        assert listed == worker_items, f"lists differ after {event.event_id}"
    assert orjson.dumps(published[-1]["items"])  # the published form is plain JSON
