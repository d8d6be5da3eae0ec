"""Every Prometheus series Tailor exposes, declared once, plus the HTTP endpoint.

Seconds are the unit, labels are bounded (topic, partition, DLQ reason; variant, event
type, segment, k and reason of the live quality series): never a user or item id. The
registry is injectable so tests and the demo get fresh, isolated series. ``/metrics`` is
prometheus-client's own WSGI exposition; ``/healthz`` answers while the loop turns,
``/readyz`` while Kafka and Redis are reachable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from worker.quality.exposure import ExposureFigures
from worker.quality.live import KS, LiveCounts

__all__ = ["Health", "Metrics", "MetricsServer", "ServeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Every counter and histogram would also export a `*_created` series (its start
        # time in seconds), which doubles what a scrape holds and which no rule or
        # dashboard reads. The switch is prometheus-client's own, and process-wide.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "tailor_events_consumed", "Messages read from Kafka", ["topic"], registry=r
        )
        self.processed = Counter(
            "tailor_events_processed", "Valid events applied to state and models", registry=r
        )
        self.replayed = Counter(
            "tailor_events_replayed",
            "Events skipped because the user's state already reflected them (exactly once)",
            registry=r,
        )
        self.dead_lettered = Counter(
            "tailor_events_dead_lettered", "Messages sent to the DLQ", ["reason"], registry=r
        )
        self.published = Counter(
            "tailor_recommendations_published", "Recommendation lists delivered", registry=r
        )
        self.erased = Counter("tailor_users_erased", "Users erased by forget requests", registry=r)
        self.batch_size = Histogram(
            "tailor_batch_size", "Events per micro-batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "tailor_batch_processing_seconds",
            "Decode to produce, per micro-batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_publish = Histogram(
            "tailor_event_to_publish_seconds",
            "From the event's Kafka timestamp to its recommendation's delivery report",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_round_trip = Histogram(
            "tailor_redis_roundtrip_seconds",
            "One pipelined Redis round trip",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "tailor_consumer_lag",
            "Messages behind the end of the partition",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge("tailor_ready", "1 when Kafka and Redis are reachable", registry=r)
        self.paused_partitions = Gauge(
            "tailor_partitions_paused",
            "Assigned partitions paused while Redis is away (nothing is fetched for them)",
            registry=r,
        )
        self.catalog_items = Gauge(
            "tailor_catalog_items", "Items known from the catalog topic", registry=r
        )
        self.content_pending = Gauge(
            "tailor_content_neighbours_pending",
            "Catalog items whose text neighbours the background fill has not reached yet "
            "(0 once filled; a batch that needs one meanwhile computes it on the spot)",
            registry=r,
        )
        self.ranker_lessons = Counter(
            "tailor_ranker_lessons",
            "Pairwise updates of the River ranker (chosen item vs passed-over candidates)",
            registry=r,
        )
        self.consumer_rebuilds = Counter(
            "tailor_consumer_rebuilds",
            "Events consumers replaced after a fatal Kafka error (a fenced static member)",
            registry=r,
        )
        self.producer_queue_full = Counter(
            "tailor_producer_queue_full",
            "Outputs that found the producer's bounded local queue full and waited for "
            "acknowledgements (Kafka slow or away, or a burst larger than the queue)",
            registry=r,
        )
        self.stale_writes = Counter(
            "tailor_stale_writes",
            "User writes refused because a newer offset was already applied",
            registry=r,
        )
        self.offsets_voided = Counter(
            "tailor_offsets_voided",
            "Users whose stored offsets were of another id of the events topic (deleted and "
            "recreated, or another cluster) and were dropped instead of skipping events",
            registry=r,
        )
        self.model_offsets_voided = Counter(
            "tailor_model_offsets_voided",
            "Times the shared models' offsets were of another id of the events topic and "
            "were dropped, so its events and deltas count afresh",
            registry=r,
        )

        self.model_deltas = Counter(
            "tailor_model_deltas",
            "Model deltas read from the model topic, by what became of them: applied, own "
            "(made here, already learned), duplicate (already in the models, e.g. after a "
            "restart), refused (overlaps events already counted), corrupt",
            ["result"],
            registry=r,
        )
        self.model_deltas_published = Counter(
            "tailor_model_deltas_published", "Model deltas this worker published", registry=r
        )
        self.model_delta_bytes = Counter(
            "tailor_model_delta_bytes",
            "Bytes of model deltas, published (out) and read (in)",
            ["direction"],
            registry=r,
        )
        self.model_sync_lag = Gauge(
            "tailor_model_sync_lag_seconds",
            "Age of the newest model delta applied while more are waiting (0 when caught up)",
            registry=r,
        )
        self.model_diverged = Gauge(
            "tailor_model_diverged",
            "1 once this worker's models counted a delta differently from a reader of the "
            "model topic alone (it learned its own delta before an overlapping one from a "
            "worker that had lost its partitions): it writes no checkpoint until restarted",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "tailor_model_checkpoint_age_seconds",
            "Seconds since the newest model checkpoint this worker wrote or loaded",
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "tailor_model_checkpoint_bytes", "Size of the last model checkpoint", registry=r
        )
        self.checkpoint_seconds = Gauge(
            "tailor_model_checkpoint_write_seconds",
            "Time to snapshot, encode and store the last model checkpoint",
            registry=r,
        )
        self.checkpoints_refused = Counter(
            "tailor_model_checkpoints_refused",
            "Checkpoints refused at start-up (corrupt, truncated, other format or settings)",
            registry=r,
        )

        # Live quality (worker/quality/live.py): the prequential counts of `tailor evaluate`
        # on the lists actually published; labels variant, event type, segment, k, reason.
        quality = ["variant", "type", "segment"]
        self.live_scored = Counter(
            "tailor_live_scored_events",
            "Fresh events of users who had a list, with an item and a positive weight: "
            "scored against the list last published for the user",
            quality,
            registry=r,
        )
        self.live_hits = Counter(
            "tailor_live_hits",
            "Scored events whose item was in the first k items of the user's last list",
            [*quality, "k"],
            registry=r,
        )
        self.live_reciprocal_rank = Counter(
            "tailor_live_reciprocal_rank",
            "Sum of 1/rank of the scored events' items in the user's last list (0 beyond 20): "
            "divided by the scored events, MRR@20",
            quality,
            registry=r,
        )
        self.live_hits_by_reason = Counter(
            "tailor_live_hits_by_reason",
            "Hits at 20 by where the hit item came from (its strongest reason, the cold-start "
            "fill or exploration)",
            ["variant", "reason"],
            registry=r,
        )
        # Live bias and coverage (worker/quality/exposure.py), per closed window.
        self.live_window_lists = Gauge(
            "tailor_live_window_lists",
            "Lists published in the last closed window",
            ["variant"],
            registry=r,
        )
        self.live_popular_share = Gauge(
            "tailor_live_popular_share",
            "Share of the last window's published slots that went to the 1 % most popular items",
            ["variant"],
            registry=r,
        )
        self.live_exposure_gini = Gauge(
            "tailor_live_exposure_gini",
            "Gini coefficient of item exposure in the last window (0 even, 1 concentrated)",
            ["variant"],
            registry=r,
        )
        self.live_catalog_coverage = Gauge(
            "tailor_live_catalog_coverage",
            "Distinct items shown in the last window / items that could be shown",
            ["variant"],
            registry=r,
        )
        self.live_categories_per_list = Gauge(
            "tailor_live_categories_per_list",
            "Mean distinct catalog categories per published list in the last window",
            ["variant"],
            registry=r,
        )

    def count_quality(self, counts: LiveCounts) -> None:
        """One batch's live quality counts: one increment per label set, not per event."""
        for (variant, kind, segment), tally in counts.tallies.items():
            self.live_scored.labels(variant, kind, segment).inc(tally.scored)
            self.live_reciprocal_rank.labels(variant, kind, segment).inc(tally.reciprocal_rank)
            for k, hits in zip(KS, tally.hits, strict=True):
                self.live_hits.labels(variant, kind, segment, str(k)).inc(hits)
        for (variant, reason), hits in counts.hit_sources.items():
            self.live_hits_by_reason.labels(variant, reason).inc(hits)

    def set_exposure(self, figures: Mapping[str, ExposureFigures]) -> None:
        """A closed bias and coverage window's figures, per variant."""
        for variant, window in figures.items():
            self.live_window_lists.labels(variant).set(window.lists)
            self.live_popular_share.labels(variant).set(window.popular_share)
            self.live_exposure_gini.labels(variant).set(window.gini)
            self.live_catalog_coverage.labels(variant).set(window.coverage)
            self.live_categories_per_list.labels(variant).set(window.categories_per_list)

    def set_lag(self, lags: Iterable[tuple[str, int, int]]) -> None:
        for topic, partition, lag in lags:
            self.consumer_lag.labels(topic, str(partition)).set(lag)

    def clear_lag(self) -> None:
        """Forget partition series on rebalance so revoked partitions do not linger."""
        self.consumer_lag.clear()


