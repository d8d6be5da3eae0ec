"""The worker end to end on the real Kafka broker and the real Redis server; the tests
that hold the worker's Redis use to account run on the Redis Cluster too."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from confluent_kafka import Message

from tests.helpers import (
    TopicReader,
    body_of,
    event,
    headers_of,
    produce,
    produce_events,
    running_worker,
    wait_until,
)
from tests.servers import on_single_and_cluster
from worker.config import Settings
from worker.contract import Recommendation
from worker.state.store import UserStore, connect_redis

pytestmark = pytest.mark.integration

CATEGORIES = ("garden", "kitchen", "toys")


def _catalog(settings: Settings, per_category: int = 30) -> None:
    items: list[dict[str, Any]] = [
        {
            "item_id": f"{category}-{n}",
            "title": f"{category} thing {n}",
            "category": ["shop", category],
            "tags": [category],
        }
        for category in CATEGORIES
        for n in range(per_category)
    ]
    produce(
        settings,
        settings.catalog_topic,
        [(i["item_id"].encode(), orjson.dumps(i)) for i in items],
    )


def _background(users: int = 30, clicks: int = 8) -> list[dict[str, Any]]:
    """Other shoppers who each stay within one category, so items co-occur by category."""
    events = []
    for u in range(users):
        category = CATEGORIES[u % len(CATEGORIES)]
        events += [event(f"bg{u}", f"{category}-{(u * 7 + k) % 30}") for k in range(clicks)]
    return events


def _covers(user: str, event_id: str) -> Callable[[list[Message]], bool]:
    def found(messages: list[Message]) -> bool:
        return any(
            m.key() == user.encode() and event_id in body_of(m).get("covered_event_ids", [])
            for m in messages
        )

    return found


def _latest_for(reader: TopicReader, user: str) -> dict[str, Any]:
    return [b for b in reader.bodies() if b["user_id"] == user][-1]


@on_single_and_cluster
def test_a_click_refreshes_the_list_toward_what_was_clicked(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    _catalog(settings)
    recommendations = reader(settings.recommendations_topic)
    with running_worker(settings) as worker:
        produce_events(settings, _background())
        wait_until(lambda: worker.stats.processed == 240)
        clicks = [event("alice", f"garden-{n}") for n in (1, 5, 9)]
        produce_events(settings, clicks[:2])
        recommendations.wait_for(_covers("alice", clicks[1]["event_id"]))

        sent = time.monotonic()
        produce_events(settings, clicks[2:])
        recommendations.wait_for(_covers("alice", clicks[2]["event_id"]), timeout_s=10)
        elapsed = time.monotonic() - sent

    latest = _latest_for(recommendations, "alice")
    Recommendation.model_validate(latest)  # the published message honours the contract
    top = [item["item_id"] for item in latest["items"][:10]]
    garden = sum(item.startswith("garden-") for item in top)
    assert garden >= 6, f"list does not favour the clicked category: {top}"
    assert latest["source_event_id"] == clicks[2]["event_id"]
    assert all(item["reasons"] for item in latest["items"])
    assert elapsed < 1.0, f"refreshed list took {elapsed:.3f} s"


def test_an_event_from_kcat_is_processed(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by deploy/local/install-tools.sh (make test does it)"
    recommendations = reader(settings.recommendations_topic)
    body = event("kcat-user", "toys-3", "add_to_cart")
    with running_worker(settings):
        subprocess.run(
            [kcat, "-b", settings.bootstrap_servers, "-t", settings.events_topic, "-P", "-K", "\t"],
            input=b"kcat-user\t" + orjson.dumps(body) + b"\n",
            check=True,
            timeout=30,
        )
        recommendations.wait_for(_covers("kcat-user", body["event_id"]))
    assert _latest_for(recommendations, "kcat-user")["source_event_id"] == body["event_id"]


def test_malformed_events_go_to_the_dlq_and_the_worker_keeps_going(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    dlq = reader(settings.dlq_topic)
    recommendations = reader(settings.recommendations_topic)
    good = [event("bob", "kitchen-1"), event("bob", "kitchen-2")]
    bad = [
        b"{not json",
        orjson.dumps(
            {
                "event_id": "e1",
                "user_id": "bob",
                "type": "click",
                "timestamp": time.time_ns() // 10**6,
            }
        ),
        orjson.dumps(event("bob", "kitchen-3", "teleport")),
        b"x" * (settings.max_message_bytes + 1),
    ]
    messages: list[tuple[bytes | None, bytes | None]] = [(b"bob", orjson.dumps(good[0]))]
    messages += [(b"bob", value) for value in bad]
    messages += [(b"bob", orjson.dumps(good[1]))]
    with running_worker(settings) as worker:
        produce(settings, settings.events_topic, messages)
        dlq.wait_for(lambda seen: len(seen) == len(bad))
        recommendations.wait_for(_covers("bob", good[1]["event_id"]))
        assert worker.stats.dead_lettered == len(bad)
        assert worker.stats.processed == len(good)

    by_value = {m.value(): headers_of(m) for m in dlq.messages}
    assert set(by_value) == set(bad), "DLQ must carry the original bytes"
    reasons = [headers["tailor.dlq.reason"].decode() for headers in by_value.values()]
    assert Counter(reasons) == Counter(["not_json", "missing_field", "unknown_type", "oversize"])
    missing = by_value[bad[1]]
    assert missing["tailor.dlq.field"] == b"item_id"
    assert missing["tailor.dlq.source.topic"].decode() == settings.events_topic
    assert int(missing["tailor.dlq.source.offset"]) >= 0


@on_single_and_cluster
def test_a_restarted_worker_resumes_from_committed_offsets(settings: Settings) -> None:
    first = [event(f"u{n % 5}", f"toys-{n % 30}") for n in range(50)]
    second = [event(f"u{n % 5}", f"garden-{n % 30}") for n in range(30)]
    with running_worker(settings) as worker:
        produce_events(settings, first)
        wait_until(lambda: worker.stats.processed == len(first))
    produce_events(settings, second)
    with running_worker(settings) as restarted:
        wait_until(lambda: restarted.stats.consumed == len(second))
        time.sleep(0.5)  # anything replayed by mistake would arrive by now
        assert restarted.stats.consumed == len(second)
        assert restarted.stats.replayed == 0

    store = UserStore(connect_redis(settings), settings)
    states = store.read([f"u{n}" for n in range(5)])
    assert sum(state.events for state in states.values() if state) == len(first) + len(second)


@on_single_and_cluster
def test_replayed_events_are_not_applied_twice(settings: Settings) -> None:
    events = [event(f"r{n % 4}", f"kitchen-{n % 30}") for n in range(40)]
    with running_worker(settings) as worker:
        produce_events(settings, events)
        wait_until(lambda: worker.stats.processed == len(events))
    # A second group reads the same partitions from the start: every event is a replay.
    replay = settings.with_overrides(group_id=settings.group_id + "-replay")
    with running_worker(replay) as again:
        wait_until(lambda: again.stats.consumed == len(events))
        assert again.stats.processed == 0
        assert again.stats.replayed == len(events)

    store = UserStore(connect_redis(settings), settings)
    states = store.read([f"r{n}" for n in range(4)])
    assert [state.events if state else 0 for state in states.values()] == [10, 10, 10, 10]


@on_single_and_cluster
def test_the_taste_vector_is_read_from_and_written_to_redis_after_every_event(
    settings: Settings,
) -> None:
    """The worker folds each event into the vector it read from Redis and writes it back.

    Between two events the test plants a vector of its own in Redis: the next vector must
    be that one decayed plus one unit item vector, which only a worker that read it makes.
    """
    client = connect_redis(settings)
    store = UserStore(client, settings)
    key = store.key("tess")
    _catalog(settings)
    vectors: list[npt.NDArray[np.float32]] = []
    with running_worker(settings) as worker:
        produce_events(settings, _background(users=9, clicks=4))
        wait_until(lambda: worker.stats.processed == 36)
        for item in ("garden-1", "garden-5"):
            done = worker.stats.processed
            produce_events(settings, [event("tess", item)])
            wait_until(partial(lambda before: worker.stats.processed > before, done))
            state = store.read(["tess"])["tess"]
            assert state is not None
            assert state.events == len(vectors) + 1
            vectors.append(state.vector.copy())
        planted = np.zeros(settings.vector_dim, dtype=np.float32)
        planted[0] = 10.0
        client.hset(key, "v", planted.tobytes())
        produce_events(settings, [event("tess", "garden-9")])
        wait_until(lambda: worker.stats.processed == 39)
    after = store.read(["tess"])["tess"]
    assert after is not None
    assert np.linalg.norm(vectors[0]) > 0
    assert not np.allclose(vectors[0], vectors[1])
    step = after.vector - settings.taste_memory * planted
    assert np.isclose(np.linalg.norm(step), 1.0, atol=1e-4), "not folded into what Redis held"
