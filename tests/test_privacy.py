"""Privacy: a forget event and ``tailor forget`` leave nothing of the user in Redis.

Why SCAN the whole keyspace: ``UserStore.keys_of`` knows the layout it wrote; an erasure
must also hold against keys it does not know about, so the test lists every key of the
test's prefix and every key anywhere whose name mentions the user, and checks that a
user who was not erased is still there (the scan is not looking in the wrong place). On a
Redis Cluster the scans go to every master.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Message

from tests.helpers import TopicReader, event, produce_events, running_worker, wait_until
from tests.servers import on_single_and_cluster
from worker.config import Settings
from worker.state.store import RedisClient, connect_redis

pytestmark = pytest.mark.integration


def _keys(client: RedisClient, pattern: str) -> set[bytes]:
    return set(client.scan_iter(match=pattern, count=1000))


def _mentions(client: RedisClient, settings: Settings, user: str) -> set[bytes]:
    """Keys of the test's prefix that contain the user id, and keys anywhere that do."""
    of_prefix = {
        key for key in _keys(client, f"{settings.redis_key_prefix}*") if user.encode() in key
    }
    return of_prefix | _keys(client, f"*{user}*")


def _unique(name: str) -> str:
    """A user id no other test or earlier run has: the scan covers the whole keyspace."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _tombstone(user: str) -> Callable[[list[Message]], bool]:
    return lambda seen: any(m.key() == user.encode() and m.value() is None for m in seen)


@on_single_and_cluster
def test_a_forget_event_and_the_forget_command_leave_nothing_of_the_user(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    client = connect_redis(settings)
    recommendations = reader(settings.recommendations_topic)
    dora, erin, kept = users = (_unique("dora"), _unique("erin"), _unique("kept"))
    with running_worker(settings) as worker:
        produce_events(settings, [event(user, f"item-{n}") for user in users for n in range(3)])
        wait_until(lambda: worker.stats.processed == 9)
        assert all(_mentions(client, settings, user) for user in users)

        produce_events(settings, [event(dora, None, "forget")])
        recommendations.wait_for(_tombstone(dora))
        wait_until(lambda: worker.stats.erased == 1)
    assert _mentions(client, settings, dora) == set()

    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(settings.as_environment())
    done = subprocess.run(
        [sys.executable, "-m", "worker", "forget", erin],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "removed 2 key(s)" in done.stdout  # the state hash and the stored list
    recommendations.wait_for(_tombstone(erin))
    assert _mentions(client, settings, erin) == set()
    assert _mentions(client, settings, kept), "the scan must find a user not erased"


@on_single_and_cluster
def test_events_still_in_kafka_cannot_bring_back_a_forgotten_user(settings: Settings) -> None:
    """``tailor forget`` races with events of the user not yet processed; its forget event,
    queued behind them in the user's partition, erases what they write back."""
    client = connect_redis(settings)
    late = _unique("late")
    produce_events(settings, [event(late, f"item-{n}") for n in range(3)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(settings.as_environment())
    done = subprocess.run(
        [sys.executable, "-m", "worker", "forget", late],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with running_worker(settings) as worker:  # only now are the user's events processed
        wait_until(lambda: worker.stats.consumed == 4 and worker.stats.erased == 1)
    assert worker.stats.dead_lettered == 0
    assert _mentions(client, settings, late) == set()
