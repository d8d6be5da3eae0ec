"""``tailor demo``: the real worker on embedded infrastructure, no servers needed.

librdkafka's built-in mock cluster stands in for Kafka and fakeredis for Redis; everything
else is the code ``tailor run`` uses. The demo plays the bundled sample stream (a slice of
UCI Online Retail) as background traffic, then replays a few customers' next purchases one
at a time and shows how each one changed that customer's list.

The two phases are timed apart: the backlog is sent all at once, so its events wait in
the topic behind each other and their mean latency says how long the queue was; the live
events are sent one at a time, as a shopper's clicks arrive, and their latency is what a
shopper sees. One mean over both would read like a slow product.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fakeredis
import orjson
from confluent_kafka import Consumer, Message, Producer
from rich.console import Console
from rich.table import Table

from worker.config import Settings
from worker.loop import Worker
from worker.metrics import Health, Metrics, MetricsServer
from worker.sample import sample_catalog, sample_events
from worker.transport.kafka import make_producer

__all__ = ["Backlog", "DemoOptions", "latency_rows", "run_demo"]

log = logging.getLogger("tailor.demo")

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DemoOptions:
    spotlight_users: int = 3
    events_per_user: int = 3
    shown: int = 5
    timeout_s: float = 60.0


class _NoTopicIds:
    """Topic ids for the demo: none. librdkafka's mock cluster has no controller to
    describe topics (``describe_topics`` would time out at every assignment), and the
    demo never deletes and recreates a topic."""

    def topic_id(self, topic: str) -> str:
        return ""


def start_mock_cluster() -> tuple[Producer, str]:
    """A librdkafka mock cluster; other clients reach it at the address it reports."""
    owner = Producer({"test.mock.num.brokers": 1, "client.id": "tailor-demo-mock"})
    broker = next(iter(owner.list_topics(timeout=10).brokers.values()))
    return owner, f"{broker.host}:{broker.port}"


def run_demo(settings: Settings, options: DemoOptions, console: Console) -> int:
    owner, bootstrap = start_mock_cluster()
    settings = settings.with_overrides(bootstrap_servers=bootstrap)
    console.rule("[bold]Tailor demo[/bold]: the real worker on a mock Kafka cluster and fakeredis")
    console.print(
        f"mock Kafka cluster at [cyan]{bootstrap}[/cyan]; Redis is in-process (fakeredis)"
    )
    for topic in (
        settings.events_topic,
        settings.catalog_topic,
        settings.recommendations_topic,
        settings.dlq_topic,
        settings.model_topic,
    ):
        owner.list_topics(topic, timeout=10)  # the mock cluster creates topics on first mention

    events = [orjson.loads(line) for line in sample_events()]
    spotlight = _spotlight(events, options)
    background = [e for e in events if e["event_id"] not in spotlight.event_ids]

    producer = make_producer(settings)
    for line in sample_catalog():
        producer.produce(settings.catalog_topic, key=orjson.loads(line)["item_id"], value=line)
    producer.flush(10)

    metrics, health = Metrics(), Health()
    server = MetricsServer(metrics, health, settings.metrics_host, settings.metrics_port).start()
    console.print(
        f"metrics: [cyan]http://127.0.0.1:{server.port}/metrics[/cyan] (and /healthz, /readyz)"
    )
    worker = Worker(
        settings,
        redis_client=fakeredis.FakeRedis(),
        metrics=metrics,
        health=health,
        topic_ids=_NoTopicIds(),
    )
    worker.start(catalog_timeout_s=15)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="tailor-worker", daemon=True)
    thread.start()

    lists = _ListReader(settings)
    backlog: Backlog | None = None
    live_ms: list[float] = []
    try:
        console.print(f"playing {len(background):,} background purchases from the sample ...")
        started = time.perf_counter()
        for event in background:
            _send(producer, settings, event)
        producer.produce(settings.events_topic, key=b"demo", value=b'{"event_id": "broken"')
        producer.flush(10)
        _wait_for(lambda: worker.stats.consumed >= len(background) + 1, options.timeout_s)
        drained_s = time.perf_counter() - started
        lists.drain()
        total_s, count = _event_to_publish(metrics)
        backlog = Backlog(len(background), drained_s, total_s / count if count else None)
        console.print(
            f"background done: {worker.stats.processed:,} events applied, "
            f"{worker.stats.dead_lettered} malformed message sent to the DLQ "
            f"([cyan]{settings.dlq_topic}[/cyan])\n"
        )
        titles = {
            orjson.loads(line)["item_id"]: orjson.loads(line)["title"] for line in sample_catalog()
        }
        for user_id, user_events in spotlight.by_user.items():
            console.rule(f"customer {user_id}")
            before = lists.latest.get(user_id)
            for event in user_events:
                _send(producer, settings, event)
                producer.flush(10)
                sent = time.perf_counter()
                after = lists.wait_for(user_id, str(event["event_id"]), options.timeout_s)
                elapsed_ms = 1000 * (time.perf_counter() - sent)
                live_ms.append(elapsed_ms)
                _show(console, event, before, after, titles, options.shown, elapsed_ms)
                before = after
    finally:
        stop.set()
        thread.join(30)
        lists.close()
        server.stop()
        producer.close()
        owner.flush(1)
    _summary(console, worker, latency_rows(backlog, live_ms))
    return 0


@dataclass(frozen=True, slots=True)
class Backlog:
    """The background events, sent all at once before the live ones."""

    events: int
    drained_s: float  # from the first send until the worker had consumed them all
    mean_latency_s: float | None  # the worker's event-to-publish, queueing included


def _event_to_publish(metrics: Metrics) -> tuple[float, float]:
    """Sum (seconds) and count of the worker's event-to-publish histogram so far."""
    samples = next(iter(metrics.event_to_publish.collect())).samples
    count = next(s.value for s in samples if s.name.endswith("_count"))
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    return total, count


