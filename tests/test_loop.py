"""The worker loop in one process, without servers: outputs, offsets, faults, sync, restore.

The same :class:`~worker.loop.Worker` as ``tailor run``, turned one ``step`` at a time
on the in-memory collaborators of :mod:`worker.testing`: events from a
:class:`MemoryKafka` group, lists and dead letters into its topics, users in
:class:`MemoryStates`, the model log and checkpoints in memory. What the real-server
tests show end to end (``tests/test_worker.py``, ``tests/test_shared_models.py``, the
fault suite), this shows for the loop's own logic, fast and deterministically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from tests.helpers import event
from worker.config import Settings
from worker.loop import Worker
from worker.metrics import Health
from worker.testing import (
    MemoryCatalogFeed,
    MemoryCheckpoints,
    MemoryKafka,
    MemoryMessage,
    MemoryModelLog,
    MemorySink,
    MemoryStates,
)
from worker.transport.delivery import DeliveryFailed

ITEMS = ("lamp", "shade", "bulb", "vase", "rug", "mug")
SETTINGS = Settings(model_checkpoint_interval_s=1, batch_wait_ms=1, metrics_port=0)


class Cluster:
    """One in-memory Kafka, user store, model log and checkpoint store for many workers."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.settings = settings
        self.kafka = MemoryKafka(partitions=4)
        self.states = MemoryStates()
        self.log = MemoryModelLog()
        self.checkpoints = MemoryCheckpoints(time.time, keep=2)
        for item in ITEMS:
            body = {"item_id": item, "title": f"the {item}", "category": ["home"]}
            self.kafka.append(settings.catalog_topic, item, orjson.dumps(body))

    def worker(self, sink: MemorySink | None = None) -> Worker:
        kafka = self.kafka
        worker = Worker(
            self.settings,
            store=self.states,
            model_log=self.log.reader(time.time),
            checkpoints=self.checkpoints,
            source=kafka.source(),
            sink=sink or kafka.sink(),
            dead_letter_sink=kafka.sink(),
            catalog_feed=kafka.catalog_feed(self.settings.catalog_topic),
        )
        worker.start(catalog_timeout_s=5)
        return worker

    def send(self, user: str, item: str | None, kind: str = "click", **extra: Any) -> None:
        body = orjson.dumps(event(user, item, kind, **extra))
        self.kafka.append(self.settings.events_topic, user, body)

    def lists(self) -> dict[str, list[str]]:
        """The newest list published for each user."""
        newest: dict[str, list[str]] = {}
        for message in self.kafka.messages(self.settings.recommendations_topic):
            value, key = message.value(), message.key()
            if value is not None and key is not None:
                newest[key.decode()] = [entry["item_id"] for entry in orjson.loads(value)["items"]]
        return newest

    def committed(self) -> int:
        """Events covered by the group's committed offsets."""
        topic = self.settings.events_topic
        return sum(o for (t, _), o in self.kafka.committed.items() if t == topic)

    def events_applied(self, user: str) -> int:
        state = self.states.states.get(user)
        return state.events if state is not None else 0


def turn(*workers: Worker, until: Callable[[], bool], steps: int = 200) -> None:
    """Step the workers in turn until ``until`` holds."""
    for _ in range(steps):
        if until():
            return
        for worker in workers:
            worker.step()
    raise AssertionError(f"not reached in {steps} steps")


def drain(*workers: Worker) -> None:
    """Step until every event has been read and every worker has nothing left to do."""
    for _ in range(200):
        if sum(worker.step() for worker in workers) == 0:
            return
    raise AssertionError("the workers never ran out of events")


def covisits(worker: Worker, item: str, other: str) -> bool:
    """Whether ``worker``'s co-visitation links ``item`` to ``other``."""
    rec = worker.recommender
    row, wanted = rec.index.lookup(item), rec.index.lookup(other)
    if row < 0 or wanted < 0 or row >= rec.covis.neighbour.shape[0]:
        return False
    return bool((rec.covis.neighbour[row] == wanted).any())


def owned(worker: Worker) -> set[int]:
    return {p.partition for p in worker.consumer.assignment()}


