"""The Redis store against the real Redis server and a real Redis Cluster: layout, offset
guard, TTL, erasure, model checkpoints.

The offset guard's topic-id rule runs on both stores, Redis and the in-memory one of
:mod:`worker.testing` that the loop tests and the harness use: they must agree.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.servers import on_single_and_cluster
from worker.config import Settings
from worker.state.store import (
    RedisCheckpoints,
    StateStore,
    StoreRefused,
    StoreUnavailable,
    UserStore,
    connect_redis,
)
from worker.state.user import Interaction, UserState, UserWrite
from worker.testing import MemoryStates

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_under_test: str) -> UserStore:
    settings = Settings(
        redis_url=redis_under_test,
        redis_key_prefix=f"s{uuid.uuid4().hex[:8]}",
        redis_chunk_size=7,  # small, so that the tests cross chunk boundaries
        vector_dim=4,
        user_ttl_s=3600,
    )
    return UserStore(connect_redis(settings), settings)


@pytest.fixture(params=["redis", "memory"])
def either(request: pytest.FixtureRequest) -> StateStore:
    """The Redis store, then the in-memory one that mirrors its guard."""
    if request.param == "memory":
        return MemoryStates()
    redis_store: UserStore = request.getfixturevalue("store")
    return redis_store


def _state(
    user: str, offset: int, events: int = 1, topic: str = "", offsets: dict[int, int] | None = None
) -> UserState:
    return UserState(
        user_id=user,
        vector=np.arange(4, dtype=np.float32),
        recent=[Interaction("i1", "click", 1.0)],
        last_list=["i2", "i3"],
        events=events,
        last_seen=1.0,
        offsets={0: offset} if offsets is None else offsets,
        topic_id=topic,
    )


@on_single_and_cluster
def test_round_trip_in_chunks(store: UserStore) -> None:
    users = [f"user-{n}" for n in range(20)]
    outcome = store.write([UserWrite(_state(u, 5, events=n)) for n, u in enumerate(users)])
    assert outcome.written == 20
    assert outcome.stale == 0
    states = store.read([*users, "nobody"])
    assert states["nobody"] is None
    for n, user in enumerate(users):
        state = states[user]
        assert state is not None
        assert state.events == n
        assert state.offsets == {0: 5}
        assert state.last_list == ["i2", "i3"]
        np.testing.assert_array_equal(state.vector, np.arange(4, dtype=np.float32))


@on_single_and_cluster
def test_offset_guard_refuses_a_write_at_or_below_the_applied_offset(store: UserStore) -> None:
    assert store.write([UserWrite(_state("g", 10, events=3))]).written == 1
    for replayed in (10, 9):
        outcome = store.write([UserWrite(_state("g", replayed, events=99))])
        assert outcome.stale == 1
    state = store.read(["g"])["g"]
    assert state is not None
    assert state.events == 3
    assert store.write([UserWrite(_state("g", 11, events=4))]).written == 1


@on_single_and_cluster
def test_a_forget_write_replaces_everything(store: UserStore) -> None:
    store.write([UserWrite(_state("f", 10, events=5))])
    fresh = _state("f", 12, events=1)
    assert store.write([UserWrite(fresh, erase_first=True)]).written == 1
    state = store.read(["f"])["f"]
    assert state is not None
    assert state.events == 1


@on_single_and_cluster
def test_every_key_has_the_idle_ttl(store: UserStore) -> None:
    store.write([UserWrite(_state("t", 1))])
    ttl = store.client.ttl(store.key("t"))
    assert 3500 < ttl <= 3600


@on_single_and_cluster
def test_every_write_refreshes_the_idle_ttl(store: UserStore) -> None:
    """Idle means idle: an active user's state must not expire 90 days after they joined."""
    store.write([UserWrite(_state("active", 1))])
    store.client.expire(store.key("active"), 10)  # as if most of the TTL had gone by
    assert 0 < store.client.ttl(store.key("active")) <= 10
    assert store.write([UserWrite(_state("active", 2, events=2))]).written == 1
    assert 3500 < store.client.ttl(store.key("active")) <= 3600
    store.client.expire(store.key("active"), 10)
    fresh = _state("active", 3)
    assert store.write([UserWrite(fresh, erase_first=True)]).written == 1  # after a forget
    assert 3500 < store.client.ttl(store.key("active")) <= 3600


