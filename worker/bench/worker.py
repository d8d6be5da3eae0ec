"""``tailor bench worker``: the real worker (``tailor run``, a process of its own) on the
Kafka and Redis of the settings, on fresh topics and keys.

How fast it drains a backlog, read from its ``/metrics``, and the latency from an event's
send to the list that covers it, as a downstream reader sees it.
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Protocol

import confluent_kafka
import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from worker.bench.common import (
    BenchError,
    Json,
    percentiles,
    progress_bar,
    warmup_count,
    warn_unfilled,
)
from worker.bench.process import LoggedProcess
from worker.bench.report import machine_info, now_iso
from worker.bench.synthetic import Clickstream, Workload
from worker.config import ENV_PREFIX, Settings
from worker.redaction import redacted_url
from worker.state.store import RedisClient, connect_redis
from worker.transport.kafka import client_config, create_topics, make_admin, make_producer

__all__ = ["WorkerOptions", "run_worker"]


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    workload: Workload = field(default_factory=Workload)
    events: int = 50_000  # drained as fast as the worker goes
    warmup: float = 0.2  # share of ``events`` consumed first, before the clock starts
    latency_events: int = 5_000
    rate: float = 1000.0  # events/s in the latency phase
    partitions: int = 4
    keep: bool = False  # leave the topics, the consumer group and the Redis keys behind
    timeout_s: float = 600.0  # for each wait (catalog load, drain, last lists)
    progress: bool = True


def run_worker(settings: Settings, options: WorkerOptions, console: Console) -> Json:
    """The real worker on the settings' Kafka and Redis, on topics and keys of its own.

    The worker is ``tailor run`` in a process of its own, as operators run it, so it has a
    GIL to itself; what it has done is read from its ``/metrics``.
    """
    suffix = uuid.uuid4().hex[:10]
    settings = settings.in_namespace(
        f"bench-{suffix}",
        metrics_host="127.0.0.1",
        metrics_port=0,
        log_level="DEBUG" if settings.log_level == "DEBUG" else "INFO",  # its start-up lines
    )
    redis_client = connect_redis(settings)
    try:
        redis_version = str(redis_client.info("server").get("redis_version", "?"))
    except Exception as error:
        where = redacted_url(settings.redis_url)
        raise BenchError(f"cannot reach Redis at {where}: {error}") from error
    try:
        create_topics(settings, partitions=options.partitions)
    except (KafkaException, RuntimeError) as error:
        raise BenchError(
            f"cannot create topics on {settings.bootstrap_servers}: {error}"
        ) from error

    stream = Clickstream(options.workload)
    warmup = warmup_count(options.events, options.warmup)
    backlog = warmup + options.events
    start_s = time.time() - 2 * backlog * options.workload.mean_gap_s - 60  # all in the past
    prefix = f"b{suffix}-"
    messages = [
        (body["user_id"].encode(), orjson.dumps(body))
        for body in stream.events(backlog, start_s=start_s, id_prefix=prefix)
    ]
    paced = stream.events(options.latency_events, start_s=start_s, id_prefix=prefix)

    producer = make_producer(settings)
    worker: _WorkerProcess | None = None
    reader: _ListReader | None = None
    result: Json = {
        "bench": "worker",
        "when": now_iso(),
        "options": {
            **asdict(options.workload),
            "events": options.events,
            "warmup": options.warmup,
            "latency_events": options.latency_events,
            "rate": options.rate,
            "partitions": options.partitions,
            "batch_size": settings.batch_size,
            "batch_wait_ms": settings.batch_wait_ms,
            "model_sync": settings.model_sync,
        },
        "topics_suffix": suffix,
    }
    try:
        with progress_bar(console, options.progress) as progress:
            task = progress.add_task("catalog produced", total=options.workload.items)
            for count, body in enumerate(stream.catalog(), 1):
                _send(
                    producer, settings.catalog_topic, body["item_id"].encode(), orjson.dumps(body)
                )
                if count % 1000 == 0:
                    progress.update(task, completed=count)
            _flush(producer, options.timeout_s)
            progress.update(task, completed=options.workload.items)

            task = progress.add_task("worker starting", total=None)
            worker = _WorkerProcess(settings)
            consuming, _ = worker.wait_for_log("consuming", options.timeout_s)
            serving, _ = worker.wait_for_log("metrics", 0)
            # From the metrics server's line, logged just before the Worker is built, to
            # "consuming": the catalog load, as Worker.start does it, and the Worker's set-up.
            result["catalog_load_s"] = consuming - serving
            result["worker_start_s"] = consuming - worker.spawned
            result["catalog_items"] = int(worker.scrape().get(("tailor_catalog_items", ()), 0))
            progress.update(task, total=1, completed=1)
            if result["catalog_items"] < options.workload.items:  # `tailor run` waits only so long
                console.print(
                    f"warning: the worker started with {result['catalog_items']:,} of "
                    f"{options.workload.items:,} catalog items",
                    style="yellow",
                    highlight=False,
                )

            # Warm-up: the group is joined and the models have seen traffic before timing.
            task = progress.add_task("warm-up consumed", total=warmup)
            for key, value in messages[:warmup]:
                _send(producer, settings.events_topic, key, value)
            _flush(producer, options.timeout_s)
            worker.wait_consumed(
                warmup,
                options.timeout_s,
                "the warm-up events",
                lambda consumed: progress.update(task, completed=consumed),
            )
            # The steady state is timed: the background fill of text neighbours done.
            pending = worker.wait_filled(options.timeout_s)
            result["content_pending"] = pending
            result["content_filled_s"] = None if pending else time.monotonic() - worker.spawned
            if pending:
                warn_unfilled(console, pending, options.timeout_s)

            # Drain: produce the backlog as fast as possible; the clock stops when the
            # worker has consumed (and handled) the last event.
            task = progress.add_task("drain consumed", total=options.events)
            before = worker.settled()
            started = time.perf_counter()
            for count, (key, value) in enumerate(messages[warmup:], 1):
                _send(producer, settings.events_topic, key, value)
                if count % 1000 == 0:
                    producer.poll(0)
            produced_s = time.perf_counter() - started
            _flush(producer, options.timeout_s)
            worker.wait_consumed(
                backlog,
                options.timeout_s,
                "the drain events",
                lambda consumed: progress.update(task, completed=consumed - warmup),
            )
            drained_s = time.perf_counter() - started
            after = worker.settled()  # every list of the drain acknowledged
            result["drain"] = {
                "events": options.events,
                "seconds": drained_s,
                "events_per_s": options.events / drained_s,
                "produce_seconds": produced_s,
                **after.minus(before),
            }

            # Latency: paced sends; a reader on the recommendations topic notes when the
            # first list covering each event arrives.
            reader = _ListReader(settings)
            task = progress.add_task("latency events sent", total=len(paced))
            before = after
            sent = paced_send(
                producer,
                settings.events_topic,
                paced,
                options.rate,
                reader,
                lambda done: progress.update(task, completed=done),
            )
            _flush(producer, options.timeout_s)
            wanted = {str(body["event_id"]) for body in paced}
            deadline = time.monotonic() + min(options.timeout_s, 120.0)
            while not wanted <= reader.latency.keys() and time.monotonic() < deadline:
                worker.check()
                reader.read(0.05)
            after = worker.settled()
            latencies_ms = [1000 * reader.latency[e] for e in wanted if e in reader.latency]
            result["latency"] = {
                "events": len(paced),
                "rate": options.rate,
                "achieved_rate": sent,
                "covered": len(latencies_ms),
                "missing": len(wanted) - len(latencies_ms),
                "lists_read": reader.lists,
                "ms": percentiles(latencies_ms),
                **after.minus(before),
            }
    finally:
        try:
            if worker is not None:
                worker.stop()
        finally:
            if reader is not None:
                reader.close()
            producer.flush(10)
            if not options.keep:
                _clean_up(settings, redis_client)
            redis_client.close()
    assert worker is not None
    result["worker_exit_code"] = worker.exit_code
    if worker.exit_code != 0:
        raise BenchError(
            f"the worker exited with status {worker.exit_code} when stopped; "
            f"its log ends with:\n{worker.log_tail()}"
        )
    result["machine"] = machine_info() | {
        "redis_server": redis_version,
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": confluent_kafka.version()[0],
    }
    return result


#: How the benchmark starts the worker: ``tailor run``, as operators run it.
_WORKER_COMMAND = (sys.executable, "-m", "worker", "run")
_POLL_S = 0.02  # how often the worker's /metrics is read while waiting for a count
_LOG_LINES = 40  # lines of the worker's log kept for error messages
#: Log lines of ``tailor run`` that mark its start-up (worker/cli.py, worker/loop.py).
_LOG_MARKS = {
    "metrics": re.compile(r"metrics on http://\S+:(\d+)/metrics"),
    "consuming": re.compile(r"consuming \S+ as group "),
}
_Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The worker's running totals, as its ``/metrics`` shows them."""

    consumed: float
    batches: float
    batch_events: float
    batch_seconds: float
    redis_trips: float
    redis_seconds: float
    published: float
    delta_bytes: float  # model deltas published (the shared models' cost on Kafka)
    deltas: float

    @classmethod
    def of(cls, samples: _Samples, topic: str) -> _Snapshot:
        def value(name: str, *labels: tuple[str, str]) -> float:
            return samples.get((name, labels), 0.0)

        return cls(
            consumed=value("tailor_events_consumed_total", ("topic", topic)),
            batches=value("tailor_batch_size_count"),
            batch_events=value("tailor_batch_size_sum"),
            batch_seconds=value("tailor_batch_processing_seconds_sum"),
            redis_trips=value("tailor_redis_roundtrip_seconds_count"),
            redis_seconds=value("tailor_redis_roundtrip_seconds_sum"),
            published=value("tailor_recommendations_published_total"),
            delta_bytes=value("tailor_model_delta_bytes_total", ("direction", "out")),
            deltas=value("tailor_model_deltas_published_total"),
        )

    def minus(self, before: _Snapshot) -> Json:
        batches = self.batches - before.batches
        trips = self.redis_trips - before.redis_trips
        events = self.batch_events - before.batch_events
        return {
            "batches": int(batches),
            "mean_batch": (self.batch_events - before.batch_events) / batches if batches else 0.0,
            "batch_ms_mean": (
                1000 * (self.batch_seconds - before.batch_seconds) / batches if batches else 0.0
            ),
            "redis_ms_mean": 1000 * (self.redis_seconds - before.redis_seconds) / trips
            if trips
            else 0.0,
            "lists_published": int(self.published - before.published),
            "model_deltas": int(self.deltas - before.deltas),
            "model_delta_bytes_per_event": (self.delta_bytes - before.delta_bytes) / events
            if events
            else 0.0,
        }