def test_every_event_gets_a_list_and_offsets_are_committed_after_delivery() -> None:
    cluster = Cluster()
    worker = cluster.worker()
    for n in range(6):
        cluster.send(f"u{n}", ITEMS[n % 3])
        cluster.send(f"u{n}", ITEMS[n % 3 + 1])
    drain(worker)
    assert set(cluster.lists()) == {f"u{n}" for n in range(6)}
    assert [cluster.events_applied(f"u{n}") for n in range(6)] == [2] * 6
    worker.close()
    assert cluster.committed() == 12


def test_a_malformed_event_is_dead_lettered_with_its_reason_and_nothing_is_lost() -> None:
    cluster = Cluster()
    worker = cluster.worker()
    cluster.send("ann", "lamp")
    cluster.kafka.append(cluster.settings.events_topic, "ann", b"{not json")
    cluster.send("ann", "shade", kind="teleport")  # not an event type
    cluster.send("ann", "bulb")
    drain(worker)
    letters = cluster.kafka.messages(cluster.settings.dlq_topic)
    reasons = {m.value(): dict(m.headers() or [])["tailor.dlq.reason"] for m in letters}
    assert len(reasons) == 2
    assert reasons[b"{not json"] == b"not_json"
    assert set(reasons.values()) == {b"not_json", b"unknown_type"}
    assert cluster.events_applied("ann") == 2
    worker.close()
    assert cluster.committed() == 4  # the dead letters' offsets count once delivered


def test_a_failed_delivery_commits_nothing_and_a_new_worker_applies_the_batch_once() -> None:
    cluster = Cluster()
    refusing = cluster.kafka.sink()
    refusing.failing.add(cluster.settings.recommendations_topic)
    worker = cluster.worker(sink=refusing)
    cluster.send("bo", "lamp")
    cluster.send("bo", "shade")
    with pytest.raises(DeliveryFailed):
        drain(worker)
    assert cluster.committed() == 0
    assert cluster.events_applied("bo") == 2  # written before the lists were refused
    worker.consumer.close()  # as ``tailor run`` does on the way out: nothing was stored
    replacement = cluster.worker()
    drain(replacement)
    assert cluster.events_applied("bo") == 2  # replayed, not applied twice
    assert replacement.stats.replayed == 2
    assert "bo" in cluster.lists()
    replacement.close()
    assert cluster.committed() == 2