@on_single_and_cluster
def test_erase_leaves_nothing_of_the_user(store: UserStore) -> None:
    store.write([UserWrite(_state("erase*me", 1)), UserWrite(_state("erase-other", 1))])
    assert store.keys_of("erase*me") == [store.key("erase*me").encode()]
    assert store.erase(["erase*me"]) == 1
    assert store.keys_of("erase*me") == []
    assert store.read(["erase*me"])["erase*me"] is None
    assert store.read(["erase-other"])["erase-other"] is not None


def test_an_unreachable_redis_raises_store_unavailable() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.2)
    store = UserStore(client, settings)
    assert not store.ping()
    with pytest.raises(StoreUnavailable, match="Redis unreachable"):
        store.read(["anyone"])


@on_single_and_cluster
def test_writes_survive_a_flushed_script_cache(store: UserStore) -> None:
    assert store.write([UserWrite(_state("s", 1))]).written == 1
    store.client.script_flush()  # as after a Redis restart
    assert store.write([UserWrite(_state("s", 2, events=2))]).written == 1
    state = store.read(["s"])["s"]
    assert state is not None
    assert state.events == 2


def test_offsets_of_another_topic_id_guard_nothing_and_are_dropped(either: StateStore) -> None:
    assert either.write([UserWrite(_state("r", 0, 7, "topic-1", {0: 40, 1: 9}))]).written == 1
    recreated = _state("r", 0, 8, "topic-2")  # offsets restart at 0 in the new topic
    assert either.write([UserWrite(recreated)]).written == 1
    state = either.read(["r"])["r"]
    assert state is not None
    assert (state.topic_id, state.offsets, state.events) == ("topic-2", {0: 0}, 8)
    assert either.write([UserWrite(_state("r", 0, 9, "topic-2"))]).stale == 1  # guards again
    assert either.write([UserWrite(_state("r", 1, 9, "topic-2"))]).written == 1


@pytest.mark.parametrize(("stored", "written"), [("topic-1", "topic-1"), ("", "topic-2")])
def test_offsets_of_the_same_or_an_unknown_topic_id_guard(
    either: StateStore, stored: str, written: str
) -> None:
    either.write([UserWrite(_state("k", 10, 3, stored))])
    assert either.write([UserWrite(_state("k", 10, 99, written))]).stale == 1
    state = either.read(["k"])["k"]
    assert state is not None
    assert (state.topic_id, state.events) == (stored, 3)


def test_a_write_without_a_topic_id_keeps_the_stored_one(either: StateStore) -> None:
    either.write([UserWrite(_state("w", 10, 3, "topic-1"))])
    assert either.write([UserWrite(_state("w", 9, 4, ""))]).stale == 1
    assert either.write([UserWrite(_state("w", 11, 4, ""))]).written == 1
    state = either.read(["w"])["w"]
    assert state is not None
    assert (state.topic_id, state.offsets) == ("topic-1", {0: 11})


@on_single_and_cluster
def test_the_latest_list_is_stored_with_the_state_and_its_ttl(store: UserStore) -> None:
    """Written by the same guarded script as the state: one round trip, one TTL."""
    assert store.latest_list("l") is None
    store.write([UserWrite(_state("l", 1), listed=b'{"items":[1]}')])
    assert store.latest_list("l") == b'{"items":[1]}'
    assert 3500 < store.client.ttl(store.list_key("l")) <= 3600
    store.client.expire(store.list_key("l"), 10)
    assert store.write([UserWrite(_state("l", 2, events=2), listed=b'{"items":[2]}')]).written == 1
    assert store.latest_list("l") == b'{"items":[2]}'
    assert 3500 < store.client.ttl(store.list_key("l")) <= 3600


def test_a_stored_list_is_compressed_and_one_stored_uncompressed_still_reads(
    store: UserStore,
) -> None:
    reasons = ["viewed together with WHITE HANGING HEART T-LIGHT HOLDER", "trending now"]
    items = [{"item_id": f"item-{n:06d}", "score": n / 7, "reasons": reasons} for n in range(20)]
    body = orjson.dumps({"schema_version": 1, "user_id": "z", "items": items})
    store.write([UserWrite(_state("z", 1), listed=body)])
    stored = store.client.get(store.list_key("z"))
    assert stored is not None
    assert len(stored) < len(body) / 3
    assert store.latest_list("z") == body
    store.client.set(store.list_key("z"), body)  # as a worker wrote it before compression
    assert store.latest_list("z") == body


