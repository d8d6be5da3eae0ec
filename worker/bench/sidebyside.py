"""``tailor bench`` (all parts): Tailor, the peer and the relay measured side by side.

Three systems do the same job on the same events, one after the other, on the Kafka and
Redis of the settings, each on topics, a consumer group and Redis keys of its own
(uuid-suffixed, deleted at the end):

- **tailor**: ``tailor run``, ``--workers`` processes in one consumer group;
- **peer**: the same recommender as a per-message Quix Streams + River app
  (``bench/peer``, in a virtual environment of its own: :mod:`.peer`);
- **relay**: consume, produce the same bytes, commit (:mod:`.relay_app`): the ceiling.

Every system is measured from outside, the same way: a reader of its output topic notes
when the first message covering each event arrives (``covered_event_ids`` of a list, the
``event_id`` of a relayed event); ``/proc`` gives the processes' CPU and peak memory;
Redis ``INFO`` deltas give commands and read events (round trips) per event.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from rich.console import Console

from worker.bench.common import (
    BenchError,
    Json,
    percentiles,
    progress_bar,
    warmup_count,
    warn_unfilled,
)
from worker.bench.core import CoreOptions, run_core
from worker.bench.peer import PEER_APP, default_peer_venv, ensure_peer_venv
from worker.bench.process import LoggedProcess
from worker.bench.procstat import cpu_seconds, peak_rss_bytes
from worker.bench.replay import Replay
from worker.bench.report import machine_info, now_iso
from worker.bench.synthetic import Clickstream, Workload
from worker.bench.worker import _clean_up, _flush, _send, _WorkerProcess, paced_send
from worker.config import ENV_PREFIX, Settings
from worker.redaction import redacted_url
from worker.state.store import RedisClient, connect_redis
from worker.transport.kafka import client_config, create_topics, make_producer

__all__ = ["SYSTEMS", "SideOptions", "run_side_by_side"]

#: The parts ``tailor bench`` runs, in this order; ``core`` is Tailor's core without I/O.
SYSTEMS = ("core", "tailor", "peer", "relay")
_RELAY_APP = Path(__file__).with_name("relay_app.py")
_OWN_INFO = 2  # commands (and read events) of the benchmark's own INFO between two readings


@dataclass(frozen=True, slots=True)
class SideOptions:
    workload: Workload = field(default_factory=Workload)
    items: tuple[int, ...] = (100_000,)  # one run of core, tailor and peer per catalog size
    systems: tuple[str, ...] = SYSTEMS
    events: int = 30_000  # drained as fast as each system goes
    warmup: float = 0.2  # share of ``events`` played first, before the clock starts
    latency_events: int = 3_000  # per latency phase
    rate: float = 500.0  # events/s of the second latency phase (the first: half the drain)
    workers: int = 1
    partitions: int = 4
    memory_users: int = 100_000  # users whose keys MEMORY USAGE sums
    replay: Replay | None = None  # a real log instead of the synthetic stream (--log)
    peer_venv: Path | None = None
    keep: bool = False
    timeout_s: float = 600.0
    progress: bool = True


def run_side_by_side(settings: Settings, options: SideOptions, console: Console) -> Json:
    """Every asked system at every catalog size; the relay once (it reads no catalog)."""
    unknown = set(options.systems) - set(SYSTEMS)
    if unknown:
        raise BenchError(f"unknown systems {sorted(unknown)}: choose from {', '.join(SYSTEMS)}")
    peer_python: Path | None = None
    if "peer" in options.systems:
        peer_python = ensure_peer_venv(
            options.peer_venv or default_peer_venv(),
            lambda line: console.print(line, highlight=False),
        )
    runs: list[Json] = []
    cores: list[Json] = []
    redis_version = ""
    sizes = options.items if options.replay is None else (len(options.replay.catalog),)
    if options.replay is not None and "core" in options.systems:
        console.print("core: skipped with --log (`tailor evaluate` replays a log in-process)")
    for items in sizes:
        workload = Workload(
            items=items,
            categories=options.workload.categories,
            users=options.workload.users,
            seed=options.workload.seed,
            mean_gap_s=options.workload.mean_gap_s,
        )
        if "core" in options.systems and options.replay is None:
            console.print(f"[bold]core[/] at {items:,} items", highlight=False)
            core_options = CoreOptions(
                workload=workload,
                events=options.events,
                batch_size=settings.batch_size,
                warmup=options.warmup,
                progress=options.progress,
                fill_timeout_s=options.timeout_s,
            )
            cores.append(run_core(settings, core_options, console))
        plan = _Plan.of(workload, options)
        for system in ("tailor", "peer", "relay"):
            if system not in options.systems or (system == "relay" and items != sizes[0]):
                continue
            console.print(f"[bold]{system}[/] at {items:,} items", highlight=False)
            run = _run_system(system, settings, plan, options, console, peer_python)
            redis_version = run.pop("redis_server", redis_version)
            runs.append(run)
    machine = machine_info() | {
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": confluent_kafka.version()[0],
    }
    if redis_version:
        machine["redis_server"] = redis_version
    return {
        "bench": "all",
        "when": now_iso(),
        "options": {
            **asdict(options.workload),
            "items": list(sizes),
            "log": str(options.replay.path) if options.replay is not None else None,
            "systems": list(options.systems),
            "events": options.events,
            "warmup": options.warmup,
            "latency_events": options.latency_events,
            "rate": options.rate,
            "workers": options.workers,
            "partitions": max(options.partitions, options.workers),
            "batch_size": settings.batch_size,
            "memory_users": options.memory_users,
        },
        "core": cores,
        "runs": runs,
        "comparisons": comparisons(runs),
        "machine": machine,
    }


def comparisons(runs: Sequence[Json]) -> list[Json]:
    """Tailor as multiples of the peer and as a fraction of the relay, per catalog size."""
    relay = next((run for run in runs if run["system"] == "relay"), None)
    found = []
    for tailor in (run for run in runs if run["system"] == "tailor"):
        peer = next(
            (r for r in runs if r["system"] == "peer" and r["items"] == tailor["items"]), None
        )
        row: Json = {"items": tailor["items"]}
        rate = tailor["drain"]["events_per_s"]
        if peer is not None and peer["drain"]["events_per_s"] > 0:
            row["throughput_x_peer"] = rate / peer["drain"]["events_per_s"]
            if peer["drain"]["cpu_ms_per_1000"] > 0:
                row["cpu_per_event_x_peer"] = (
                    tailor["drain"]["cpu_ms_per_1000"] / peer["drain"]["cpu_ms_per_1000"]
                )
        if relay is not None and relay["drain"]["events_per_s"] > 0:
            row["throughput_of_relay"] = rate / relay["drain"]["events_per_s"]
        found.append(row)
    return found


@dataclass(frozen=True, slots=True)
class _Plan:
    """The events every system reads, made once: catalog, warm-up, drain, two paced sets."""

    workload: Workload
    catalog: list[tuple[bytes, bytes]]
    warmup: list[tuple[str, bytes, bytes]]  # event id, key, value
    drain: list[tuple[str, bytes, bytes]]
    paced: list[Json]  # both latency phases' events, each phase takes its half

    @classmethod
    def of(cls, workload: Workload, options: SideOptions) -> _Plan:
        warm = warmup_count(options.events, options.warmup)
        backlog = warm + options.events
        if options.replay is not None:
            bodies = options.replay.events[:backlog]
            paced = options.replay.events[backlog : backlog + 2 * options.latency_events]
            catalog_bodies = options.replay.catalog
        else:
            stream = Clickstream(workload)
            start_s = time.time() - 2 * backlog * workload.mean_gap_s - 60  # all in the past
            prefix = f"s{uuid.uuid4().hex[:8]}-"
            bodies = stream.events(backlog, start_s=start_s, id_prefix=prefix)
            paced = stream.events(2 * options.latency_events, start_s=start_s, id_prefix=prefix)
            catalog_bodies = list(stream.catalog())
        messages = [
            (str(body["event_id"]), str(body["user_id"]).encode(), orjson.dumps(body))
            for body in bodies
        ]
        catalog = [(str(body["item_id"]).encode(), orjson.dumps(body)) for body in catalog_bodies]
        return cls(workload, catalog, messages[:warm], messages[warm:], paced)


class _Outputs:
    """A downstream reader of a system's output topics, from their beginning.

    For each event id it keeps when the first message covering it arrived; it counts the
    bytes (key and value) of every message on every topic it reads.
    """

    def __init__(self, settings: Settings, topics: Sequence[str], parsed: str) -> None:
        self.parsed = parsed  # the topic whose messages name events (the others: bytes)
        self.consumer = Consumer(
            client_config(settings)
            | {
                "group.id": f"{settings.group_id}.reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "enable.partition.eof": False,
            }
        )
        assigned = []
        for topic in topics:
            metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
            assigned += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        self.consumer.assign(assigned)
        self.seen: dict[str, float] = {}  # event id -> time.time() of its first covering message
        self.sent: dict[str, float] = {}  # event id -> time.time() just before produce
        self.bytes: dict[str, int] = dict.fromkeys(topics, 0)
        self.messages = 0
        self.first_at: float | None = None

    def read(self, timeout_s: float) -> None:
        first = self.consumer.poll(timeout_s) if timeout_s >= 0.001 else None
        messages = ([first] if first is not None else []) + self.consumer.consume(1000, 0)
        received = time.time()
        for message in messages:
            if message.error() is not None:
                continue
            value, key = message.value(), message.key()
            topic = str(message.topic())
            self.bytes[topic] += len(value or b"") + len(key or b"")
            if topic != self.parsed or value is None:
                continue
            self.messages += 1
            if self.first_at is None:
                self.first_at = received
            body = orjson.loads(value)
            covered = body.get("covered_event_ids") or [body.get("event_id")]
            for event_id in covered:
                if event_id is not None and event_id not in self.seen:
                    self.seen[event_id] = received

    def wait(
        self, ids: Sequence[str], timeout_s: float, check: Callable[[], None], what: str
    ) -> float:
        """Read until every id is covered; when (``time.time()``) the last one arrived."""
        deadline = time.monotonic() + timeout_s
        missing = [event_id for event_id in ids if event_id not in self.seen]
        while missing:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"gave up after {timeout_s:.0f} s waiting for {what}: "
                    f"{len(missing):,} of {len(ids):,} events without an output"
                )
            check()
            self.read(0.05)
            missing = [event_id for event_id in missing if event_id not in self.seen]
        return max(self.seen[event_id] for event_id in ids) if ids else time.time()

    def close(self) -> None:
        self.consumer.close()


class _System:
    """A system's processes and what it needs: topics, command, Redis key pattern."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        options: SideOptions,
        peer_python: Path | None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.options = options
        self.peer_python = peer_python
        self.processes: list[LoggedProcess] = []
        self.workers: list[_WorkerProcess] = []

    @property
    def count(self) -> int:
        return self.options.workers

    def output_topics(self) -> list[str]:
        topics = [self.settings.recommendations_topic]
        if self.name == "tailor" and self.settings.model_sync:
            topics.append(self.settings.model_topic)  # shared model deltas: Kafka out too
        return topics

    def user_key_pattern(self) -> str | None:
        prefix = self.settings.redis_key_prefix
        return {"tailor": f"{prefix}:{{u:*", "peer": f"{prefix}:u:*"}.get(self.name)

    def start(self) -> None:
        for k in range(self.count):
            if self.name == "tailor":
                self.workers.append(_WorkerProcess(self.settings))
                continue
            self.processes.append(
                LoggedProcess(self._command(), _environment(), f"{self.name} {k}")
            )

    def _command(self) -> list[str]:
        s = self.settings
        if self.name == "relay":
            return [
                sys.executable,
                str(_RELAY_APP),
                "--bootstrap",
                s.bootstrap_servers,
                "--source",
                s.events_topic,
                "--target",
                s.recommendations_topic,
                "--group",
                s.group_id,
            ]
        assert self.peer_python is not None
        return [
            str(self.peer_python),
            str(PEER_APP),
            "--bootstrap",
            s.bootstrap_servers,
            "--redis-url",
            s.redis_url,
            "--events-topic",
            s.events_topic,
            "--lists-topic",
            s.recommendations_topic,
            "--catalog-topic",
            s.catalog_topic,
            "--group",
            s.group_id,
            "--key-prefix",
            s.redis_key_prefix,
        ]

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers] + [p.pid for p in self.processes]

    def check(self) -> None:
        for worker in self.workers:
            worker.check()
        for process in self.processes:
            process.check()

    def stop(self) -> list[int]:
        codes = []
        for worker in self.workers:
            codes.append(worker.stop())
        for process in self.processes:
            codes.append(process.stop())
        return codes

    def model_bytes_in(self) -> float:
        """Model deltas the Tailor workers read from each other (their ``/metrics``)."""
        total = 0.0
        for worker in self.workers:
            samples = worker.scrape("tailor_model_delta_bytes_total")
            total += samples.get(("tailor_model_delta_bytes_total", (("direction", "in"),)), 0.0)
        return total


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def _run_system(
    name: str,
    base: Settings,
    plan: _Plan,
    options: SideOptions,
    console: Console,
    peer_python: Path | None,
) -> Json:
    suffix = f"{name}-{uuid.uuid4().hex[:8]}"
    settings = base.in_namespace(
        f"bench-{suffix}",
        metrics_host="127.0.0.1",
        metrics_port=0,
        log_level="DEBUG" if base.log_level == "DEBUG" else "INFO",
    )
    redis_client = connect_redis(settings)
    try:
        redis_version = str(redis_client.info("server").get("redis_version", "?"))
    except Exception as error:
        where = redacted_url(settings.redis_url)
        raise BenchError(f"cannot reach Redis at {where}: {error}") from error
    partitions = max(options.partitions, options.workers)
    try:
        create_topics(settings, partitions=partitions)
    except (KafkaException, RuntimeError) as error:
        where = settings.bootstrap_servers
        raise BenchError(f"cannot create topics on {where}: {error}") from error
    system = _System(name, settings, options, peer_python)
    producer = make_producer(settings)
    outputs: _Outputs | None = None
    result: Json = {"system": name, "items": plan.workload.items, "topics_suffix": suffix}
    try:
        with progress_bar(console, options.progress) as progress:
            if name != "relay":
                task = progress.add_task("catalog produced", total=len(plan.catalog))
                for key, value in plan.catalog:
                    _send(producer, settings.catalog_topic, key, value)
                _flush(producer, options.timeout_s)
                progress.update(task, completed=len(plan.catalog))
            for _, key, value in plan.warmup:
                _send(producer, settings.events_topic, key, value)
            _flush(producer, options.timeout_s)
            outputs = _Outputs(settings, system.output_topics(), settings.recommendations_topic)

            # Start: the catalog and the warm-up events are waiting; the clock runs from
            # the spawn until the first output, then until every warm-up event is covered.
            task = progress.add_task(f"{name} starting", total=len(plan.warmup))
            spawned = time.time()
            system.start()
            warm_ids = [event_id for event_id, _, _ in plan.warmup]
            while outputs.first_at is None:
                if time.time() - spawned > options.timeout_s:
                    raise BenchError(f"the {name} published nothing in {options.timeout_s:.0f} s")
                system.check()
                outputs.read(0.05)
            result["start_to_first_output_s"] = outputs.first_at - spawned
            outputs.wait(warm_ids, options.timeout_s, system.check, "the warm-up events")
            progress.update(task, completed=len(plan.warmup))
            # Tailor is timed in its steady state: each worker's background fill of text
            # neighbours (after the catalog load) done, its time reported on its own row.
            if system.workers:
                pending = sum(worker.wait_filled(options.timeout_s) for worker in system.workers)
                result["content_pending"] = pending
                result["content_filled_s"] = None if pending else time.time() - spawned
                if pending:
                    warn_unfilled(console, pending, options.timeout_s)

            # Drain: produce as fast as possible; the clock stops at the last covering output.
            task = progress.add_task(f"{name} drain", total=len(plan.drain))
            result["drain"] = _drain(system, plan, producer, outputs, redis_client, options)
            progress.update(task, completed=len(plan.drain))

            # Latency: paced at half the drain rate, then at --rate.
            half = len(plan.paced) // 2
            phases = [
                ("half_drain", result["drain"]["events_per_s"] / 2, plan.paced[:half]),
                ("at_rate", options.rate, plan.paced[half:]),
            ]
            for phase, rate, bodies in phases:
                task = progress.add_task(f"{name} {phase}", total=len(bodies))
                result[f"latency_{phase}"] = _latency(
                    system, settings, [dict(b) for b in bodies], rate, producer, outputs, options
                )
                progress.update(task, completed=len(bodies))
            result["peak_rss_mb"] = [peak_rss_bytes(pid) / 2**20 for pid in system.pids]
            result["outputs"] = outputs.messages
            result["redis_memory"] = _memory_per_user(
                redis_client, system.user_key_pattern(), options.memory_users
            )
    finally:
        try:
            codes = system.stop()
        finally:
            if outputs is not None:
                outputs.close()
            producer.flush(10)
            if not options.keep:
                _clean_up(settings, redis_client)
            redis_client.close()
    result["exit_codes"] = codes
    if any(code != 0 for code in codes):
        raise BenchError(f"the {name} exited with {codes} when stopped by SIGTERM")
    result["redis_server"] = redis_version
    return result


