"""``tailor serve``: the stored lists, the trending board, the HTTP API, end to end.

End to end: a real worker (``tailor run``) on the suite's Kafka and Redis publishes lists,
and a real ``tailor serve`` process answers, for a user, byte for byte what the
recommendations topic last carried for them; a forget removes it; trending answers once
a checkpoint exists. In-process (FastAPI's test client): readiness and errors when Redis
is away, the OpenAPI schema, bounded metric labels. Without servers: the loop stores what
it publishes, and the board ranks a checkpoint's trending as the worker's models do.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Message
from fastapi.testclient import TestClient

from tests.helpers import TopicReader, event, produce_events, tailor_process, wait_until
from tests.servers import on_single_and_cluster
from tests.test_loop import Cluster, turn
from worker.config import Settings
from worker.contract import Context, Event, EventType
from worker.metrics import ServeMetrics
from worker.models.frames import FrameError
from worker.recommend.core import Envelope, Recommender
from worker.serve.app import ServeContext, create_app
from worker.serve.trending import TrendingBoard, TrendingCache, TrendingItem, board_of
from worker.state.store import ListReader, UserStore, connect_redis, connect_redis_async
from worker.state.user import UserState, UserWrite
from worker.sync.checkpoint import encode_checkpoint

T0 = datetime(2026, 5, 4, 9, tzinfo=UTC)


# -- the loop stores what it publishes ---------------------------------------------------


def _published(cluster: Cluster) -> dict[str, bytes]:
    """The newest list on the recommendations topic for each user (None: a tombstone)."""
    newest: dict[str, bytes] = {}
    for message in cluster.kafka.messages(cluster.settings.recommendations_topic):
        key, value = message.key(), message.value()
        assert key is not None
        if value is None:
            newest.pop(key.decode(), None)
        else:
            newest[key.decode()] = value
    return newest


def test_the_worker_stores_the_list_it_publishes_byte_for_byte() -> None:
    cluster = Cluster()
    worker = cluster.worker()
    for n, item in enumerate(("lamp", "shade", "bulb")):
        cluster.send("ann", item)
        cluster.send("bob", ("vase", "rug", "mug")[n])
    turn(worker, until=lambda: cluster.events_applied("ann") == 3 == cluster.events_applied("bob"))
    worker.close()
    assert set(cluster.states.lists) == {"ann", "bob"}
    assert cluster.states.lists == _published(cluster)


def test_with_store_lists_off_nothing_is_stored() -> None:
    cluster = Cluster(Settings(store_lists=False, batch_wait_ms=1, metrics_port=0))
    worker = cluster.worker()
    cluster.send("ann", "lamp")
    turn(worker, until=lambda: cluster.events_applied("ann") == 1)
    worker.close()
    assert _published(cluster)
    assert cluster.states.lists == {}


# -- the trending board ----------------------------------------------------------------


def _envelopes(count: int) -> list[Envelope]:
    """Clicks of 40 users on 30 items, Zipf-like, from two countries and two devices."""
    rng = np.random.default_rng(3)
    envelopes = []
    for n in range(count):
        item = f"item-{min(int(rng.zipf(1.6)), 30) - 1:02d}"
        user = f"user-{int(rng.integers(0, 40))}"
        where = Context(country=("NL", "DE")[n % 2], device=("web", "ios")[n % 3 == 0])
        body = {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": EventType.CLICK}
        stamped = {**body, "timestamp": T0 + timedelta(seconds=30 * n), "context": where}
        envelopes.append(Envelope(Event.model_validate(stamped), 0, n))
    return envelopes


@pytest.fixture(scope="module")
def learned() -> Recommender:
    rec = Recommender(Settings(explore_share=0.0))
    stream = _envelopes(600)
    for start in range(0, len(stream), 100):
        rec.process(stream[start : start + 100], {}, now=T0)
    rec.trending.refresh()
    return rec


def test_the_board_ranks_a_checkpoint_as_the_workers_models_do(learned: Recommender) -> None:
    board = board_of(encode_checkpoint(learned, log_position=17), learned.settings)
    ids = learned.index.ids
    assert [entry.item_id for entry in board.overall] == [ids[r] for r in learned.trending.top()]
    assert set(board.segments) == set(learned.trending.segments)
    assert {"country:NL", "country:DE", "device:web", "device:ios"} <= set(board.segments)
    for key, ranked in board.segments.items():
        rows, counts = learned.trending.segment_top(key)
        assert [(e.item_id, e.score) for e in ranked] == [
            (ids[row], round(count, 6)) for row, count in zip(rows, counts, strict=True)
        ]
    assert (board.items, board.log_position) == (len(ids), 17)
    assert board.as_of == (T0 + timedelta(seconds=30 * 599)).timestamp()
    assert board.overall[0].score > board.overall[-1].score > 0


def test_the_board_takes_each_segment_in_turn_then_overall_each_item_once() -> None:
    board = TrendingBoard(
        overall=[TrendingItem("a", 9.0), TrendingItem("b", 8.0), TrendingItem("c", 7.0)],
        segments={"country:NL": [TrendingItem("b", 3.0)], "device:ios": [TrendingItem("d", 2.0)]},
        items=4,
        log_position=0,
        as_of=0.0,
    )
    picked = [(entry.item_id, key) for entry, key in board.top(["country:NL", "device:ios"], 3)]
    assert picked == [("b", "country:NL"), ("d", "device:ios"), ("a", "")]
    unknown = [(entry.item_id, key) for entry, key in board.top(["country:XX"], 9)]
    assert unknown == [("a", ""), ("b", ""), ("c", "")]


def test_a_refused_checkpoint_falls_back_to_an_older_one_and_unchanged_is_not_reread(
    learned: Recommender,
) -> None:
    good = encode_checkpoint(learned, log_position=3)
    stored = [good[:-1] + bytes([good[-1] ^ 1]), good]  # the newest one damaged
    results: list[str] = []
    cache = TrendingCache(learned.settings, lambda: iter(stored), on_result=results.append)
    assert cache.board is None
    assert cache.refresh() == "loaded"
    assert cache.board is not None
    assert cache.board.log_position == 3
    stored.pop(0)
    assert cache.refresh() == "unchanged"
    stored.clear()
    assert cache.refresh() == "missing"
    assert cache.board is not None  # the last one loaded is kept
    assert results == ["loaded", "unchanged", "missing"]
    with pytest.raises(FrameError):
        board_of(b"not a checkpoint", learned.settings)


# -- the API in-process ------------------------------------------------------------------


def _client(
    settings: Settings, cache: TrendingCache | None = None, metrics: ServeMetrics | None = None
) -> TestClient:
    """The app in-process; use it as a context manager, so that every request runs on one
    event loop (the asyncio Redis client's connections belong to the loop they were
    made on)."""
    lists = ListReader(connect_redis_async(settings), settings)
    trending = cache or TrendingCache(settings, lambda: iter(()))
    context = ServeContext(settings, lists, trending, metrics or ServeMetrics())
    return TestClient(create_app(context))


def _unreachable() -> Settings:
    """Redis on a port nothing listens on (bound, then closed), with short timeouts."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.5)