class ServeMetrics:
    """The series of ``tailor serve`` (its own process and registry, on its own port).

    Requests are labelled by route template (``/v1/users/{user_id}/recommendations``),
    never by the path that holds the user id; unknown paths share the label ``unmatched``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # as in Metrics
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tailor_serve_requests",
            "HTTP requests answered by tailor serve, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "tailor_serve_request_seconds",
            "From a request's arrival to its response's last byte, by route template",
            ["route"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "tailor_serve_ready",
            "1 when Redis answered the last readiness check and a checkpoint is loaded",
            registry=r,
        )
        self.checkpoint_loads = Counter(
            "tailor_serve_checkpoint_loads",
            "Looks for a newer model checkpoint: loaded, unchanged, missing (none in Redis), "
            "refused (corrupt or of another format), failed (Redis away)",
            ["result"],
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "tailor_serve_checkpoint_age_seconds",
            "Seconds since the trending answers last changed (a newer checkpoint loaded)",
            registry=r,
        )


class Health:
    """Liveness is a heartbeat from the loop; readiness is set by whoever sees an outage."""

    def __init__(self, stale_after_s: float = 60.0) -> None:
        self.stale_after_s = stale_after_s
        self._beat = time.monotonic()
        self._ready = False
        self._why = "starting"

    def beat(self) -> None:
        self._beat = time.monotonic()

    def set_ready(self, ready: bool, why: str = "") -> None:
        self._ready, self._why = ready, why

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stale_after_s

    @property
    def ready(self) -> bool:
        return self._ready and self.alive

    @property
    def why(self) -> str:
        return self._why


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the worker's own log."""


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, in a daemon thread."""

    def __init__(self, metrics: Metrics, health: Health, host: str, port: int) -> None:
        exposition = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in ("/healthz", "/readyz"):
                ok = health.alive if path == "/healthz" else health.ready
                text = "ok\n" if ok else f"not ready: {health.why}\n"
                start_response(
                    "200 OK" if ok else "503 Service Unavailable",
                    [("Content-Type", "text/plain; charset=utf-8")],
                )
                return [text.encode()]
            return exposition(environ, start_response)  # type: ignore[no-any-return]

        self._server: WSGIServer = make_server(
            host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
