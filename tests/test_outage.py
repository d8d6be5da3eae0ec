"""When Redis goes away the worker pauses, reports not-ready, and resumes by itself: one
server, or every node of a Redis Cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import event, produce_events, running_worker, wait_until
from tests.servers import RedisClusterServer, RedisServer, on_single_and_cluster
from worker.config import Settings
from worker.metrics import Health
from worker.state.store import UserStore, connect_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path, redis_kind: str) -> Iterator[RedisServer | RedisClusterServer]:
    """A Redis of this test's own (even when TAILOR_TEST_REDIS_URL names one): it is stopped.

    A cluster is stopped whole (every master and replica) and comes back with its
    nodes.conf and append-only files, as after a power cut of the rack.
    """
    kind = {"single": RedisServer, "cluster": RedisClusterServer}[redis_kind]
    server = kind(url="", directory=tmp_path / "redis", persist=True).start()
    try:
        yield server
    finally:
        server.stop()


@on_single_and_cluster
def test_a_redis_outage_pauses_and_the_worker_resumes_losing_nothing(
    settings: Settings, own_redis: RedisServer | RedisClusterServer
) -> None:
    settings = settings.with_overrides(redis_url=own_redis.url, redis_timeout_s=0.5)
    health = Health()
    before = [event(f"o{n % 3}", f"item-{n}") for n in range(6)]
    during = [event(f"o{n % 3}", f"item-{n}") for n in range(6, 12)]
    with running_worker(settings, health=health) as worker:
        produce_events(settings, before)
        wait_until(lambda: worker.stats.processed == len(before))
        assert health.ready

        own_redis.stop()
        produce_events(settings, during)
        wait_until(lambda: not health.ready, timeout_s=30)
        assert "redis" in health.why
        time.sleep(1.0)  # the worker holds its batch while Redis is away
        assert worker.stats.processed == len(before)

        own_redis.start()  # same port and data (append-only file)
        wait_until(lambda: worker.stats.processed == len(before) + len(during), timeout_s=60)
        wait_until(lambda: health.ready)
    assert worker.stats.replayed == 0
    states = UserStore(connect_redis(settings), settings).read(["o0", "o1", "o2"])
    assert sum(state.events for state in states.values() if state) == len(before) + len(during)