def test_readiness_is_false_and_lists_answer_503_while_redis_is_unreachable(
    learned: Recommender, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _unreachable()
    cache = TrendingCache(settings, lambda: iter([encode_checkpoint(learned, 0)]))
    cache.refresh()
    metrics = ServeMetrics()
    with _client(settings, cache, metrics) as client:
        ready = client.get("/readyz")
        answer = client.get("/v1/users/ann/recommendations")
        client.get("/v1/users/bob/recommendations")
        alive = client.get("/healthz")
        trending = client.get("/v1/trending")
    assert ready.status_code == 503
    assert ready.json() == {
        "ready": False,
        "redis": False,
        "checkpoint": True,
        "why": "Redis does not answer",
    }
    assert metrics.registry.get_sample_value("tailor_serve_ready") == 0
    assert answer.status_code == 503
    assert "Redis unreachable" in answer.json()["detail"]
    said = [r.getMessage() for r in caplog.records if r.name == "tailor.serve"]
    assert len(said) == 1  # one line for the outage, not one per request
    assert said[0].startswith("lists unavailable, answering 503: Redis unreachable")
    assert alive.status_code == 200  # alive all the same
    assert trending.status_code == 200  # from memory


def test_openapi_lists_every_route_with_the_recommendation_schema() -> None:
    with _client(_unreachable()) as client:
        schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/users/{user_id}/recommendations",
        "/v1/trending",
        "/v1/trending/segments",
        "/healthz",
        "/readyz",
    }
    user = schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]["responses"]
    assert user["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Recommendation"
    }
    assert set(user) >= {"200", "404", "503"}
    recommendation = schema["components"]["schemas"]["Recommendation"]
    assert {"items", "generated_at", "model_version"} <= set(recommendation["properties"])
    trending = {p["name"] for p in schema["paths"]["/v1/trending"]["get"]["parameters"]}
    assert trending == {"country", "device", "hour", "limit"}


def test_trending_before_any_checkpoint_answers_503_saying_why() -> None:
    with _client(_unreachable()) as client:
        answer = client.get("/v1/trending", params={"country": "NL"})
        wrong_hour = client.get("/v1/trending", params={"hour": 24})
    assert answer.status_code == 503
    assert "no checkpoint loaded yet" in answer.json()["detail"]
    assert wrong_hour.status_code == 422


@pytest.mark.integration
@on_single_and_cluster
def test_the_list_reader_reads_what_the_store_wrote(redis_under_test: str) -> None:
    """serve's asyncio client on one server and on a Redis Cluster (its own client class)."""
    settings = Settings(
        redis_url=redis_under_test, redis_key_prefix=f"s{uuid.uuid4().hex[:8]}", vector_dim=4
    )
    store = UserStore(connect_redis(settings), settings)
    state = UserState(user_id="reader", vector=np.zeros(4, dtype=np.float32), offsets={0: 1})
    assert store.write([UserWrite(state, listed=b'{"items":[]}')]).written == 1

    async def read() -> tuple[bytes | None, bytes | None, bool]:
        lists = ListReader(connect_redis_async(settings), settings)
        try:
            return await lists.latest("reader"), await lists.latest("nobody"), await lists.ping()
        finally:
            await lists.close()

    assert asyncio.run(read()) == (b'{"items":[]}', None, True)
    store.erase(["reader"])


