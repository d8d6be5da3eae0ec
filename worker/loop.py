"""The worker loop: the one module that wires the stages together.

Per micro-batch: consume -> decode (bad -> DLQ) -> read users (one Redis round trip) ->
recommender core -> write users (one round trip, offset-guarded) -> produce lists ->
offsets stored once every output of the batch is acknowledged -> librdkafka commits them
in the background. A crash therefore replays, and the offset guard in Redis makes the
replay harmless for per-user state (see DESIGN.md "Delivery semantics").
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.config import Settings
from worker.contract import CatalogItem
from worker.decode import DeadLetter, Decoded, RecentEventIds, decode_catalog_item, decode_event
from worker.metrics import Health, Metrics
from worker.quality.exposure import ExposureWindows
from worker.recommend import BatchResult, Envelope, Recommender
from worker.state.store import (
    RedisCheckpoints,
    RedisClient,
    StateStore,
    StoreUnavailable,
    UserStore,
    connect_redis,
)
from worker.state.user import UserWrite
from worker.sync.model_sync import CheckpointStore, ModelLog, ModelSync, new_origin
from worker.transport.delivery import (
    DeliveryFailed,
    DeliveryTracker,
    NotYetAcknowledged,
    PendingBatch,
)
from worker.transport.dlq import dead_letter_headers
from worker.transport.kafka import (
    KafkaCatalogFeed,
    KafkaTopicIds,
    KafkaUnavailable,
    check_kafka,
    make_consumer,
    make_producer,
)
from worker.transport.model_log import KafkaModelLog
from worker.transport.ports import CatalogFeed, EventSource, Incoming, OutputSink, TopicIds

__all__ = ["CLOSE_FLUSH_TIMEOUT_S", "Worker", "WorkerStats"]

log = logging.getLogger("tailor.worker")
T = TypeVar("T")

_MAX_BACKOFF_S = 5.0
#: How long a stopping worker waits for its outputs to be acknowledged before it leaves
#: without committing them (they are replayed). Kubernetes' grace period is sized from it.
CLOSE_FLUSH_TIMEOUT_S = 30.0
_MODELS_LAGGING = "models lag the model topic"
_KAFKA_WAIT = "Kafka is not acknowledging outputs"
#: How long Kafka may keep the loop waiting before the worker says it is not ready.
_KAFKA_PATIENCE_S = 1.0


@dataclass(slots=True)
class WorkerStats:
    """Running totals, for logs and for the demo's summary."""

    batches: int = 0
    consumed: int = 0
    processed: int = 0
    replayed: int = 0
    voided: int = 0  # users whose offsets were of another events topic id
    dead_lettered: int = 0
    published: int = 0
    erased: int = 0


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: RedisClient | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
        recommender: Recommender | None = None,
        store: StateStore | None = None,
        model_log: ModelLog | None = None,
        checkpoints: CheckpointStore | None = None,
        source: EventSource | None = None,
        sink: OutputSink | None = None,
        dead_letter_sink: OutputSink | None = None,
        catalog_feed: CatalogFeed | None = None,
        topic_ids: TopicIds | None = None,
    ) -> None:
        """Collaborators default to the real ones (Kafka, Redis, the model topic); tests
        hand in the in-memory ones of :mod:`worker.testing` and run the same loop.

        ``source`` (the events topic), ``sink`` (lists) and ``dead_letter_sink`` default
        to one confluent-kafka consumer and one producer, used as they are. ``topic_ids``
        defaults to Kafka's admin API with the real source, else to ``source`` itself if
        it tells topic ids, else to none (every batch's topic id unknown).
        """
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.stats = WorkerStats()
        self.exposure = ExposureWindows(
            settings.quality_window_lists, settings.quality_window_s, time.monotonic()
        )
        self.recommender = recommender or Recommender(settings, origin=new_origin())
        self._redis = redis_client
        self.store: StateStore = store or UserStore(
            self._redis_client(), settings, observe_round_trip=self.metrics.redis_round_trip.observe
        )
        self.model_log: ModelLog | None = None
        self.sync: ModelSync | None = None
        if settings.model_sync:
            self.model_log = model_log or KafkaModelLog(settings)
            self.sync = ModelSync(
                self.recommender,
                self.model_log,
                checkpoints
                or RedisCheckpoints(self._redis_client(), settings, self.recommender.origin),
                settings.model_checkpoint_interval_s,
                metrics=self.metrics,
            )
        self._on_kafka = source is None  # the real clients: checked at start, closed here
        producer = None
        if sink is None or dead_letter_sink is None:
            producer = make_producer(settings, error_cb=self._on_kafka_error)
        self.sink: OutputSink = sink or producer  # type: ignore[assignment]
        self.dead_letter_sink: OutputSink = dead_letter_sink or producer  # type: ignore[assignment]
        self._producer = producer
        self.consumer: EventSource = source or self._make_consumer()
        self.catalog_feed: CatalogFeed = catalog_feed or KafkaCatalogFeed(settings)
        self.topic_ids: TopicIds | None = topic_ids
        if topic_ids is None and self._on_kafka:
            self.topic_ids = KafkaTopicIds(settings)
        elif topic_ids is None and isinstance(source, TopicIds):
            self.topic_ids = source
        self.topic_id = ""  # the events topic's id, learned at start and on each assignment
        self.tracker = DeliveryTracker(self._store_offsets)
        self._skew = timedelta(seconds=settings.max_future_skew_s)
        self._recent_ids = RecentEventIds(settings.dedup_window)
        self._paused = False
        # A fatal error of the events consumer (a fenced static member), seen by its error
        # callback inside ``consume``/``poll``; the loop rebuilds the consumer between
        # batches (:meth:`_rebuild_consumer`), never inside the callback.
        self._consumer_fatal: KafkaError | None = None

    def _make_consumer(self) -> EventSource:
        """The events consumer from the one Kafka factory, with this worker's callbacks."""
        return make_consumer(
            self.settings, error_cb=self._on_consumer_error, stats_cb=self._on_stats
        )

    def _redis_client(self) -> RedisClient:
        """The one Redis client, connected the first time a collaborator needs it."""
        if self._redis is None:
            self._redis = connect_redis(self.settings)
        return self._redis

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, catalog_timeout_s: float | None = None, kafka_timeout_s: float = 30.0) -> None:
        """Fail fast on Redis and Kafka, load the catalog, join the group."""
        self._check_servers(kafka_timeout_s)
        self._restore_models()
        partitions = self.catalog_feed.assign()
        if catalog_timeout_s is None:
            catalog_timeout_s = self.settings.catalog_load_timeout_s
        loaded = self._load_catalog(catalog_timeout_s) if partitions else 0
        log.info("catalog: %d items from %d partition(s)", loaded, partitions)
        self.recommender.catalog_loaded()
        self._catch_up_models(kafka_timeout_s)
        self._learn_topic_id()
        freeze_startup_objects()
        self._subscribe()
        self.health.set_ready(True)
        self.metrics.ready.set(1)
        log.info(
            "consuming %s as group %s; publishing to %s",
            self.settings.events_topic,
            self.settings.group_id,
            self.settings.recommendations_topic,
        )

    def _learn_topic_id(self) -> None:
        """Ask the events topic's id: user offsets stored under another one are void.

        When it cannot be learned the id is unknown (""), not the previous one: after a
        recreate the previous id would void offsets written under the new one.
        """
        if self.topic_ids is None:
            return
        topic = self.settings.events_topic
        learned = self.topic_ids.topic_id(topic)
        if learned and self.topic_id and learned != self.topic_id:
            log.warning(
                "events topic %s has a new id %s (was %s): it was deleted and recreated; "
                "users' offsets of the old one are void",
                topic,
                learned,
                self.topic_id,
            )
        elif learned and learned != self.topic_id:
            log.info("events topic %s has id %s", topic, learned)
        self.topic_id = learned

    def _subscribe(self) -> None:
        self.consumer.subscribe(
            [self.settings.events_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _restore_models(self) -> None:
        """Install the newest readable model checkpoint, before the catalog: it fixes the
        item rows that the catalog then fills in."""
        if self.sync is None or self.model_log is None:
            return
        self.model_log.prepare()
        if len(self.recommender.index):
            log.warning("models already hold items: no checkpoint loaded")
            return
        log.info(self.sync.restore())

    def _catch_up_models(self, timeout_s: float) -> None:
        """Read the model topic to its end: what every worker learned since the checkpoint
        (the previous owners of this worker's partitions included)."""
        if self.sync is None:
            return
        started = time.monotonic()
        applied = self.sync.catch_up(timeout_s)
        log.info(
            "model log: %d deltas applied, caught up to position %d in %.1f s",
            applied,
            self.sync.position,
            time.monotonic() - started,
        )

    def _check_servers(self, kafka_timeout_s: float) -> None:
        """Raise :class:`StoreUnavailable` or :class:`KafkaUnavailable` saying what failed.

        Without this a wrong password or an untrusted certificate shows up only as
        retries in the log. The Kafka clients built in ``__init__`` are closed on failure,
        so a caller that gives up leaves nothing connecting in the background.
        """
        try:
            self.store.check()
            if self._on_kafka:
                check_kafka(self.settings, kafka_timeout_s)
        except (StoreUnavailable, KafkaUnavailable):
            self._close_clients()
            raise

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> WorkerStats:
        """Turn the loop until ``stop`` is set (signals only set it), then close cleanly."""
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                if self.step():
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        """Finish what is in flight: flush outputs, store and commit offsets, leave the group."""
        remaining = self._flush(CLOSE_FLUSH_TIMEOUT_S)
        try:
            if remaining:
                log.error("%d outputs not acknowledged; their events will be replayed", remaining)
            else:
                self.tracker.advance()
                self._commit()
        except DeliveryFailed as error:
            log.error("not committing past a failed delivery (%s): it will be replayed", error)
        if self.sync is not None:
            self.sync.close()
        self._close_clients()
        self.health.set_ready(False, "stopped")
        self.metrics.ready.set(0)
        log.info(
            "stopped: %d consumed, %d processed, %d replayed, %d dead-lettered, %d published",
            self.stats.consumed,
            self.stats.processed,
            self.stats.replayed,
            self.stats.dead_lettered,
            self.stats.published,
        )

    # -- one micro-batch --------------------------------------------------------------

    def step(self) -> int:
        """Consume and handle one micro-batch; returns how many messages it held."""
        self.health.beat()
        self._serve_deliveries()
        self._poll_catalog(500, 0)
        self._sync_models()
        if self._consumer_fatal is not None:
            self._rebuild_consumer()
        messages = self.consumer.consume(
            self.settings.batch_size, self.settings.batch_wait_ms / 1000
        )
        if self._consumer_fatal is not None:  # what a fenced member fetched is not ours
            self._rebuild_consumer()
            return 0
        self.tracker.advance()
        if not messages:
            return 0
        started = time.perf_counter()
        envelopes: list[Envelope] = []
        letters: list[tuple[DeadLetter, Incoming]] = []
        sent_at: dict[str, float] = {}  # user -> Kafka timestamp of their latest event (s)
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consumer_error(error)
                continue
            topic, partition, offset = _coordinates(message)
            next_offsets[(topic, partition)] = offset + 1
            decoded = self._decode(message.value(), (topic, partition, offset))
            if decoded.event is None:
                assert decoded.dead_letter is not None
                letters.append((decoded.dead_letter, message))
                continue
            envelopes.append(Envelope(decoded.event, partition, offset))
            kind, stamp = message.timestamp()
            if kind != 0:  # TIMESTAMP_NOT_AVAILABLE
                sent_at[decoded.event.user_id] = stamp / 1000.0
        users = list(dict.fromkeys(envelope.event.user_id for envelope in envelopes))
        states = self._with_redis(lambda: self.store.read(users))
        lessons_before = self.recommender.ranker.updates
        result = self.recommender.process(envelopes, states, topic_id=self.topic_id)
        self.metrics.ranker_lessons.inc(self.recommender.ranker.updates - lessons_before)
        stale = self._complete(result, letters, next_offsets, sent_at)
        self._account(len(messages), result, len(letters), stale, started)
        return len(messages)

    def _complete(
        self,
        result: BatchResult,
        letters: list[tuple[DeadLetter, Incoming]],
        next_offsets: dict[tuple[str, int], int],
        sent_at: dict[str, float],
    ) -> int:
        """Make a handled batch durable, in the one order that keeps it exactly once.

        1. The shared models' delta, acknowledged by Kafka: a crash after it finds the
           events in the models and applies them to the users only.
        2. The users' states (one offset-guarded round trip): a replay after it finds
           them applied and skips them.
        3. Lists and dead letters, produced; the batch's offsets are stored only once all
           of them are acknowledged (:class:`DeliveryTracker`), and librdkafka commits
           stored offsets (on revoke and close, at once).
        4. A model checkpoint, between batches when due (:meth:`_sync_models`), of
           models that hold exactly the model topic up to its offset.

        Returns how many user writes the offset guard refused (another writer was ahead).
        """
        if self.sync is not None:
            self.sync.publish(result.delta)
            self._await_kafka(self._delta_acknowledged, "the model delta is not acknowledged")
        bodies = {published.user_id: published.to_json() for published in result.published}
        writes = result.writes
        if self.settings.store_lists:  # the list goes in the user's own write: one round trip
            writes = [
                UserWrite(w.state, w.erase_first, bodies.get(w.state.user_id, b"")) for w in writes
            ]
        outcome = self._with_redis(lambda: self.store.write(writes))
        if result.erased:
            self._with_redis(lambda: self.store.erase(result.erased))
        batch = self.tracker.open(next_offsets)
        self._publish(batch, result, bodies, sent_at)
        for letter, message in letters:
            self._dead_letter(batch, letter, message)
        self.tracker.seal(batch)
        self._serve_deliveries()
        return outcome.stale

    def _sync_models(self) -> None:
        """Learn the other workers' deltas that arrived; checkpoint when due.

        A worker whose models fall further behind the model topic than
        ``model_sync_max_lag_s`` reports not ready until it catches up.
        """
        if self.sync is None:
            return
        self.sync.poll()
        lagging = self.sync.lag_s > self.settings.model_sync_max_lag_s
        if lagging and self.health.why != _MODELS_LAGGING:
            log.warning("models lag the model topic by %.1f s", self.sync.lag_s)
            self.health.set_ready(False, _MODELS_LAGGING)
            self.metrics.ready.set(0)
        elif not lagging and self.health.why == _MODELS_LAGGING:
            self.health.set_ready(True)
            self.metrics.ready.set(1)
        self.sync.maybe_checkpoint()

    def _decode(self, raw: bytes | None, where: tuple[str, int, int]) -> Decoded:
        """Validate one message under the configured limits, then drop a repeated event id."""
        settings = self.settings
        decoded = decode_event(
            raw,
            max_bytes=settings.max_message_bytes,
            max_future_skew=self._skew,
            min_event_time=settings.min_event_time,
            max_id_length=settings.max_id_length,
        )
        if decoded.event is None:
            return decoded
        duplicate = self._recent_ids.check(decoded.event.event_id, where)
        return decoded if duplicate is None else Decoded(dead_letter=duplicate)

    def _publish(
        self,
        batch: PendingBatch,
        result: BatchResult,
        bodies: dict[str, bytes],
        sent_at: dict[str, float],
    ) -> None:
        topic = self.settings.recommendations_topic
        erased = set(result.erased) | {w.state.user_id for w in result.writes if w.erase_first}
        for user_id in erased:  # a tombstone tells readers to drop what they kept
            self._produce(self.sink, batch, topic, user_id.encode(), None, None)
        for published in result.published:
            self._produce(
                self.sink,
                batch,
                topic,
                published.user_id.encode(),
                bodies[published.user_id],
                sent_at.get(published.user_id),
                counts_as_publish=True,
            )

    def _dead_letter(
        self, batch: PendingBatch | None, letter: DeadLetter, message: Incoming
    ) -> None:
        log.warning(
            "dead letter from %s[%d]@%d: %s (%s) %s",
            message.topic(),
            message.partition(),
            message.offset(),
            letter.reason.value,
            letter.field or "-",
            letter.detail,
        )
        self.metrics.dead_lettered.labels(letter.reason.value).inc()
        self._produce(
            self.dead_letter_sink,
            batch,
            self.settings.dlq_topic,
            message.key(),
            message.value(),
            None,
            headers=dead_letter_headers(letter, message),
        )

    def _produce(
        self,
        sink: OutputSink,
        batch: PendingBatch | None,
        topic: str,
        key: str | bytes | None,
        value: str | bytes | None,
        sent_at: float | None,
        *,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        counts_as_publish: bool = False,
    ) -> None:
        def on_delivery(error: KafkaError | None, _message: object) -> None:
            if batch is not None:
                self.tracker.acknowledged(batch, None if error is None else str(error))
            if error is not None:
                log.error("delivery to %s failed: %s", topic, error)
                return
            if counts_as_publish:
                self.metrics.published.inc()
                self.stats.published += 1
                if sent_at is not None:
                    self.metrics.event_to_publish.observe(max(0.0, time.time() - sent_at))

        def queued() -> bool:
            try:
                sink.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return True
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.metrics.producer_queue_full.inc()
                sink.poll(0.05)
                return False

        if batch is not None:
            self.tracker.sent(batch)
        self._await_kafka(queued, "the producer queue is full")

    def _delta_acknowledged(self) -> bool:
        assert self.sync is not None
        try:
            self.sync.flush(_KAFKA_PATIENCE_S)
            return True
        except NotYetAcknowledged:
            return False

    def _await_kafka(self, attempt: Callable[[], bool], what: str) -> None:
        """Retry ``attempt`` (which waits a little itself) while Kafka is slow or away.

        The batch in hand stays in hand: nothing new is consumed, and what waits is
        bounded (the producer's queue, one model delta). The worker keeps beating (it is
        alive, not stuck), says it is not ready after ``_KAFKA_PATIENCE_S``, and stops
        loudly without committing after ``outage_timeout_s``, as for Redis; another
        worker or a restart then replays. The consumer is not polled meanwhile (a
        rebalance mid-batch would hand the batch's partitions away under it); with the
        default outage timeout the wait ends before ``max.poll.interval.ms`` (300 s), and
        beyond it the partitions move, which the offset guard in Redis makes harmless.
        """
        if attempt():
            return
        since, waiting = time.monotonic(), False
        while not attempt():
            waited = time.monotonic() - since
            if waited > self.settings.outage_timeout_s:
                raise DeliveryFailed(f"{what} after {waited:.0f} s: Kafka stayed away")
            if not waiting and waited >= _KAFKA_PATIENCE_S:
                log.error("%s: Kafka is slow or away, waiting (not ready)", what)
                self.health.set_ready(False, _KAFKA_WAIT)
                self.metrics.ready.set(0)
                waiting = True
            self.health.beat()
        if waiting:
            log.info("Kafka acknowledges again after %.1f s", time.monotonic() - since)
            if self.health.why == _KAFKA_WAIT:
                self.health.set_ready(True)
                self.metrics.ready.set(1)

    def _sinks(self) -> list[OutputSink]:
        """The distinct sinks (by default lists and dead letters share one producer)."""
        return list({id(sink): sink for sink in (self.sink, self.dead_letter_sink)}.values())

    def _serve_deliveries(self) -> None:
        """Let the sinks call back for acknowledged outputs (never blocks)."""
        for sink in self._sinks():
            sink.poll(0)

    def _flush(self, timeout_s: float) -> int:
        """Wait until every output is acknowledged; returns how many are not."""
        return sum(sink.flush(timeout_s) for sink in self._sinks())

    def _close_clients(self) -> None:
        """Close the Kafka clients this worker made, and every reader it was handed."""
        self.consumer.close()
        self.catalog_feed.close()
        if self._producer is not None:
            self._producer.close()
        if self.model_log is not None:
            self.model_log.close()

    def _account(
        self, consumed: int, result: BatchResult, letters: int, stale: int, started: float
    ) -> None:
        stats, metrics = self.stats, self.metrics
        stats.batches += 1
        stats.consumed += consumed
        stats.processed += result.applied
        stats.replayed += result.replayed
        stats.voided += result.voided
        stats.dead_lettered += letters
        stats.erased += len(result.erased)
        metrics.consumed.labels(self.settings.events_topic).inc(consumed)
        metrics.processed.inc(result.applied)
        metrics.replayed.inc(result.replayed)
        metrics.erased.inc(len(result.erased))
        metrics.stale_writes.inc(stale)
        metrics.offsets_voided.inc(result.voided)
        metrics.batch_size.observe(consumed)
        metrics.batch_seconds.observe(time.perf_counter() - started)
        metrics.count_quality(result.quality)
        self.exposure.add(result.exposure)
        now = time.monotonic()
        if self.exposure.due(now):
            popularity, showable = self.recommender.showable()
            metrics.set_exposure(self.exposure.close(popularity, showable, now))
        if stale:
            log.warning(
                "%d user writes refused by the offset guard (another writer was ahead)", stale
            )
        if result.models_voided:
            metrics.model_offsets_voided.inc()
            log.warning(
                "shared models: their offsets of events topic id %s are void, this batch is "
                "of id %s (the topic was deleted and recreated, or another cluster)",
                result.models_voided,
                self.topic_id,
            )
        if result.voided:
            log.warning(
                "offsets of %d users void: stored for another id of events topic %s (deleted "
                "and recreated, or another cluster); their events of topic id %s applied",
                result.voided,
                self.settings.events_topic,
                self.topic_id,
            )

    # -- catalog ----------------------------------------------------------------------

    def _load_catalog(self, timeout_s: float) -> int:
        """Read the compacted catalog up to its end before serving, within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._poll_catalog(5000, 0.2)
            self.health.beat()  # alive while the catalog comes in: liveness must not kill it
            if self.catalog_feed.caught_up():
                break
        else:
            log.warning(
                "catalog not fully loaded after %.0f s (TAILOR_CATALOG_LOAD_TIMEOUT_S); "
                "serving with %d items, the rest is applied as it comes",
                timeout_s,
                self.recommender.catalog.size,
            )
        return self.recommender.catalog.size

    def _poll_catalog(self, limit: int, timeout_s: float) -> None:
        """Apply what the catalog topic brought, in its order and in one call."""
        changes: list[tuple[str, CatalogItem | None]] = []
        for message in self.catalog_feed.consume(limit, timeout_s):
            error = message.error()
            if error is not None:
                self._on_kafka_error(error)
                continue
            key = message.key()
            value = message.value()
            if value is None:
                if key:
                    changes.append((key.decode("utf-8", "replace"), None))
                continue
            item = decode_catalog_item(
                value,
                max_bytes=self.settings.max_message_bytes,
                max_id_length=self.settings.max_id_length,
            )
            if isinstance(item, DeadLetter):
                self._dead_letter(None, item, message)
                continue
            changes.append((item.item_id, item))
        if changes:
            self.recommender.apply_catalog_many(changes)
        self.metrics.catalog_items.set(self.recommender.catalog.size)
        self.metrics.content_pending.set(self.recommender.content.pending())

    # -- offsets and rebalances -------------------------------------------------------

    def _store_offsets(self, next_offsets: dict[tuple[str, int], int]) -> None:
        if not next_offsets:
            return
        partitions = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self.consumer.store_offsets(offsets=partitions)
        except KafkaException as error:  # partition no longer ours: its new owner replays
            log.debug("offsets not stored: %s", error)

    def _commit(self) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed: %s", error)

    def _on_assign(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        """Catch up on the model topic first: the partitions' previous owners published
        their last deltas before committing, and those say which events the shared
        models already hold."""
        log.info("assigned %s", _describe(partitions))
        self.metrics.clear_lag()
        if partitions:
            self._learn_topic_id()
        if self.sync is not None and partitions:
            self.sync.catch_up(self.settings.outage_timeout_s)

    def _on_revoke(self, consumer: object, partitions: list[TopicPartition]) -> None:
        """Short and bounded: flush outputs, store what is acknowledged, commit.

        After a fatal error (a fenced member being closed) it is a loss: the group has
        moved on without this member, so nothing may be committed in its name.
        """
        if self._consumer_fatal is not None:
            self._on_lost(consumer, partitions)
            return
        log.info("revoked %s", _describe(partitions))
        self._flush(10)
        self.tracker.advance()
        self._commit()
        self.metrics.clear_lag()

    def _on_lost(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        """Lost, not revoked: someone else may own them already, so commit nothing."""
        log.warning("lost %s", _describe(partitions))
        self.tracker.forget({(p.topic, p.partition) for p in partitions})
        self.metrics.clear_lag()

    # -- outages ---------------------------------------------------------------------

    def _with_redis(self, operation: Callable[[], T]) -> T:
        """Run a Redis operation; while Redis is away, pause consumption and back off.

        The batch in hand is kept (it is bounded); nothing new is fetched, the group
        membership stays alive through ``poll``, and after ``outage_timeout_s`` the worker
        stops loudly without committing, so another worker or a restart replays.
        """
        backoff, since = 0.1, time.monotonic()
        while True:
            try:
                result = operation()
            except StoreUnavailable as error:
                waited = time.monotonic() - since
                if waited > self.settings.outage_timeout_s:
                    raise
                if not self._paused:
                    log.error("Redis unavailable, pausing consumption: %s", error)
                    self._pause()
                self.health.set_ready(False, "redis unreachable")
                self.metrics.ready.set(0)
                self.health.beat()
                self._idle(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            if self._paused:
                log.info("Redis is back, resuming consumption")
                self._resume()
                self.health.set_ready(True)
                self.metrics.ready.set(1)
            return result

    def _pause(self) -> None:
        """Stop fetching: librdkafka then keeps at most its bounded prefetch queue."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        self._paused = True
        self.metrics.paused_partitions.set(len(assignment))

    def _resume(self) -> None:
        if self._consumer_fatal is None:  # else the next step replaces the consumer
            self.consumer.resume(self.consumer.assignment())
        self._paused = False
        self.metrics.paused_partitions.set(0)

    def _idle(self, seconds: float) -> None:
        """Wait while serving the group; a message fetched meanwhile is sought back."""
        self._serve_deliveries()
        message = self.consumer.poll(seconds)
        if message is not None and message.error() is None:
            self.consumer.seek(TopicPartition(*_coordinates(message)))

    def _on_consumer_error(self, error: KafkaError) -> None:
        """The events consumer's errors: a fatal one is kept for the loop to act on.

        Raising here would unwind through librdkafka's ``consume`` and stop the process;
        a fenced static member (``group.instance.id`` taken over by another process, or by
        this one's own rejoin after a broker restart) is better replaced by a new member.
        confluent-kafka reports fencing as ``_FATAL`` (``fatal()`` was false in some
        versions: confluent-kafka-python #869), hence both checks.
        """
        if error.fatal() or error.code() in _FATAL_CODES:
            if self._consumer_fatal is None:
                self._consumer_fatal = error
            return
        self._on_kafka_error(error)

    def _rebuild_consumer(self) -> None:
        """Replace a consumer that hit a fatal error with a new member of the group.

        The old one is closed without committing (its revoke is treated as a loss and
        its in-flight batches' offsets are forgotten): a fenced member's offsets are not
        ours, and what it had not committed is replayed by whoever owns the partitions
        next, harmlessly, thanks to the offsets in each user's state. The new consumer
        comes from the one Kafka factory and subscribes with the same callbacks.
        """
        error = self._consumer_fatal
        assert error is not None
        if not self._on_kafka:  # a source handed in (tests) cannot be made again here
            raise KafkaException(error)
        log.error(
            "fatal Kafka consumer error (%s): closing the consumer without committing "
            "and joining the group again",
            error.str(),
        )
        self.metrics.consumer_rebuilds.inc()
        self.tracker.forget_all()
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as closing:
            log.debug("closing the failed consumer: %s", closing)
        self._consumer_fatal = None
        self._paused = False
        self.metrics.paused_partitions.set(0)
        self.metrics.clear_lag()
        self.consumer = self._make_consumer()
        self._subscribe()

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.set_ready(False, "all Kafka brokers down")
            self.metrics.ready.set(0)
        if error.fatal():
            log.critical("fatal Kafka error: %s", error)
            raise KafkaException(error)
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            # Repeated until the topic exists: say once per line what makes it.
            log.warning("Kafka: %s; `tailor topics create` makes Tailor's topics", error.str())
            return
        log.warning("Kafka: %s", error)

    def _on_stats(self, text: str) -> None:
        stats: dict[str, Any] = orjson.loads(text)
        lags = []
        for topic, data in stats.get("topics", {}).items():
            for partition, info in data.get("partitions", {}).items():
                lag = info.get("consumer_lag", -1)
                if partition != "-1" and lag >= 0:
                    lags.append((topic, int(partition), int(lag)))
        self.metrics.set_lag(lags)
        if lags and not self._paused and self.health.why == "all Kafka brokers down":
            self.health.set_ready(True)
            self.metrics.ready.set(1)


#: Error codes that mean the consumer is done for, whatever ``fatal()`` says.
_FATAL_CODES = (KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID)


def freeze_startup_objects() -> None:
    """Take everything built at start-up (catalog, index, models) out of the cyclic GC.

    These objects live as long as the process; leaving them in the collector's oldest
    generation makes every full collection scan them, which showed up as 120-260 ms
    pauses every few batches with a 100k-item catalog. Frozen objects are still freed by
    reference counting when dropped.
    """
    gc.collect()
    gc.freeze()


def _coordinates(message: Incoming) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (always set for those)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    return topic, partition, offset


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
