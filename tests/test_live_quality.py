"""The live quality counters of a real ``tailor run`` equal ``tailor evaluate`` on the same log.

A slice of the bundled sample log goes through the worker on real Kafka and Redis (one
partition, batches of one event, as tests/test_evaluate_parity.py arranges it, so the
worker and the harness see identical batches); the counters its /metrics exports must
equal the harness's prequential counts on the same events, and the bias gauges must be
set once a window closes.
"""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TopicReader, produce, tailor_process
from worker.config import Settings
from worker.evaluate.harness import TailorModel, replay
from worker.evaluate.logs import load_log
from worker.transport.kafka import create_topics

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parents[1] / "worker" / "sample"
EVENTS = 200


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str
) -> float:
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and match.items() <= dict(labels).items()
    )


def test_the_worker_counts_live_what_tailor_evaluate_counts_offline(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    log = load_log(SAMPLE / "events.jsonl.gz", catalog_path=SAMPLE / "catalog.jsonl.gz")
    events = log.events[:EVENTS]
    base = Settings(bootstrap_servers=kafka_bootstrap, redis_url=redis_url, batch_size=1)
    settings = base.in_namespace(
        uuid.uuid4().hex[:10], metrics_port=0, batch_wait_ms=0, quality_window_lists=50
    )
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
        with tailor_process(settings, tmp_path / "worker.log") as worker:
            reader.wait_for(lambda seen: len(seen) >= EVENTS, timeout_s=120)
            samples = _samples(worker.metrics_url)
    finally:
        reader.close()

    offline = replay(events, [TailorModel(base, log.catalog)], k=20, batch_size=1)[0]
    offline5 = replay(events, [TailorModel(base, log.catalog)], k=10, batch_size=1)[0]
    assert offline.counted > 20  # returning customers in the slice: something to compare

    live = {"variant": "control", "type": "purchase", "segment": "unknown"}
    assert _total(samples, "tailor_live_scored_events_total", **live) == offline.counted
    assert _total(samples, "tailor_live_scored_events_total") == offline.counted
    assert _total(samples, "tailor_live_hits_total", k="20") == offline.hits[20]
    assert _total(samples, "tailor_live_hits_total", k="10") == offline.hits[10]
    assert _total(samples, "tailor_live_hits_total", k="5") == offline5.hits[5]
    assert _total(samples, "tailor_live_reciprocal_rank_total") == pytest.approx(
        offline.reciprocal_ranks[20]
    )
    assert _total(samples, "tailor_live_hits_by_reason_total") == offline.hits[20]

    # Four windows of 50 lists closed: the bias gauges hold the last one's figures.
    assert _total(samples, "tailor_live_window_lists", variant="control") == 50
    for gauge in ("tailor_live_popular_share", "tailor_live_catalog_coverage"):
        assert 0 < _total(samples, gauge, variant="control") <= 1, gauge
    assert 0 <= _total(samples, "tailor_live_exposure_gini", variant="control") < 1
    # The sample catalog has titles and tags but no categories (tests/test_quality.py
    # counts categories per list).
    assert ("tailor_live_categories_per_list", (("variant", "control"),)) in samples
    assert _total(samples, "tailor_live_categories_per_list") == 0
