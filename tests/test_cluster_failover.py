"""A Redis Cluster failover under a running worker: no applied event lost, none applied twice.

Why a test of its own: the worker's one Redis client must follow a master's slots to the
replica that takes them over (redis-py's cluster client refreshes its slot map on the
MOVED the old master answers), and the promoted replica has no script cache, so the
offset-guarded writes must load the script again there and only there. The failover is
``CLUSTER FAILOVER`` sent to the replica: the coordinated kind, in which the master stops
taking writes until the replica has every one it acknowledged, so losing none is the
cluster's promise and applying none twice is the worker's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.helpers import event, produce_events, running_worker, wait_until
from tests.servers import RedisClusterServer
from worker.config import Settings
from worker.state.store import UserStore, connect_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    """A cluster of this test's own: its roles are changed, which no other test expects."""
    cluster = RedisClusterServer(url="", directory=tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _replication(port: int) -> dict[str, object]:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as node:
        info: dict[str, object] = node.info("replication")
        return info


def _replica_of(cluster: RedisClusterServer, master_port: int) -> int:
    """The port of the node that replicates the master on ``master_port``."""
    replicas = [
        port
        for port in cluster.ports()
        if (info := _replication(port))["role"] == "slave" and info["master_port"] == master_port
    ]
    assert len(replicas) == 1, f"expected one replica of {master_port}, found {replicas}"
    return replicas[0]


def test_a_master_failover_loses_no_applied_event_and_applies_none_twice(
    settings: Settings, own_cluster: RedisClusterServer
) -> None:
    settings = settings.with_overrides(redis_url=own_cluster.url)
    observer = connect_redis(settings)
    assert isinstance(observer, RedisCluster)
    store = UserStore(observer, settings)
    users = [f"f{n}" for n in range(12)]
    master_port = observer.get_node_from_key(store.key(users[0])).port  # type: ignore[no-untyped-call]
    replica_port = _replica_of(own_cluster, master_port)
    sent: Counter[str] = Counter()

    def send(count: int) -> None:
        events = [
            event(users[(sum(sent.values()) + n) % len(users)], f"i{n}") for n in range(count)
        ]
        produce_events(settings, events)
        sent.update(e["user_id"] for e in events)

    with running_worker(settings) as worker:
        send(36)
        wait_until(lambda: worker.stats.processed == 36)
        with redis.Redis(host="127.0.0.1", port=replica_port) as replica:
            assert replica.execute_command("CLUSTER", "FAILOVER") in (True, b"OK", "OK")
        deadline = time.monotonic() + 30
        while _replication(replica_port)["role"] != "master":  # events go on arriving
            assert time.monotonic() < deadline, "the replica was not promoted within 30 s"
            send(4)
            time.sleep(0.05)
        send(36)
        wait_until(lambda: worker.stats.processed == sum(sent.values()), timeout_s=60)
        worker_client = worker.store.client  # type: ignore[attr-defined]
        assert isinstance(worker_client, RedisCluster)
        followed = worker_client.get_node_from_key(store.key(users[0])).port  # type: ignore[no-untyped-call]
    assert followed == replica_port, "the worker's client did not follow the slots"
    assert _replication(master_port)["role"] == "slave", "the old master must now replicate"
    assert worker.stats.replayed == 0
    states = UserStore(connect_redis(settings), settings).read(users)
    applied = {user: state.events if state else 0 for user, state in states.items()}
    assert applied == dict(sent), "every event applied exactly once per user"