def latency_rows(backlog: Backlog | None, live_ms: Sequence[float]) -> list[tuple[str, str]]:
    """The summary's timing rows: the backlog's drain and the live events' latency apart.

    Short enough for an 80-column terminal beside the summary's other rows.
    """
    rows = []
    if backlog is not None:
        rate = backlog.events / backlog.drained_s if backlog.drained_s > 0 else 0.0
        rows.append(
            (
                "backlog sent at once",
                f"{backlog.events:,} events in {backlog.drained_s:.1f} s ({rate:,.0f}/s)",
            )
        )
        if backlog.mean_latency_s is not None:
            rows.append(
                (
                    "backlog: mean wait per list",
                    f"{1000 * backlog.mean_latency_s:.0f} ms (queued behind the rest)",
                )
            )
    if live_ms:
        rows.append(
            (
                "live: event sent to its list",
                f"median {statistics.median(live_ms):.0f} ms "
                f"({min(live_ms):.0f}-{max(live_ms):.0f} ms, {len(live_ms)} events)",
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class _Spotlight:
    by_user: dict[str, list[Json]]
    event_ids: set[str]


def _spotlight(events: list[Json], options: DemoOptions) -> _Spotlight:
    """Customers with history early in the sample and purchases late in it."""
    first_half = {str(e["user_id"]) for e in events[: len(events) // 2]}
    late: dict[str, list[Json]] = defaultdict(list)
    for event in events[len(events) // 2 :]:
        user = str(event["user_id"])
        if user in first_half and len(late[user]) < options.events_per_user:
            late[user].append(event)
    chosen = [u for u, evs in late.items() if len(evs) == options.events_per_user]
    by_user = {u: late[u] for u in chosen[: options.spotlight_users]}
    return _Spotlight(by_user, {str(e["event_id"]) for evs in by_user.values() for e in evs})


def _send(producer: Producer, settings: Settings, event: Json) -> None:
    producer.produce(settings.events_topic, key=str(event["user_id"]), value=orjson.dumps(event))
    producer.poll(0)


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not catch up in time")
        time.sleep(0.05)


class _ListReader:
    """Reads the recommendations topic as a downstream service would."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": "tailor-demo-reader",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,  # a latency-minded reader; the default waits 500 ms
            }
        )
        self.consumer.subscribe([settings.recommendations_topic])
        self.latest: dict[str, Json] = {}

    def drain(self) -> None:
        while True:
            messages = self.consumer.consume(1000, 0.5)
            if not messages:
                return
            self._keep(messages)

    def wait_for(self, user_id: str, event_id: str, timeout_s: float) -> Json:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.1)  # returns as soon as one list arrives
            if message is not None:
                self._keep([message])
            found = self.latest.get(user_id)
            if found and event_id in found["covered_event_ids"]:
                return found
        raise TimeoutError(f"no recommendation for {user_id} after event {event_id}")

    def _keep(self, messages: Sequence[Message]) -> None:
        for message in messages:
            value = message.value()
            if message.error() is None and value is not None:
                body = orjson.loads(value)
                self.latest[body["user_id"]] = body

    def close(self) -> None:
        self.consumer.close()


def _show(
    console: Console,
    event: Json,
    before: Json | None,
    after: Json,
    titles: dict[str, str],
    shown: int,
    elapsed_ms: float,
) -> None:
    item = str(event["item_id"])
    console.print(
        f"[bold]{event['type']}[/bold] of [green]{titles.get(item, item)}[/green] "
        f"({event['timestamp']}, {event.get('context', {}).get('country', '?')}): "
        f"new list received {elapsed_ms:.0f} ms after the event was sent"
    )
    old = [i["item_id"] for i in before["items"]] if before else []
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("#", justify="right")
    table.add_column("recommended now")
    table.add_column("why")
    table.add_column("change")
    for rank, entry in enumerate(after["items"][:shown], start=1):
        item_id = entry["item_id"]
        change = (
            "[yellow]new[/yellow]" if item_id not in old else _moved(old.index(item_id) + 1, rank)
        )
        table.add_row(str(rank), titles.get(item_id, item_id), "; ".join(entry["reasons"]), change)
    console.print(table)


def _moved(was: int, now: int) -> str:
    if was == now:
        return "="
    return f"[green]up from {was}[/green]" if was > now else f"[red]down from {was}[/red]"


def _summary(console: Console, worker: Worker, timings: list[tuple[str, str]]) -> None:
    stats = worker.stats
    table = Table(title="What the worker did", show_header=False)
    for label, value in (
        ("micro-batches", stats.batches),
        ("messages consumed", stats.consumed),
        ("events applied (exactly once)", stats.processed),
        ("dead-lettered", stats.dead_lettered),
        ("recommendation lists published", stats.published),
    ):
        table.add_row(label, f"{value:,}")
    for label, text in timings:
        table.add_row(label, text)
    console.print(table)