@on_single_and_cluster
def test_a_refused_write_stores_no_list_and_a_write_without_one_keeps_it(
    store: UserStore,
) -> None:
    store.write([UserWrite(_state("g", 10), listed=b"kept")])
    assert store.write([UserWrite(_state("g", 9), listed=b"replayed")]).stale == 1
    assert store.latest_list("g") == b"kept"
    assert store.write([UserWrite(_state("g", 11, events=2))]).written == 1  # storing off
    assert store.latest_list("g") == b"kept"


@on_single_and_cluster
def test_a_forget_write_drops_the_list_and_erase_removes_it(store: UserStore) -> None:
    store.write([UserWrite(_state("f", 10), listed=b"before")])
    assert store.write([UserWrite(_state("f", 12), erase_first=True)]).written == 1
    assert store.latest_list("f") is None  # nothing of before the forget survives
    store.write([UserWrite(_state("f", 13, events=2), listed=b"after")])
    assert sorted(store.keys_of("f")) == [store.key("f").encode(), store.list_key("f").encode()]
    assert store.erase(["f"]) == 2
    assert store.keys_of("f") == []
    assert store.latest_list("f") is None


def test_the_memory_store_keeps_lists_as_redis_does() -> None:
    memory = MemoryStates()
    memory.write([UserWrite(_state("m", 10), listed=b"first")])
    assert memory.write([UserWrite(_state("m", 9), listed=b"replayed")]).stale == 1
    assert memory.lists == {"m": b"first"}
    memory.write([UserWrite(_state("m", 12), erase_first=True)])
    assert memory.lists == {}
    memory.write([UserWrite(_state("m", 13), listed=b"after")])
    assert memory.erase(["m"]) == 2
    assert memory.lists == {}


def _masters_of(store: UserStore, users: list[str]) -> set[str]:
    """The cluster nodes that hold these users' keys."""
    assert isinstance(store.client, RedisCluster)
    return {store.client.get_node_from_key(store.key(user)).name for user in users}  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("redis_kind", ["cluster"])
def test_erasure_checks_find_users_on_every_master(store: UserStore) -> None:
    """``keys_of`` must SCAN each master: a scan of one node would miss most users."""
    users = [f"spread-{n}" for n in range(24)]
    assert len(_masters_of(store, users)) == 3, "the users must land on all three masters"
    store.write([UserWrite(_state(user, 1)) for user in users])
    assert all(store.keys_of(user) == [store.key(user).encode()] for user in users)
    assert store.erase(users) == len(users)
    assert not any(store.keys_of(user) for user in users)


@pytest.mark.parametrize("redis_kind", ["cluster"])
def test_a_master_that_lost_its_scripts_gets_only_its_writes_sent_again(store: UserStore) -> None:
    """As after a failover: one master lacks the script, the others ran their writes. Only
    the missing ones are sent again, so none is counted stale and none is lost."""
    assert isinstance(store.client, RedisCluster)
    users = [f"noscript-{n}" for n in range(24)]
    assert store.write([UserWrite(_state(user, 1)) for user in users]).written == len(users)
    one_master = store.client.get_node_from_key(store.key(users[0]))  # type: ignore[no-untyped-call]
    one_master.redis_connection.script_flush()  # that node alone
    outcome = store.write([UserWrite(_state(user, 2, events=2)) for user in users])
    assert (outcome.written, outcome.stale) == (len(users), 0)
    states = store.read(users)
    assert all(state is not None and state.events == 2 for state in states.values())


@on_single_and_cluster
def test_model_checkpoints_keep_the_newest_and_one_lease(store: UserStore) -> None:
    settings = store.settings.with_overrides(model_checkpoints_kept=2)
    checkpoints = RedisCheckpoints(store.client, settings, "worker-a")
    assert key_slot(checkpoints.list_key.encode()) == key_slot(checkpoints.lease_key.encode())
    for data in (b"first", b"second", b"third"):
        checkpoints.save(data)
    assert list(checkpoints.newest_first()) == [b"third", b"second"]
    assert checkpoints.claim(60)
    assert not RedisCheckpoints(store.client, settings, "worker-b").claim(60)