class _WorkerProcess(LoggedProcess):
    """``tailor run`` in a process of its own, watched through its log and its ``/metrics``.

    The environment is the settings' (:meth:`Settings.as_environment`) and nothing else of
    Tailor's; a thread reads the log (stderr and stdout) so the pipe never fills, notes when
    the start-up lines arrive and keeps the last lines for error messages.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.events_topic
        environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        environment.update(settings.as_environment())
        self.spawned = time.monotonic()
        self._marks: dict[str, tuple[float, re.Match[str]]] = {}
        super().__init__(_WORKER_COMMAND, environment, "worker", _LOG_LINES)

    def on_line(self, line: str) -> None:
        arrived = time.monotonic()
        for mark, pattern in _LOG_MARKS.items():
            if mark not in self._marks and (found := pattern.search(line)):
                self._marks[mark] = (arrived, found)

    def wait_for_log(self, mark: str, timeout_s: float) -> tuple[float, re.Match[str]]:
        """When (``time.monotonic``) the start-up line ``mark`` arrived, and its match."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                found = self._marks.get(mark)
            if found is not None:
                return found
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"gave up after {timeout_s:.0f} s waiting for the worker to log "
                    f"{_LOG_MARKS[mark].pattern!r}; its log ends with:\n{self.log_tail()}"
                )
            time.sleep(_POLL_S)

    def scrape(self, *names: str) -> _Samples:
        """The worker's ``/metrics`` (only the samples ``names``, when given)."""
        _, found = self.wait_for_log("metrics", 60)
        url = f"http://127.0.0.1:{found.group(1)}/metrics"
        query = "?" + urllib.parse.urlencode([("name[]", n) for n in names]) if names else ""
        try:
            with urllib.request.urlopen(url + query, timeout=10) as response:
                text = response.read().decode()
        except OSError as error:
            self.check()
            raise BenchError(f"cannot read the worker's metrics at {url}: {error}") from error
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def snapshot(self) -> _Snapshot:
        return _Snapshot.of(self.scrape(), self.topic)

    def wait_consumed(
        self, count: int, timeout_s: float, what: str, tick: Callable[[int], object]
    ) -> None:
        """Read ``/metrics`` every ``_POLL_S`` until the worker has consumed ``count``."""
        key = ("tailor_events_consumed_total", (("topic", self.topic),))
        deadline = time.monotonic() + timeout_s
        while True:
            consumed = int(self.scrape(key[0]).get(key, 0))
            tick(consumed)
            if consumed >= count:
                return
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"gave up after {timeout_s:.0f} s waiting for {what} to be consumed "
                    f"({consumed:,} of {count:,})"
                )
            time.sleep(_POLL_S)

    def wait_filled(self, timeout_s: float) -> int:
        """Wait until the worker's text neighbours are all filled in (its background work
        after a catalog load, which would otherwise share the timed phases' CPU), for at
        most ``timeout_s``; returns how many items are still pending (0: filled). A huge
        catalog may take longer than a benchmark should wait (about an hour of one core
        at a million synthetic items): the timed phases then include the neighbours that
        batches compute on the spot, and the caller says so."""
        name = "tailor_content_neighbours_pending"
        deadline = time.monotonic() + timeout_s
        while (pending := self.scrape(name).get((name, ()))) != 0:
            if pending is None:
                raise BenchError(f"the worker's /metrics has no {name}")
            self.check()
            if time.monotonic() > deadline:
                return int(pending)
            time.sleep(_POLL_S)
        return 0

    def settled(self, quiet_s: float = 0.25, timeout_s: float = 60.0) -> _Snapshot:
        """The totals once they have stopped moving (the last lists acknowledged)."""
        last, since = self.snapshot(), time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() - since < quiet_s:
            if time.monotonic() > deadline:
                raise BenchError(f"the worker's totals still moved after {timeout_s:.0f} s")
            time.sleep(0.05)
            now = self.snapshot()
            if now != last:
                last, since = now, time.monotonic()
        return last