# -- end to end: a real worker, a real serve process ----------------------------------


@contextmanager
def serve_process(settings: Settings, log: Path) -> Iterator[str]:
    """``tailor serve`` on 127.0.0.1 and a free port; yields its base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(settings.as_environment())
    command = [sys.executable, "-m", "worker", "serve", "--host", "127.0.0.1", "--port", "0"]
    with log.open("w") as sink:
        process = subprocess.Popen(command, env=env, stderr=sink)
    try:
        ports: list[str] = []

        def listening() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            ports[:] = re.findall(r"serving on http://127\.0\.0\.1:(\d+)", log.read_text())
            return bool(ports)

        wait_until(listening, timeout_s=60)
        yield f"127.0.0.1:{ports[0]}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _get(address: str, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _latest(messages: list[Message], user: str) -> bytes | None:
    """The newest value keyed by ``user`` (None for a tombstone or none at all)."""
    values = [m.value() for m in messages if m.key() == user.encode()]
    return values[-1] if values else None


def _covers(user: str, event_id: str) -> Callable[[list[Message]], bool]:
    def seen(messages: list[Message]) -> bool:
        latest = _latest(messages, user)
        return latest is not None and orjson.loads(latest)["source_event_id"] == event_id

    return seen


@pytest.mark.integration
def test_serve_answers_what_the_topic_published_until_a_forget(
    settings: Settings, reader: Callable[[str], TopicReader], tmp_path: Path
) -> None:
    settings = settings.with_overrides(model_checkpoint_interval_s=1, serve_checkpoint_refresh_s=1)
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    items = {f"item-{n}" for n in range(6)}
    sent = [event(ann, f"item-{n % 3}") for n in range(4)]
    sent += [
        event(bob, f"item-{3 + n % 3}", context={"country": "DE", "device": "ios"})
        for n in range(4)
    ]
    recommendations = reader(settings.recommendations_topic)
    with (
        tailor_process(settings, tmp_path / "worker.log"),
        serve_process(settings, tmp_path / "serve.log") as address,
    ):
        produce_events(settings, sent)
        for user in (ann, bob):
            last = [e["event_id"] for e in sent if e["user_id"] == user][-1]
            recommendations.wait_for(_covers(user, last))

        for user in (ann, bob):
            status, body = _get(address, f"/v1/users/{user}/recommendations")
            assert status == 200
            assert body == _latest(recommendations.messages, user)  # byte for byte
            assert orjson.loads(body)["items"], "a list with items, scores and reasons"
        status, body = _get(address, "/v1/users/nobody-at-all/recommendations")
        assert (status, orjson.loads(body)) == (
            404,
            {"detail": "no recommendations stored for this user"},
        )

        wait_until(lambda: _get(address, "/readyz")[0] == 200, timeout_s=60)

        def counted() -> bool:  # the first checkpoints may predate some of the events
            segments = orjson.loads(_get(address, "/v1/trending/segments")[1])
            return {"NL", "DE"} <= set(segments["country"]) and {"web", "ios"} <= set(
                segments["device"]
            )

        wait_until(counted, timeout_s=60)
        status, body = _get(address, "/v1/trending?country=DE&device=ios&limit=4")
        assert status == 200
        answer = orjson.loads(body)
        assert answer["segments"] == ["country:DE", "device:ios"]
        assert 0 < len(answer["items"]) <= 4
        assert answer["items"][0]["segment"] == "country:DE"
        assert answer["items"][0]["reason"] == "trending in your country (DE)"
        assert {entry["item_id"] for entry in answer["items"]} <= items

        produce_events(settings, [event(ann, None, "forget")])
        recommendations.wait_for(
            lambda seen: any(m.key() == ann.encode() and m.value() is None for m in seen)
        )
        wait_until(lambda: _get(address, f"/v1/users/{ann}/recommendations")[0] == 404)
        assert _get(address, f"/v1/users/{bob}/recommendations")[0] == 200

        status, body = _get(address, "/metrics")
        text = body.decode()
        assert 'route="/v1/users/{user_id}/recommendations",status="200"' in text
        assert ann not in text
        assert bob not in text
    client = connect_redis(settings)
    assert list(client.scan_iter(match=f"*{ann}*")) == []


def test_serve_stops_at_start_naming_redis_when_it_is_unreachable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(_unreachable().as_environment())
    done = subprocess.run(
        [sys.executable, "-m", "worker", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot start: cannot reach Redis at redis://127.0.0.1:" in done.stderr


def test_serve_help_names_every_option_and_its_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for needed in ("--host", "--port", "--access-log", "TAILOR_SERVE_HOST", "TAILOR_SERVE_PORT"):
        assert needed in shown
    for route in ("/v1/users/{user_id}/recommendations", "/v1/trending", "/readyz", "/metrics"):
        assert route in shown
