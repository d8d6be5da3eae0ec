"""Shared models between ``tailor run`` processes, on the real Kafka broker and Redis.

Each worker learns its item-level models (co-visitation, trending, sessions, item
vectors, ranker) from every worker's events: it publishes a delta per batch to the model
topic and applies everyone else's, and one of them checkpoints the merged models into
Redis. What a user of that sees, and what this module checks with three real processes:

* what shoppers did on one worker's partitions shows up in another worker's lists, with
  the reason that names it ("viewed together with <title>"), within the sync lag;
* after every worker is SIGKILLed at once, the new ones restore the models from the
  checkpoint and still recommend from what was learned before;
* the sync and checkpoint metrics say so.

The workers are ``tailor run`` processes started by the chaos suite's driver (configured
by ``TAILOR_*`` only), since a SIGKILL must be real for the restart to mean anything.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import KafkaError, Message, Producer

from tests.chaos.driver import (
    Fleet,
    WorkerProcess,
    group_assignment,
    poll_until,
    scrape_metrics,
    wait_for_members,
)
from tests.helpers import TopicReader, body_of, event, produce
from worker.config import Settings
from worker.evaluate.partitioning import user_partition
from worker.recommend.core import Recommender
from worker.state.store import RedisCheckpoints
from worker.sync.checkpoint import CheckpointRefused, decode_checkpoint
from worker.transport.kafka import create_topics

pytestmark = pytest.mark.integration

PARTITIONS = 6
SLOTS = ("a", "b", "c")
LAMP, BOOKEND = "lamp-x", "bookend-y"  # X and Y: shoppers view the one, then the other
TITLES = {LAMP: "Brass Desk Lamp", BOOKEND: "Walnut Bookend"}
CO_VISIT_REASON = f"viewed together with {TITLES[LAMP]}"
CO_VISITORS = 4
#: How far behind another worker's deltas a worker may be (generous: two busy cores).
SYNC_S = 10.0
GROUP_S = 120.0  # for three fresh processes to start and share the partitions
LIST_S = 60.0  # for a list to come out once its worker is up
_RESTORED = re.compile(r": models restored from a checkpoint .* at model log position (\d+)")
_APPLIED = 'tailor_model_deltas_total{result="applied"}'
_PUBLISHED = "tailor_model_deltas_published_total"
_CHECKPOINT_BYTES = "tailor_model_checkpoint_bytes"

Coordinates = tuple[int, int]


def test_models_are_shared_between_workers_and_survive_a_restart(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap, redis_url=redis_url).in_namespace(
        f"shared-{uuid.uuid4().hex[:8]}",
        metrics_host="127.0.0.1",
        metrics_port=0,
        model_checkpoint_interval_s=1,
        batch_wait_ms=20,
        top_k=8,
        log_level="INFO",
    )
    create_topics(settings, partitions=PARTITIONS)
    _publish_catalog(settings)
    fleet = Fleet(settings, tmp_path)
    lists = TopicReader(settings, settings.recommendations_topic)
    try:
        owners = _start(fleet)
        learner, other = _two_owners(owners)
        co_visits = _co_visit_on_another_worker(settings, fleet, lists, owners, learner, other)
        _check_sync_metrics(fleet, other)
        _restart_everyone(settings, fleet, lists, co_visits)
    finally:
        for slot in list(fleet.workers):
            fleet.kill(slot)
        lists.close()


# -- (a) what one worker learned, another recommends ---------------------------------------


def _co_visit_on_another_worker(
    settings: Settings,
    fleet: Fleet,
    lists: TopicReader,
    owners: dict[str, list[int]],
    learner: str,
    other: str,
) -> list[Coordinates]:
    """Shoppers on ``learner``'s partitions view the lamp, then the bookend; a shopper on
    ``other``'s partitions then views the lamp alone and must be offered the bookend
    "viewed together with Brass Desk Lamp". Returns where the co-visits landed.

    First the same probe is made before any co-visit, so a reason that came from
    anywhere else (the catalog, a default) would fail here rather than pass below.
    """
    before = _users_on("before", owners[other], 1)[0]
    _send(settings, [event(before, LAMP, "view")])
    first = _first_list(lists, before, LIST_S)
    assert not _offers_with_reason(first, BOOKEND, CO_VISIT_REASON), (
        f"the bookend came with {CO_VISIT_REASON!r} before anyone viewed both: {first}"
    )

    shoppers = _users_on("covisit", owners[learner], CO_VISITORS)
    now = int(time.time() * 1000)
    visits = [
        event(user, item, kind, timestamp=now + 2000 * k + shift)
        for k, user in enumerate(shoppers)
        for item, kind, shift in ((LAMP, "view", 0), (BOOKEND, "click", 1000))
    ]
    co_visits = _send(settings, visits)
    assert {partition for partition, _ in co_visits} <= set(owners[learner])
    for body in visits[1::2]:  # the learner's lists come after its deltas are durable
        _wait_for_list(lists, _covering(body["event_id"]), LIST_S)

    # Every delta the learner published has reached the other worker's models.
    learner_port, other_port = _port(fleet.workers[learner]), _port(fleet.workers[other])
    published = scrape_metrics(learner_port).get(_PUBLISHED, 0.0)
    assert published >= 1, f"worker {learner} published no model delta"
    poll_until(
        lambda: scrape_metrics(other_port).get(_APPLIED, 0.0) >= published,
        SYNC_S,
        lambda: (
            f"worker {other} applied {scrape_metrics(other_port).get(_APPLIED)} of "
            f"{published} deltas worker {learner} published, after {SYNC_S:.0f} s"
        ),
    )

    after = _users_on("after", owners[other], 1)[0]
    _send(settings, [event(after, LAMP, "view")])
    offered = _first_list(lists, after, LIST_S)
    assert _offers_with_reason(offered, BOOKEND, CO_VISIT_REASON), (
        f"worker {other} did not offer the bookend {CO_VISIT_REASON!r} that worker "
        f"{learner}'s shoppers taught: {offered}"
    )
    return co_visits


# -- (c) the metrics say so --------------------------------------------------------------


def _check_sync_metrics(fleet: Fleet, other: str) -> None:
    """Applied deltas on the worker that learned from another; a checkpoint's size on the
    one that wrote it (one worker per interval holds the lease)."""
    applied = scrape_metrics(_port(fleet.workers[other])).get(_APPLIED, 0.0)
    assert applied > 0, f"worker {other} reports {applied} applied model deltas"

    def sizes() -> dict[str, float]:
        return {
            slot: scrape_metrics(_port(worker)).get(_CHECKPOINT_BYTES, 0.0)
            for slot, worker in fleet.workers.items()
        }

    poll_until(
        lambda: max(sizes().values()) > 0,
        SYNC_S,
        lambda: f"no worker reports a checkpoint size: {sizes()}",
    )


# -- (b) SIGKILL everyone, start again ----------------------------------------------------


def _restart_everyone(
    settings: Settings, fleet: Fleet, lists: TopicReader, co_visits: list[Coordinates]
) -> None:
    """Once a checkpoint holds the co-visits, SIGKILL all three workers and start three
    new ones: they say they restored the models from a checkpoint, and the first list
    for a new shopper who views the lamp offers the bookend for the same reason."""
    position = _checkpoint_holding(settings, co_visits)
    for slot in SLOTS:
        fleet.kill(slot)
    for slot in SLOTS:
        fleet.start(slot)
    shopper = f"after-restart-{uuid.uuid4().hex[:6]}"
    _send(settings, [event(shopper, LAMP, "view")])
    offered = _first_list(lists, shopper, GROUP_S)
    assert _offers_with_reason(offered, BOOKEND, CO_VISIT_REASON), (
        f"after the restart the bookend is not offered {CO_VISIT_REASON!r}: {offered}"
    )
    for slot in SLOTS:
        restored = _restored_at(fleet.workers[slot])
        assert restored >= position, (
            f"worker {slot} restored a checkpoint at model log position {restored}, older "
            f"than the one at {position} that holds the co-visits"
        )


def _checkpoint_holding(settings: Settings, co_visits: list[Coordinates]) -> int:
    """Wait for a checkpoint in Redis whose models reflect every co-visit event (its
    per-partition positions are past them); its model log position."""
    client = redis.Redis.from_url(settings.redis_url)
    checkpoints = RedisCheckpoints(client, settings, "test")
    seen: list[str] = ["none yet"]
    found: list[int] = []

    def holds() -> bool:
        data = next(checkpoints.newest_first(), None)
        if data is None:
            return False
        try:
            checkpoint = decode_checkpoint(data, Recommender(settings))
        except CheckpointRefused as error:
            seen[0] = f"refused: {error}"
            return False
        seen[0] = f"at {checkpoint.log_position}, holding {checkpoint.contributed}"
        if all(checkpoint.contributed.get(p, -1) >= o for p, o in co_visits):
            found.append(checkpoint.log_position)
        return bool(found)

    try:
        poll_until(
            holds,
            SYNC_S * 3,
            lambda: f"no checkpoint holds the co-visits {co_visits}; newest: {seen[0]}",
        )
    finally:
        client.close()
    return found[0]


def _restored_at(worker: WorkerProcess) -> int:
    """The model log position of the checkpoint the worker says it restored (its whole
    log is read: the tail may have scrolled past start-up)."""
    found: list[re.Match[str]] = []

    def logged() -> bool:
        text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
        found[:] = [match] if (match := _RESTORED.search(text)) else []
        return bool(found)

    poll_until(
        logged,
        LIST_S,
        lambda: (
            f"worker {worker.slot} never said it restored the models:\n" + "\n".join(worker.tail)
        ),
    )
    return int(found[0].group(1))


# -- helpers ------------------------------------------------------------------------------


def _publish_catalog(settings: Settings) -> None:
    """Titles for the reasons; the lamp and the bookend share no category and no word, so
    only co-visitation can say one "goes with" the other."""
    items: list[dict[str, Any]] = [
        {"item_id": LAMP, "title": TITLES[LAMP], "category": ["home", "lighting"]},
        {"item_id": BOOKEND, "title": TITLES[BOOKEND], "category": ["home", "study"]},
    ]
    items += [
        {"item_id": f"mug-{n}", "title": f"Ceramic Mug {n}", "category": ["home", "kitchen"]}
        for n in range(6)
    ]
    items += [
        {"item_id": f"sock-{n}", "title": f"Wool Sock {n}", "category": ["fashion", "socks"]}
        for n in range(6)
    ]
    produce(
        settings,
        settings.catalog_topic,
        [(item["item_id"].encode(), orjson.dumps(item)) for item in items],
    )


def _start(fleet: Fleet) -> dict[str, list[int]]:
    """Start the three workers; once the group is stable, each slot's partitions."""
    for slot in SLOTS:
        fleet.start(slot)
    members = {fleet.client_id(slot) for slot in SLOTS}
    settings = fleet.settings
    wait_for_members(settings.bootstrap_servers, settings.group_id, members, PARTITIONS, GROUP_S)
    owners = group_assignment(settings.bootstrap_servers, settings.group_id)
    fleet.check()
    return {slot: owners[fleet.client_id(slot)] for slot in SLOTS}