class _ListReader:
    """A downstream service reading the recommendations topic from its current end.

    Latency-minded, it polls (returns as soon as a list arrives) with a 10 ms fetch wait,
    like the worker's own consumer. The first list that covers an event counts.
    """

    def __init__(self, settings: Settings) -> None:
        topic = settings.recommendations_topic
        self.consumer = Consumer(
            client_config(settings)
            | {
                "group.id": f"{settings.group_id}.reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "enable.partition.eof": False,
            }
        )
        metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
        ends = []
        for partition in metadata.partitions:
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            ends.append(TopicPartition(topic, partition, high))
        self.consumer.assign(ends)
        self.sent: dict[str, float] = {}  # event id -> time.time() just before produce
        self.latency: dict[str, float] = {}  # event id -> seconds until its first list
        self.lists = 0
        settle = time.monotonic() + 1.0  # connections and fetch sessions up before timing
        while time.monotonic() < settle:
            self.read(0.1)

    def read(self, timeout_s: float) -> None:
        """Take what has arrived; wait up to ``timeout_s`` (at least 1 ms) for the first."""
        first = self.consumer.poll(timeout_s) if timeout_s >= 0.001 else None
        messages = ([first] if first is not None else []) + self.consumer.consume(1000, 0)
        received = time.time()
        for message in messages:
            value = message.value()
            if message.error() is not None or value is None:
                continue
            covered = orjson.loads(value).get("covered_event_ids", [])
            counted = False
            for event_id in covered:
                sent = self.sent.get(event_id)
                if sent is not None and event_id not in self.latency:
                    self.latency[event_id] = received - sent
                    counted = True
            self.lists += counted

    def close(self) -> None:
        self.consumer.close()