def _drain(
    system: _System,
    plan: _Plan,
    producer: Producer,
    outputs: _Outputs,
    redis_client: RedisClient,
    options: SideOptions,
) -> Json:
    settings = system.settings
    redis_before = _redis_stats(redis_client)
    model_in_before = system.model_bytes_in() if system.workers else 0.0
    out_before = dict(outputs.bytes)
    cpu_before = cpu_seconds(system.pids)
    started = time.time()
    sent_bytes = 0
    for count, (_, key, value) in enumerate(plan.drain, 1):
        _send(producer, settings.events_topic, key, value)
        sent_bytes += len(key) + len(value)
        if count % 1000 == 0:
            producer.poll(0)
    produced_s = time.time() - started
    _flush(producer, options.timeout_s)
    ids = [event_id for event_id, _, _ in plan.drain]
    last = outputs.wait(ids, options.timeout_s, system.check, "the drain events")
    seconds = last - started
    cpu = cpu_seconds(system.pids) - cpu_before
    redis_after = _redis_stats(redis_client)
    events = len(ids)
    model_in = (system.model_bytes_in() if system.workers else 0.0) - model_in_before
    out = {t: outputs.bytes[t] - out_before[t] for t in outputs.bytes}
    commands = redis_after["total_commands_processed"] - redis_before["total_commands_processed"]
    reads = redis_after["total_reads_processed"] - redis_before["total_reads_processed"]
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds > 0 else 0.0,
        "produce_seconds": produced_s,
        "cpu_seconds": cpu,
        "cpu_ms_per_1000": 1e6 * cpu / events,
        # The benchmark's own INFO commandstats (start) and INFO stats (end, which counts
        # itself) are two commands and two read events of the difference.
        "redis_commands_per_event": max(0, commands - _OWN_INFO) / events,
        "redis_round_trips_per_event": max(0, reads - _OWN_INFO) / events,
        "redis_commands": _command_deltas(redis_before, redis_after),
        "kafka_bytes_in_per_event": (sent_bytes + model_in) / events,
        "kafka_bytes_out_per_event": sum(out.values()) / events,
        "kafka_bytes_out_by_topic": out,
    }


