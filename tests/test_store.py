"""The Redis store against the real Redis server: layout, offset guard, TTL, erasure.

The offset guard's topic-id rule runs on both stores, Redis and the in-memory one of
:mod:`worker.testing` that the loop tests and the harness use: they must agree.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from worker.config import Settings
from worker.state.store import StateStore, StoreUnavailable, UserStore
from worker.state.user import Interaction, UserState, UserWrite
from worker.testing import MemoryStates

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str) -> UserStore:
    settings = Settings(
        redis_url=redis_url,
        redis_key_prefix=f"s{uuid.uuid4().hex[:8]}",
        redis_chunk_size=7,  # small, so that the tests cross chunk boundaries
        vector_dim=4,
        user_ttl_s=3600,
    )
    return UserStore(redis.Redis.from_url(redis_url), settings)


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


def test_offset_guard_refuses_a_write_at_or_below_the_applied_offset(store: UserStore) -> None:
    assert store.write([UserWrite(_state("g", 10, events=3))]).written == 1
    for replayed in (10, 9):
        outcome = store.write([UserWrite(_state("g", replayed, events=99))])
        assert outcome.stale == 1
    state = store.read(["g"])["g"]
    assert state is not None
    assert state.events == 3
    assert store.write([UserWrite(_state("g", 11, events=4))]).written == 1


def test_a_forget_write_replaces_everything(store: UserStore) -> None:
    store.write([UserWrite(_state("f", 10, events=5))])
    fresh = _state("f", 12, events=1)
    assert store.write([UserWrite(fresh, erase_first=True)]).written == 1
    state = store.read(["f"])["f"]
    assert state is not None
    assert state.events == 1


def test_every_key_has_the_idle_ttl(store: UserStore) -> None:
    store.write([UserWrite(_state("t", 1))])
    ttl = store.client.ttl(store.key("t"))
    assert 3500 < ttl <= 3600


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