class BoundedSink(MemorySink):
    """A producer whose local queue holds ``capacity`` unacknowledged outputs, like
    librdkafka's ``queue.buffering.max.messages``; while ``away`` (Kafka gone) nothing is
    acknowledged, so a full queue stays full."""

    def __init__(self, kafka: MemoryKafka, capacity: int) -> None:
        super().__init__(kafka)
        self.capacity = capacity
        self.away = False
        self.refused = 0

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        if len(self._reports) >= self.capacity:
            self.refused += 1
            raise BufferError("Local: Queue full")
        super().produce(topic, *args, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        if self.away:
            time.sleep(timeout)
            return 0
        return super().poll(timeout)


def test_a_full_producer_queue_waits_for_room_and_loses_no_list() -> None:
    cluster = Cluster()
    sink = BoundedSink(cluster.kafka, capacity=2)
    worker = cluster.worker(sink=sink)
    for n in range(8):
        cluster.send(f"u{n}", ITEMS[n % 3])
    drain(worker)
    assert sink.refused > 0  # the queue did overflow
    queue_full = worker.metrics.registry.get_sample_value("tailor_producer_queue_full_total")
    assert queue_full == sink.refused
    assert set(cluster.lists()) == {f"u{n}" for n in range(8)}
    assert worker.health.ready
    worker.close()
    assert cluster.committed() == 8


def test_kafka_away_past_the_outage_timeout_stops_without_committing() -> None:
    """Not ready after a second of waiting, alive while it waits, then a loud stop that
    commits nothing: the batch is replayed by whoever comes next."""
    cluster = Cluster(SETTINGS.with_overrides(outage_timeout_s=1.5))
    sink = BoundedSink(cluster.kafka, capacity=1)
    worker = cluster.worker(sink=sink)
    sink.away = True
    cluster.send("ann", "lamp")
    cluster.send("bo", "lamp")
    # Raised only once the wait has outlasted the outage timeout (Worker._await_kafka).
    with pytest.raises(DeliveryFailed, match=r"producer queue is full after \d+ s: Kafka stayed"):
        drain(worker)
    assert not worker.health.ready
    assert "not acknowledging" in worker.health.why
    assert worker.health.alive
    assert cluster.committed() == 0


def test_a_crash_replays_what_was_not_committed_without_applying_it_twice() -> None:
    cluster = Cluster()
    worker = cluster.worker()
    for n in range(3):
        cluster.send("cy", ITEMS[n])
    drain(worker)
    cluster.send("cy", "rug")
    worker.step()  # handled, stored, but the crash comes before the next commit
    assert cluster.events_applied("cy") == 4
    assert cluster.committed() == 3
    worker.consumer.crash()  # type: ignore[attr-defined]
    after = cluster.worker()
    drain(after)
    assert after.stats.replayed == 1
    assert cluster.events_applied("cy") == 4
    assert after.recommender.totals.events == 4  # the models count it once as well
    after.close()


def test_a_joining_worker_splits_the_partitions_and_each_learns_the_others_events() -> None:
    cluster = Cluster()
    first = cluster.worker()
    drain(first)
    assert owned(first) == {0, 1, 2, 3}
    second = cluster.worker()
    drain(first, second)
    assert owned(first) | owned(second) == {0, 1, 2, 3}
    assert not owned(first) & owned(second)
    shoppers = [f"shopper{n}" for n in range(12)]
    for user in shoppers:
        cluster.send(user, "lamp")
        cluster.send(user, "shade")
    drain(first, second)
    handled = (first.stats.processed, second.stats.processed)
    assert sum(handled) == 24
    assert min(handled) > 0  # both workers had some of the shoppers
    turn(first, second, until=lambda: all(covisits(w, "lamp", "shade") for w in (first, second)))
    assert first.recommender.totals.events == second.recommender.totals.events == 24
    assert [cluster.events_applied(user) for user in shoppers] == [2] * 12
    first.close()
    second.close()


def test_a_worker_started_after_all_stopped_restores_the_models_from_the_checkpoint() -> None:
    cluster = Cluster()
    first = cluster.worker()
    for n in range(5):
        cluster.send(f"s{n}", "lamp")
        cluster.send(f"s{n}", "shade")
    drain(first)
    time.sleep(1.1)  # one checkpoint interval
    first.step()
    assert first.sync is not None
    first.sync.close()  # the checkpoint is written in the background
    assert len(cluster.checkpoints.saved) == 1
    cluster.send("late", "vase")  # after the checkpoint: read back from the model log
    drain(first)
    first.close()
    restarted = cluster.worker()
    assert restarted.sync is not None
    assert restarted.sync.restored_from is not None
    assert covisits(restarted, "lamp", "shade")
    assert restarted.recommender.totals.events == 11  # nothing counted twice, nothing lost
    restarted.close()


def test_a_missing_topic_is_logged_with_the_command_that_makes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A first run before the topics exist: librdkafka only says the topic is not there."""
    worker = Cluster().worker()
    missing = KafkaError(
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        "Subscribed topic not available: tailor.events: Broker: Unknown topic or partition",
    )
    with caplog.at_level(logging.WARNING, logger="tailor.worker"):
        worker._on_kafka_error(missing)
    worker.close()
    assert caplog.messages == [
        "Kafka: Subscribed topic not available: tailor.events: Broker: Unknown topic or "
        "partition; `tailor topics create` makes Tailor's topics"
    ]


def test_a_recreated_events_topic_voids_the_old_offsets_and_applies_every_new_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13: after a delete and recreate, a known user's new events (offsets from 0
    again) were all counted as replayed and none applied."""
    cluster = Cluster()
    worker = cluster.worker()
    old_id = worker.topic_id
    assert old_id == cluster.kafka.topic_id(cluster.settings.events_topic)
    for item in ITEMS[:5]:
        cluster.send("dee", item)
    drain(worker)
    assert cluster.states.states["dee"].topic_id == old_id
    cluster.kafka.recreate(cluster.settings.events_topic)
    for item in ITEMS[:3]:
        cluster.send("dee", item)
    with caplog.at_level(logging.WARNING, logger="tailor.worker"):
        drain(worker)
    assert worker.topic_id not in ("", old_id)
    assert cluster.events_applied("dee") == 8
    assert (worker.stats.replayed, worker.stats.voided) == (0, 1)
    assert cluster.states.states["dee"].topic_id == worker.topic_id
    sample = worker.metrics.registry.get_sample_value
    assert sample("tailor_offsets_voided_total") == 1
    assert sample("tailor_model_offsets_voided_total") == 1
    assert worker.recommender.totals.events == 8  # the models learned the new events too
    later = cluster.worker()  # reads the log: the old topic's deltas, then the new one's
    drain(worker, later)
    assert later.recommender.totals.events == 8
    assert worker.sync is not None
    assert later.sync is not None
    assert worker.sync.consistent
    assert later.sync.consistent
    # the later worker's models, restored from before the recreate, void theirs on the
    # first delta of the new topic: one line of its own
    assert later.metrics.registry.get_sample_value("tailor_model_offsets_voided_total") == 1
    topic = cluster.settings.events_topic
    voids = [m for m in caplog.messages if "void" in m]
    assert voids.pop().startswith(
        f"shared models: their offsets of events topic id {old_id} are void, model delta "
    )
    assert voids == [
        f"events topic {topic} has a new id {worker.topic_id} (was {old_id}): it was deleted "
        "and recreated; users' offsets of the old one are void",
        f"shared models: their offsets of events topic id {old_id} are void, this batch is of "
        f"id {worker.topic_id} (the topic was deleted and recreated, or another cluster)",
        f"offsets of 1 users void: stored for another id of events topic "
        f"{cluster.settings.events_topic} (deleted and recreated, or another cluster); their "
        f"events of topic id {worker.topic_id} applied",
    ]
    worker.close()


def test_the_loop_exports_live_quality_once_per_event_and_closes_bias_windows() -> None:
    """A returning user's event is scored against the list they were sent, the counts
    reach the metrics, a replay after a crash adds nothing, and bias windows close."""
    cluster = Cluster(SETTINGS.model_copy(update={"quality_window_lists": 1}))
    worker = cluster.worker()
    cluster.send("cy", "lamp")
    drain(worker)
    shown = cluster.lists()["cy"]
    cluster.send("cy", "shade")
    drain(worker)
    labels = {"variant": "control", "type": "click", "segment": "web"}

    def sample(registry_worker: Worker, name: str, **extra: str) -> float:
        found = registry_worker.metrics.registry.get_sample_value(name, {**labels, **extra})
        return found or 0.0

    hit = "shade" in shown[:20]
    assert sample(worker, "tailor_live_scored_events_total") == 1
    assert sample(worker, "tailor_live_hits_total", k="20") == int(hit)
    rank = shown.index("shade") + 1 if hit else 0
    reciprocal = sample(worker, "tailor_live_reciprocal_rank_total")
    assert reciprocal == pytest.approx(1 / rank if rank else 0.0)
    registry = worker.metrics.registry
    assert registry.get_sample_value("tailor_live_window_lists", {"variant": "control"}) == 1
    coverage = registry.get_sample_value("tailor_live_catalog_coverage", {"variant": "control"})
    assert coverage is not None
    assert 0 < coverage <= 1

    cluster.send("cy", "rug")
    worker.step()  # scored and stored, but the crash comes before the commit
    assert sample(worker, "tailor_live_scored_events_total") == 2
    worker.consumer.crash()  # type: ignore[attr-defined]
    after = cluster.worker()
    drain(after)
    assert after.stats.replayed == 1
    assert sample(after, "tailor_live_scored_events_total") == 0
    after.close()


class _SlowCatalog(MemoryCatalogFeed):
    """A catalog topic that hands out one item per poll, each after a pause longer than
    the liveness threshold of the test's :class:`Health`."""

    pause_s = 0.2

    def consume(self, limit: int, timeout_s: float) -> list[MemoryMessage]:
        time.sleep(self.pause_s)
        return super().consume(1, timeout_s)


def test_a_long_catalog_load_keeps_the_worker_alive_and_ends_with_every_item() -> None:
    settings = SETTINGS.with_overrides(catalog_load_timeout_s=60)
    world = Cluster(settings)
    health = Health(stale_after_s=_SlowCatalog.pause_s * 0.75)  # one poll outlasts it
    worker = Worker(
        settings,
        health=health,
        store=world.states,
        model_log=world.log.reader(time.time),
        checkpoints=world.checkpoints,
        source=world.kafka.source(),
        sink=world.kafka.sink(),
        dead_letter_sink=world.kafka.sink(),
        catalog_feed=_SlowCatalog(world.kafka, settings.catalog_topic),
    )
    worker.start()  # the timeout from the settings: every item is read
    assert worker.recommender.catalog.size == len(ITEMS) > 1
    assert health.alive  # a beat after every poll, the last one included
    worker.close()