def _documented_acl(cluster: bool) -> list[str]:
    """The ACL rules README's Security section says a Tailor user needs."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rules = re.search(r"`user tailor on >PASSWORD ~tailor\* ([^`]+)`", readme)
    extra = re.search(r"on a Redis Cluster also\s+`([^`]+)`", readme)
    assert rules, "README's Security section lost its ACL rules"
    assert extra, "README's Security section lost the cluster's extra ACL rules"
    return rules[1].split() + (extra[1].split() if cluster else [])


@on_single_and_cluster
def test_an_acl_user_with_the_documented_rules_can_do_all_tailor_does(
    redis_under_test: str, redis_kind: str
) -> None:
    """Every command of the store and the checkpoints, as the least user README describes
    (on a cluster the user is made on every node: ACLs are per node)."""
    user, password = f"tailor-acl-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin = connect_redis(Settings(redis_url=redis_under_test))
    nodes = (
        [node.redis_connection for node in admin.get_nodes()]  # type: ignore[no-untyped-call]
        if isinstance(admin, RedisCluster)
        else [admin]
    )
    rules = _documented_acl(cluster=redis_kind == "cluster")
    for node in nodes:
        assert node is not None
        node.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~tailor*", *rules)
    try:
        settings = Settings(
            redis_url=redis_under_test,
            redis_username=user,
            redis_password=password,
            redis_key_prefix=f"tailor-{uuid.uuid4().hex[:6]}",
            vector_dim=4,
        )
        store = UserStore(connect_redis(settings), settings)
        store.check()
        assert store.ping()
        assert store.write([UserWrite(_state("acl", 1))]).written == 1
        for node in nodes:
            assert node is not None
            node.script_flush()  # the next write loads the script again
        assert store.write([UserWrite(_state("acl", 2, events=2), listed=b"{}")]).written == 1
        assert store.latest_list("acl") == b"{}"  # what `tailor serve` reads
        assert len(store.keys_of("acl")) == 2
        assert store.erase(["acl"]) == 2
        checkpoints = RedisCheckpoints(store.client, settings, "acl")
        checkpoints.save(b"checkpoint")
        assert list(checkpoints.newest_first()) == [b"checkpoint"]
        assert checkpoints.claim(60)
    finally:
        for node in nodes:
            assert node is not None
            node.execute_command("ACL", "DELUSER", user)


def test_the_cluster_client_on_one_server_is_refused_naming_the_setting(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, redis_cluster=True)
    with pytest.raises(StoreUnavailable, match="TAILOR_REDIS_CLUSTER") as refused:
        connect_redis(settings)
    assert "did not give its slot map" in str(refused.value)


def test_the_one_server_client_on_a_cluster_stops_naming_the_setting(
    redis_cluster_url: str,
) -> None:
    """Without the cluster client a node answers MOVED for keys of other masters: that is
    a setting to change, not an outage to wait out."""
    node_url = redis_cluster_url.replace("redis+cluster://", "redis://")
    settings = Settings(redis_url=node_url, redis_key_prefix=f"s{uuid.uuid4().hex[:8]}")
    store = UserStore(connect_redis(settings), settings)
    with pytest.raises(StoreRefused, match="is a Redis Cluster node") as refused:
        store.read([f"user-{n}" for n in range(24)])  # some live on the other masters
    assert "TAILOR_REDIS_CLUSTER=true or use a redis+cluster://" in str(refused.value)


@pytest.mark.parametrize("redis_kind", ["cluster"])
def test_the_cluster_client_gets_the_timeouts_retries_and_name_of_the_settings(
    redis_under_test: str,
) -> None:
    name = f"tailor-{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=redis_under_test, client_id=name, redis_timeout_s=1.5)
    client = connect_redis(settings)
    assert isinstance(client, RedisCluster)
    assert client.ping()  # a connection to every master
    options = client.nodes_manager.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (1.5, 1.5)
    assert client.retry.get_retries() == 3
    for master in client.get_primaries():  # type: ignore[no-untyped-call]
        assert master.redis_connection is not None
        clients = master.redis_connection.client_list()
        assert any(entry["name"] == name for entry in clients), f"unnamed on {master.name}"
    client.close()


@on_single_and_cluster
def test_checkpoints_written_before_the_hash_tag_are_read_after_the_newer_ones(
    store: UserStore,
) -> None:
    """An upgraded worker starts from the checkpoint its predecessor left under the old key
    instead of rebuilding from what the model topic still retains."""
    checkpoints = RedisCheckpoints(store.client, store.settings, "upgraded")
    store.client.lpush(f"{store.settings.redis_key_prefix}:models:checkpoints", b"before")
    assert list(checkpoints.newest_first()) == [b"before"]
    checkpoints.save(b"after")
    assert list(checkpoints.newest_first()) == [b"after", b"before"]