def _two_owners(owners: dict[str, list[int]]) -> tuple[str, str]:
    """Two different workers that both own partitions."""
    busy = [slot for slot in SLOTS if owners[slot]]
    assert len(busy) >= 2, f"fewer than two workers own partitions: {owners}"
    return busy[0], busy[1]


def _users_on(prefix: str, partitions: list[int], count: int) -> list[str]:
    """``count`` fresh user ids whose events land on ``partitions``."""
    tag = uuid.uuid4().hex[:6]
    users = (f"{prefix}-{tag}-{n}" for n in range(10_000))
    found = [user for user in users if user_partition(user, PARTITIONS) in partitions]
    assert len(found) >= count, f"no {count} users on partitions {partitions}"
    return found[:count]


def _send(settings: Settings, bodies: list[dict[str, Any]]) -> list[Coordinates]:
    """Send events keyed by user, each on the partition Kafka's partitioner gives its
    user (named explicitly: librdkafka's default partitioner hashes differently); the
    partition and offset each one got, in order."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    coordinates: list[Coordinates | None] = [None] * len(bodies)
    errors: list[str] = []
    for index, body in enumerate(bodies):

        def delivered(error: KafkaError | None, message: Message, index: int = index) -> None:
            if error is not None:
                errors.append(str(error))
                return
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            coordinates[index] = (partition, offset)

        user = body["user_id"]
        producer.produce(
            settings.events_topic,
            key=user.encode(),
            value=orjson.dumps(body),
            partition=user_partition(user, PARTITIONS),
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0, "events not acknowledged within 30 s"
    assert not errors, f"events not delivered: {errors}"
    sent = [where for where in coordinates if where is not None]
    assert len(sent) == len(bodies)
    return sent


def _wait_for_list(
    lists: TopicReader, wanted: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """The first published list that ``wanted`` accepts, reading up to ``timeout_s``."""

    def found(messages: list[Message]) -> bool:
        return any(wanted(body) for body in _bodies(messages))

    messages = lists.wait_for(found, timeout_s)
    return next(body for body in _bodies(messages) if wanted(body))


def _covering(event_id: str) -> Callable[[dict[str, Any]], bool]:
    def covers(body: dict[str, Any]) -> bool:
        return event_id in body["covered_event_ids"]

    return covers


def _first_list(lists: TopicReader, user: str, timeout_s: float) -> dict[str, Any]:
    return _wait_for_list(lists, lambda body: body["user_id"] == user, timeout_s)


def _bodies(messages: list[Message]) -> Iterator[dict[str, Any]]:
    return (body for message in messages if (body := body_of(message)))


def _offers_with_reason(body: dict[str, Any], item: str, reason: str) -> bool:
    return any(entry["item_id"] == item and reason in entry["reasons"] for entry in body["items"])


def _port(worker: WorkerProcess) -> int:
    """The worker's metrics port (it logs it first thing: wait for that line)."""
    poll_until(
        lambda: worker.metrics_port is not None,
        LIST_S,
        lambda: f"worker {worker.slot} never said where its metrics are",
    )
    assert worker.metrics_port is not None
    return worker.metrics_port