class PacedReader(Protocol):
    """What :func:`paced_send` needs of a reader of the outputs."""

    sent: dict[str, float]  # event id -> time.time() just before its produce

    def read(self, timeout_s: float) -> None: ...


def paced_send(
    producer: Producer,
    topic: str,
    bodies: Sequence[Json],
    rate: float,
    reader: PacedReader,
    on_sent: Callable[[int], None] = lambda sent: None,
) -> float:
    """Send ``bodies`` at ``rate`` per second (0: at once), reading outputs in between
    rather than sleeping; returns the rate achieved. ``on_sent`` hears every 100th."""
    interval = 1.0 / rate if rate > 0 else 0.0
    started = time.perf_counter()
    for k, body in enumerate(bodies):
        due = started + k * interval
        while (left := due - time.perf_counter()) > 0:
            if left > 0.002:
                reader.read(left - 0.001)
            else:
                time.sleep(left)
        reader.read(0)
        body["timestamp"] = int(time.time() * 1000)
        value = orjson.dumps(body)
        reader.sent[str(body["event_id"])] = time.time()
        _send(producer, topic, body["user_id"].encode(), value)
        producer.poll(0)
        if k % 100 == 0:
            on_sent(k)
    on_sent(len(bodies))
    elapsed = time.perf_counter() - started
    return (len(bodies) - 1) / elapsed if len(bodies) > 1 and elapsed > 0 else rate


def _send(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:  # local queue full: let deliveries drain, then retry
            producer.poll(0.05)


def _flush(producer: Producer, timeout_s: float) -> None:
    left = producer.flush(timeout_s)
    if left:
        raise BenchError(f"{left} messages were not acknowledged by Kafka within {timeout_s} s")


def _clean_up(settings: Settings, redis_client: RedisClient) -> None:
    """Delete the benchmark's topics, consumer group and Redis keys (best effort)."""
    admin = make_admin(settings)
    topics = [
        settings.events_topic,
        settings.catalog_topic,
        settings.recommendations_topic,
        settings.dlq_topic,
        settings.model_topic,
    ]
    with suppress(Exception):
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            with suppress(Exception):
                future.result(timeout=30)
    with suppress(Exception):
        for future in admin.delete_consumer_groups([settings.group_id]).values():
            with suppress(Exception):
                future.result(timeout=30)
    with suppress(Exception):
        batch: list[bytes] = []
        for key in redis_client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                redis_client.unlink(*batch)
                batch.clear()
        if batch:
            redis_client.unlink(*batch)