def _latency(
    system: _System,
    settings: Settings,
    bodies: list[Json],
    rate: float,
    producer: Producer,
    outputs: _Outputs,
    options: SideOptions,
) -> Json:
    """Send ``bodies`` at ``rate``; the time from each send to its first covering output."""
    achieved = paced_send(producer, settings.events_topic, bodies, rate, outputs)
    _flush(producer, options.timeout_s)
    ids = [str(body["event_id"]) for body in bodies]
    outputs.wait(ids, min(options.timeout_s, 120.0), system.check, "the paced events")
    latencies = [1000 * (outputs.seen[e] - outputs.sent[e]) for e in ids]
    return {
        "events": len(ids),
        "rate": rate,
        "achieved_rate": achieved,
        "covered": len(latencies),
        "ms": percentiles(latencies),
    }


def _redis_stats(client: RedisClient) -> dict[str, Any]:
    stats: dict[str, Any] = dict(client.info("stats"))
    stats["commandstats"] = dict(client.info("commandstats"))
    stats.setdefault("total_reads_processed", 0)
    return stats


def _command_deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Calls per Redis command during the phase (``INFO commandstats``), bench's own left in."""
    deltas: dict[str, int] = {}
    for name, stats in after["commandstats"].items():
        earlier = before["commandstats"].get(name, {}).get("calls", 0)
        if (calls := int(stats.get("calls", 0)) - int(earlier)) > 0:
            deltas[name.removeprefix("cmdstat_")] = calls
    return deltas


def _memory_per_user(client: RedisClient, pattern: str | None, limit: int) -> Json | None:
    """``MEMORY USAGE`` summed over the keys of up to ``limit`` users, and its mean."""
    if pattern is None:
        return None
    per_user: dict[str, int] = {}
    batch: list[bytes] = []

    def measure() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, used in zip(batch, pipe.execute(), strict=True):
            user = _user_of(key)
            per_user[user] = per_user.get(user, 0) + int(used or 0)
        batch.clear()

    for key in client.scan_iter(match=pattern, count=1000):
        if len(per_user) >= limit and _user_of(key) not in per_user:
            continue
        batch.append(key)
        if len(batch) >= 1000:
            measure()
    if batch:
        measure()
    users = len(per_user)
    mean = sum(per_user.values()) / users if users else 0.0
    return {"users": users, "bytes_per_user": mean, "mib_per_million_users": mean * 1e6 / 2**20}


def _user_of(key: bytes) -> str:
    text = key.decode(errors="replace")
    if "{" in text:  # Tailor: <prefix>:{u:<id>}...
        return text[text.index("{") : text.index("}") + 1] if "}" in text else text
    return text.rpartition(":u:")[2]
