"""The Prometheus endpoint, health probes, and label hygiene.

Why: Kubernetes routes traffic and restarts pods by /healthz and /readyz, and a label
carrying a user or item id would explode Prometheus's series count.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.metrics import MetricWrapperBase

from worker.metrics import Health, Metrics, MetricsServer
from worker.quality.exposure import ExposureFigures
from worker.quality.live import LiveCounts

FORBIDDEN_LABELS = {"user", "user_id", "item", "item_id", "event_id", "session_id"}


@pytest.fixture
def served() -> Iterator[tuple[Metrics, Health, str]]:
    metrics, health = Metrics(), Health()
    server = MetricsServer(metrics, health, "127.0.0.1", 0).start()
    try:
        yield metrics, health, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def test_metrics_endpoint_serves_the_series(served: tuple[Metrics, Health, str]) -> None:
    metrics, _, base = served
    metrics.consumed.labels("tailor.events").inc(3)
    metrics.dead_lettered.labels("not_json").inc()
    status, body = _get(f"{base}/metrics")
    assert status == 200
    assert 'tailor_events_consumed_total{topic="tailor.events"} 3.0' in body
    assert 'tailor_events_dead_lettered_total{reason="not_json"} 1.0' in body
    for name in (
        "tailor_events_processed_total",
        "tailor_events_replayed_total",
        "tailor_recommendations_published_total",
        "tailor_users_erased_total",
        "tailor_batch_processing_seconds_bucket",
        "tailor_event_to_publish_seconds_bucket",
        "tailor_redis_roundtrip_seconds_bucket",
        "tailor_ready",
        "tailor_stale_writes_total",
    ):
        assert name in body, name
    assert "python_gc" not in body  # a private registry, not the process-global one


def test_no_created_series_is_exported(served: tuple[Metrics, Health, str]) -> None:
    """prometheus-client adds a ``*_created`` sample to every counter and histogram unless
    told not to: noise that no rule or dashboard reads."""
    metrics, _, base = served
    metrics.consumed.labels("tailor.events").inc()
    metrics.batch_seconds.observe(0.01)
    _, body = _get(f"{base}/metrics")
    samples = [line.split("{")[0].split(" ")[0] for line in body.splitlines()]
    samples = [name for name in samples if name and not name.startswith("#")]
    assert "tailor_events_consumed_total" in samples
    assert "tailor_batch_processing_seconds_count" in samples
    assert [name for name in samples if name.endswith("_created")] == []


def test_health_and_readiness(served: tuple[Metrics, Health, str]) -> None:
    _, health, base = served
    assert _get(f"{base}/healthz") == (200, "ok\n")
    status, text = _get(f"{base}/readyz")
    assert status == 503
    assert "starting" in text
    health.set_ready(True)
    assert _get(f"{base}/readyz") == (200, "ok\n")
    health.set_ready(False, "redis unreachable")
    assert _get(f"{base}/readyz") == (503, "not ready: redis unreachable\n")


def test_stale_heartbeat_fails_liveness_and_readiness() -> None:
    health = Health(stale_after_s=0.0)
    health.set_ready(True)
    assert not health.alive
    assert not health.ready
    fresh = Health(stale_after_s=60.0)
    fresh.beat()
    assert fresh.alive
    assert not fresh.ready  # alive, but nobody said Kafka and Redis are reachable


def test_no_metric_is_labelled_by_user_or_item() -> None:
    metrics = Metrics()
    declared = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    assert len(declared) >= 10
    for metric in declared:
        names = set(metric._labelnames)
        assert not names & FORBIDDEN_LABELS, metric
        # bounded: topics, partitions, DLQ reasons, model delta outcomes and directions;
        # the live quality series' variant, event type, segment (a configured set, see
        # tests/test_quality.py), k and hit reason
        bounded = {"topic", "partition", "reason", "result", "direction"}
        assert names <= bounded | {"variant", "type", "segment", "k"}, metric
    # and what the registry actually exposes, once every labelled series exists
    metrics.consumed.labels("tailor.events").inc()
    metrics.dead_lettered.labels("empty").inc()
    metrics.set_lag([("tailor.events", 0, 5)])
    metrics.model_deltas.labels("applied").inc()
    metrics.model_delta_bytes.labels("out").inc(100)
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert not set(sample.labels) & FORBIDDEN_LABELS, sample


def test_clear_lag_removes_partition_series() -> None:
    metrics = Metrics()
    metrics.set_lag([("tailor.events", 0, 5), ("tailor.events", 1, 7)])
    sample = metrics.registry.get_sample_value
    assert sample("tailor_consumer_lag", {"topic": "tailor.events", "partition": "0"}) == 5
    assert sample("tailor_consumer_lag", {"topic": "tailor.events", "partition": "1"}) == 7
    metrics.set_lag([("tailor.events", 1, 2)])
    assert sample("tailor_consumer_lag", {"topic": "tailor.events", "partition": "1"}) == 2
    metrics.clear_lag()
    assert sample("tailor_consumer_lag", {"topic": "tailor.events", "partition": "0"}) is None
    assert sample("tailor_consumer_lag", {"topic": "tailor.events", "partition": "1"}) is None


def test_each_metrics_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.processed.inc(4)
    assert first.registry.get_sample_value("tailor_events_processed_total") == 4
    assert second.registry.get_sample_value("tailor_events_processed_total") == 0


def test_a_batch_of_live_quality_counts_becomes_counter_increments_by_label() -> None:
    metrics = Metrics()
    counts = LiveCounts()
    counts.score(("default", "click", "mobile"), "b", ["a", "b", "c"], "0x1")  # rank 2
    counts.score(("default", "click", "mobile"), "z", ["a", "b", "c"], "0x1")  # a miss
    counts.score(("default", "view", "other"), "a", ["a"], "f")  # rank 1
    metrics.count_quality(counts)
    metrics.count_quality(counts)  # a second batch adds up
    sample = metrics.registry.get_sample_value
    click = {"variant": "default", "type": "click", "segment": "mobile"}
    assert sample("tailor_live_scored_events_total", click) == 4
    assert sample("tailor_live_hits_total", {**click, "k": "5"}) == 2
    assert sample("tailor_live_reciprocal_rank_total", click) == 1.0
    view = {"variant": "default", "type": "view", "segment": "other"}
    assert sample("tailor_live_hits_total", {**view, "k": "20"}) == 2
    by_reason = {"variant": "default", "reason": "explore"}
    assert sample("tailor_live_hits_by_reason_total", by_reason) == 2
    assert sample("tailor_live_hits_by_reason_total", {**by_reason, "reason": "fill"}) == 2

    metrics.set_exposure({"b": ExposureFigures(40, 0.25, 0.5, 0.1, 2.5)})
    assert sample("tailor_live_window_lists", {"variant": "b"}) == 40
    assert sample("tailor_live_popular_share", {"variant": "b"}) == 0.25
    assert sample("tailor_live_exposure_gini", {"variant": "b"}) == 0.5
    assert sample("tailor_live_catalog_coverage", {"variant": "b"}) == 0.1
    assert sample("tailor_live_categories_per_list", {"variant": "b"}) == 2.5
