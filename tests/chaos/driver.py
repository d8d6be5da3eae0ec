"""The fault driver of the chaos suite: input stream, worker processes, outputs, checks.

Why processes and not threads: SIGKILL must be real. A worker in a thread cannot be
killed half-way through a batch, and its in-memory models would survive the "crash". Each
worker here is ``tailor run`` exactly as operators start it, configured by ``TAILOR_*``
variables only, so what the suite shows is what a deployment gets.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import headers_of
from worker.config import ENV_PREFIX, Settings
from worker.decode import decode_event
from worker.metrics import Metrics
from worker.recommend.core import Envelope, ModelTotals, Recommender
from worker.state.store import RedisCheckpoints, UserStore
from worker.sync.model_sync import CheckpointStore, ModelSync
from worker.testing import MemoryCheckpoints, MemoryStates
from worker.transport.dlq import HEADER_PREFIX
from worker.transport.model_log import KafkaModelLog

__all__ = [
    "Figures",
    "Fleet",
    "ModelView",
    "OutputReader",
    "PacedProducer",
    "Stream",
    "applied_counts",
    "group_assignment",
    "make_stream",
    "merged_models",
    "replayed_models",
    "scrape_metrics",
    "start_replay",
    "wait_for_members",
    "whole_log_models",
]

#: ``python -m worker``, not the venv's ``tailor`` script: the script imports the package
#: where it was installed (editable, from another checkout), while ``-m`` imports it from
#: the working directory, the tree under test (as ``tailor bench`` and tests/helpers do).
WORKER_COMMAND = [sys.executable, "-m", "worker", "run"]
#: The broker's smallest allowed session (group.min.session.timeout.ms): a member that
#: vanished without a word is noticed as soon as the broker allows.
SESSION_TIMEOUT_MS = 6000
#: ``static`` (default): each slot is a ``group.instance.id``; ``dynamic``: plain members,
#: to measure what static membership saves (see RELIABILITY.md).
MEMBERSHIP = os.environ.get("CHAOS_MEMBERSHIP", "dynamic")
_LOG_LINES = 60
_POLL_S = 0.25
_EVENT_TYPES = ("view", "view", "view", "click", "click", "add_to_cart", "purchase", "like")

Coordinates = tuple[int, int]  # (partition, offset) of an input message


# -- the input ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    """What is sent, and what the workers must make of it.

    ``event_ids[i]`` is the id of message ``i``, or None when message ``i`` is malformed
    (it must come out on the DLQ, not as an applied event); ``expected`` is the number
    of valid events per user, the value each user's ``n`` must reach exactly.
    """

    messages: list[tuple[bytes, bytes]]
    event_ids: list[str | None]
    expected: Counter[str]

    @property
    def valid(self) -> int:
        return sum(self.expected.values())

    @property
    def malformed(self) -> int:
        return len(self.messages) - self.valid


def make_stream(
    name: str, events: int, users: int, malformed_share: float, items: int = 400
) -> Stream:
    """A seeded stream keyed by user: every user at least once, a few users much more.

    A small share of messages is malformed in the ways frontends get it wrong (not JSON,
    an unknown type, a click without an item), so DLQ accounting is exercised too.
    """
    rng = random.Random(name)  # the same stream for a scenario, whatever else runs
    order = [f"{name}-u{n}" for n in range(users)]
    rng.shuffle(order)
    weights = [1.0 / (1 + n) ** 0.5 for n in range(users)]
    order += rng.choices(order, weights=weights, k=max(0, events - users))
    stamp = int(time.time() * 1000)
    messages: list[tuple[bytes, bytes]] = []
    event_ids: list[str | None] = []
    expected: Counter[str] = Counter()
    for index, user in enumerate(order):
        event_id = f"{name}-e{index}"
        body: dict[str, Any] = {
            "event_id": event_id,
            "user_id": user,
            "item_id": f"i{min(int(rng.paretovariate(1.2)), items)}",
            "type": rng.choice(_EVENT_TYPES),
            "timestamp": stamp + index,
            "context": {"device": rng.choice(("web", "ios", "android")), "country": "NL"},
        }
        value = orjson.dumps(body)
        if rng.random() < malformed_share:
            value = _spoil(body, rng)
            event_ids.append(None)
        else:
            event_ids.append(event_id)
            expected[user] += 1
        messages.append((user.encode(), value))
    return Stream(messages, event_ids, expected)


def _spoil(body: dict[str, Any], rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return orjson.dumps(body)[:-7]  # cut short: not JSON
    if kind == 1:
        return orjson.dumps(body | {"type": "teleport"})
    return orjson.dumps({k: v for k, v in body.items() if k != "item_id"})


class PacedProducer:
    """Sends the stream in the background at a steady pace over ``duration_s``.

    Pacing makes the faults land mid-stream rather than after a fast bulk load. The
    producer is idempotent: a retry across a broker restart must not duplicate an input
    event, or the expected per-user counts would no longer be what was sent. Each
    message's partition and offset are kept from its delivery report, because that is
    how the DLQ names a malformed message's origin.
    """

    def __init__(self, bootstrap: str, topic: str, stream: Stream, duration_s: float) -> None:
        self.topic = topic
        self.stream = stream
        self.duration_s = duration_s
        self.coordinates: list[Coordinates | None] = [None] * len(stream.messages)
        self.errors: list[str] = []
        self.sent = 0
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def progress(self) -> float:
        """Share of the stream handed to the producer so far (0..1)."""
        return self.sent / len(self.stream.messages)

    def _run(self) -> None:
        started = time.monotonic()
        total = len(self.stream.messages)
        while self.sent < total:
            elapsed = time.monotonic() - started
            due = min(total, int(total * elapsed / self.duration_s) + 1)
            for index in range(self.sent, due):
                self._send(index)
            self.sent = due
            self._producer.poll(0.02)
        remaining = self._producer.flush(300)
        if remaining:
            self.errors.append(f"{remaining} messages still unacknowledged after 300 s")
        self._producer.close()

    def _send(self, index: int) -> None:
        key, value = self.stream.messages[index]

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.errors.append(f"message {index}: {error}")
            else:
                partition, offset = message.partition(), message.offset()
                assert partition is not None
                assert offset is not None
                self.coordinates[index] = (partition, offset)

        while True:
            try:
                self._producer.produce(self.topic, key=key, value=value, on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    def join(self, timeout_s: float) -> None:
        """Wait until everything is acknowledged; fail loudly if it was not."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"input not sent within {timeout_s:.0f} s"
        assert not self.errors, f"input not delivered: {self.errors[:3]}"
        missing = sum(1 for c in self.coordinates if c is None)
        assert missing == 0, f"{missing} input messages have no delivery report"
        assert len(set(self.coordinates)) == len(self.coordinates), "duplicate input offsets"


# -- the outputs -------------------------------------------------------------------------


class OutputReader:
    """A downstream reader of the recommendations and DLQ topics, from their beginning.

    It keeps, per event id, how many published lists covered it, and per input
    coordinate how many DLQ records carry it as their origin: enough to account for every
    input event and to see how many were handled more than once.
    """

    def __init__(self, settings: Settings) -> None:
        self.recommendations_topic = settings.recommendations_topic
        self.covered: Counter[str] = Counter()
        self.dead: Counter[Coordinates] = Counter()
        self.lists = 0
        self.last_arrival = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe([settings.recommendations_topic, settings.dlq_topic])
        self._thread = threading.Thread(target=self._run, name="chaos-reader", daemon=True)

    def start(self) -> OutputReader:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(2000, 0.2)
            with self._lock:
                for message in messages:
                    if message.error() is None:
                        self._take(message)
                if messages:
                    self.last_arrival = time.monotonic()

    def _take(self, message: Message) -> None:
        value = message.value()
        if message.topic() == self.recommendations_topic:
            if value is not None:
                self.lists += 1
                self.covered.update(orjson.loads(value)["covered_event_ids"])
            return
        headers = headers_of(message)
        partition = int(headers[f"{HEADER_PREFIX}source.partition"])
        offset = int(headers[f"{HEADER_PREFIX}source.offset"])
        self.dead[(partition, offset)] += 1

    def unaccounted(self, stream: Stream, coordinates: list[Coordinates | None]) -> int:
        """Input messages with no list covering them and no DLQ record naming them."""
        with self._lock:
            return sum(
                1
                for event_id, where in zip(stream.event_ids, coordinates, strict=True)
                if (event_id is None and where not in self.dead)
                or (event_id is not None and event_id not in self.covered)
            )

    def settle(self, quiet_s: float = 1.5, timeout_s: float = 60.0) -> None:
        """Read until nothing new has arrived for ``quiet_s``, then stop reading."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self.last_arrival < quiet_s and time.monotonic() < deadline:
            time.sleep(0.1)
        self.close()

    def close(self) -> None:
        """Stop reading and leave; safe to call again."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(30)
        self._consumer.close()

    def handled_twice(self) -> int:
        """Event ids covered by more than one published list: processed more than once."""
        return sum(1 for count in self.covered.values() if count > 1)

    def dead_twice(self) -> int:
        return sum(1 for count in self.dead.values() if count > 1)


def applied_counts(client: redis.Redis, store: UserStore, users: list[str]) -> dict[str, int]:
    """Every user's applied-event counter (hash field ``n``), in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.hget(store.key(user), "n")
    replies: list[bytes | None] = pipe.execute()
    return {user: int(reply or 0) for user, reply in zip(users, replies, strict=True)}


# -- the workers -------------------------------------------------------------------------

_METRICS_LINE = re.compile(r"metrics on http://[^:]+:(\d+)/metrics")
_STALE_LINE = re.compile(r"(\d+) user writes refused by the offset guard")
_STOPPED_LINE = re.compile(r"stopped: .* (\d+) replayed")
_REPLAYED_SAMPLE = re.compile(r"^tailor_events_replayed_total (\S+)$", re.MULTILINE)


class WorkerProcess:
    """One incarnation of ``tailor run`` in a slot, watched through its log.

    A thread reads the log so the pipe never fills, copies it to a file for post-mortems,
    and picks out what the figures need: the metrics port, refused (stale) writes and
    the replay total a clean stop prints.
    """

    def __init__(self, slot: str, environment: dict[str, str], log_path: Path) -> None:
        self.slot = slot
        self.log_path = log_path  # the whole log (``tail`` keeps only the last lines)
        self.expected_exit = False
        self.stale = 0
        self.replayed_seen = 0
        self.metrics_port: int | None = None
        self.tail: deque[str] = deque(maxlen=_LOG_LINES)
        self.process = subprocess.Popen(
            WORKER_COMMAND,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read_log, args=(log_path,), daemon=True)
        self._reader.start()

    def _read_log(self, log_path: Path) -> None:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        with log_path.open("a", buffering=1) as copy:  # by line: readable while it runs
            for line in stdout:
                copy.write(line)
                self.tail.append(line.rstrip("\n"))
                self._note(line)

    def _note(self, line: str) -> None:
        if found := _METRICS_LINE.search(line):
            self.metrics_port = int(found.group(1))
        elif found := _STALE_LINE.search(line):
            self.stale += int(found.group(1))
        elif found := _STOPPED_LINE.search(line):
            self.replayed_seen = int(found.group(1))

    def alive(self) -> bool:
        return self.process.poll() is None

    def scrape_replayed(self) -> None:
        """Note the replay total from ``/metrics`` (a SIGKILL leaves no final log line)."""
        if self.metrics_port is None:
            return
        url = f"http://127.0.0.1:{self.metrics_port}/metrics?name[]=tailor_events_replayed_total"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return  # still starting or already gone: the figure is a lower bound
        if found := _REPLAYED_SAMPLE.search(text):
            self.replayed_seen = max(self.replayed_seen, int(float(found.group(1))))

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group."""
        self.scrape_replayed()
        self.expected_exit = True
        self.process.kill()
        self.process.wait(30)
        self._reader.join(5)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as operators stop it; the exit status (killed if it hangs)."""
        self.expected_exit = True
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(30)
        self._reader.join(5)
        return code


@dataclass
class Fleet:
    """The worker slots of a scenario.

    A slot is a stable ``group.instance.id`` (static membership), as a StatefulSet pod
    name would be: a worker restarted after SIGKILL takes its slot's partitions back at
    once instead of waiting for the dead member's session to expire. The session timeout
    is the broker minimum, so a member that leaves for good is replaced within seconds.
    """

    settings: Settings
    log_dir: Path
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    retired: list[WorkerProcess] = field(default_factory=list)
    kills: int = 0
    bad_exits: list[str] = field(default_factory=list)

    @staticmethod
    def client_id(slot: str) -> str:
        """How the group's description names a slot's member, static or not."""
        return f"chaos-{slot}"

    def start(self, slot: str) -> WorkerProcess:
        assert slot not in self.workers, f"slot {slot} already has a worker"
        extra = {"session.timeout.ms": str(SESSION_TIMEOUT_MS)}
        if MEMBERSHIP == "static":
            extra["group.instance.id"] = f"{self.settings.group_id}-{slot}"
        settings = self.settings.with_overrides(client_id=self.client_id(slot), kafka_extra=extra)
        environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        environment |= settings.as_environment()
        incarnation = len(self.retired) + len(self.workers)
        log_path = self.log_dir / f"worker-{slot}-{incarnation:03d}.log"
        self.workers[slot] = WorkerProcess(slot, environment, log_path)
        return self.workers[slot]

    def kill(self, slot: str) -> None:
        worker = self.workers.pop(slot)
        worker.kill()
        self.retired.append(worker)
        self.kills += 1

    def freeze(self, slot: str) -> None:
        """SIGSTOP: a worker stalled (a long pause, a frozen VM) that will come back."""
        os.kill(self.workers[slot].process.pid, signal.SIGSTOP)

    def thaw(self, slot: str) -> None:
        """SIGCONT: the stalled worker resumes mid-batch, unaware it lost its partitions."""
        os.kill(self.workers[slot].process.pid, signal.SIGCONT)

    def stop(self, slot: str) -> None:
        worker = self.workers.pop(slot)
        code = worker.stop()
        self.retired.append(worker)
        # A worker still importing its modules has no SIGTERM handler yet and no state to
        # lose: Python's default action (-15) is then a clean stop too.
        still_starting = code == -signal.SIGTERM and not any(
            "metrics on http" in line for line in worker.tail
        )
        if code != 0 and not still_starting:
            self.bad_exits.append(f"{slot} exited {code} on SIGTERM:\n" + "\n".join(worker.tail))

    def stop_all(self) -> None:
        for slot in list(self.workers):
            self.stop(slot)

    def check(self) -> None:
        """Fail at once, with its log, when a worker exited without being told to."""
        for slot, worker in list(self.workers.items()):
            if not worker.alive() and not worker.expected_exit:
                self.workers.pop(slot)
                self.retired.append(worker)
                self.bad_exits.append(
                    f"{slot} exited on its own with status {worker.process.returncode}:\n"
                    + "\n".join(worker.tail)
                )
        assert not self.bad_exits, "a worker needed a person's help:\n" + self.bad_exits[0]

    def everyone(self) -> list[WorkerProcess]:
        return [*self.retired, *self.workers.values()]

    def tails(self) -> str:
        return "\n\n".join(
            f"--- {worker.slot} (pid {worker.process.pid}) ---\n" + "\n".join(worker.tail)
            for worker in self.workers.values()
        )


def wait_for_members(
    bootstrap: str, group: str, client_ids: set[str], partitions: int, timeout_s: float
) -> float:
    """Wait until the group is stable with exactly ``client_ids`` sharing ``partitions``.

    That is the observable end of a rebalance. Returns how long it took.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    started = time.monotonic()
    seen = "nothing yet"
    while time.monotonic() - started < timeout_s:
        try:
            description = admin.describe_consumer_groups([group])[group].result(timeout=10)
        except Exception as error:  # the group may not exist yet: keep asking
            seen = f"describe failed: {error}"
        else:
            owners = {
                member.client_id: len(member.assignment.topic_partitions)
                for member in description.members
            }
            seen = f"{description.state.name} {owners}"
            settled = (
                description.state.name == "STABLE"
                and set(owners) == client_ids
                and sum(owners.values()) == partitions
                and all(count > 0 for count in owners.values())
            )
            if settled:
                return time.monotonic() - started
        time.sleep(_POLL_S)
    raise AssertionError(
        f"group {group} did not settle on {sorted(client_ids)} within {timeout_s:.0f} s; "
        f"last seen: {seen}"
    )


def group_assignment(bootstrap: str, group: str) -> dict[str, list[int]]:
    """Who owns which partitions now, by client id (the group's description, as the
    broker sees it: what a member logged may already be out of date)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    owners: dict[str, list[int]] = {}
    for member in description.members:
        assert member.client_id not in owners, f"two members named {member.client_id}"
        owners[member.client_id] = sorted(p.partition for p in member.assignment.topic_partitions)
    return owners


def scrape_metrics(port: int, timeout_s: float = 5.0) -> dict[str, float]:
    """Every sample of a worker's ``/metrics``, keyed as Prometheus prints them.

    A labelled sample is keyed ``name{label="value"}`` (labels sorted), a plain one by its
    name, so a test names exactly the series it reads: ``tailor_model_deltas_total
    {result="applied"}`` and not some sum over results.
    """
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


# -- the shared models -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelView:
    """What one reading of the shared models counted, and how the model topic went."""

    totals: ModelTotals
    restored_from: int | None  # log position of the checkpoint installed (None: none)
    log_end: int  # records in the model topic
    outcomes: Counter[str]  # deltas read: applied, own, duplicate, refused, corrupt
    complaints: list[str]  # what the reading logged at ERROR (a checkpoint refused, say)


def merged_models(settings: Settings, client: redis.Redis, timeout_s: float = 180.0) -> ModelView:
    """The shared models exactly as a worker starting now would build them: the newest
    readable checkpoint in Redis, then the model topic from its position to the end.

    The workers must be stopped first, or the end moves while it is read.
    """
    return _read_models(settings, RedisCheckpoints(client, settings, "checker"), timeout_s)


def whole_log_models(settings: Settings, timeout_s: float = 180.0) -> ModelView:
    """The shared models from every delta of the model topic, in its order, no checkpoint.

    This is the order every worker decides in; a checkpoint that disagrees with it was
    written from a view that no other worker shares. Its ``refused`` count is the number
    of distinct deltas refused (each worker's metric counts the same delta again).
    """
    return _read_models(settings, MemoryCheckpoints(time.time), timeout_s)


def _read_models(settings: Settings, checkpoints: CheckpointStore, timeout_s: float) -> ModelView:
    recommender = Recommender(settings, origin="checker")
    model_log = KafkaModelLog(settings)
    metrics = Metrics()
    sync = ModelSync(recommender, model_log, checkpoints, 1e9, metrics=metrics, background=False)
    complaints = _Complaints()
    logger = logging.getLogger("tailor.sync")
    logger.addHandler(complaints)
    try:
        sync.restore()
        sync.catch_up(timeout_s)
        _, end = model_log.bounds()
    finally:
        logger.removeHandler(complaints)
        model_log.close()
    assert sync.position >= end, f"model topic read to {sync.position} of {end} in {timeout_s} s"
    outcomes: Counter[str] = Counter()
    for result in ("applied", "own", "duplicate", "refused", "corrupt"):
        value = metrics.registry.get_sample_value("tailor_model_deltas_total", {"result": result})
        outcomes[result] = int(value or 0)
    return ModelView(recommender.totals, sync.restored_from, end, outcomes, complaints.said)


class _Complaints(logging.Handler):
    """Keeps what the model sync logs at ERROR: why a checkpoint or a delta was refused."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())


def start_replay(
    settings: Settings, stream: Stream, coordinates: list[Coordinates | None]
) -> Future[ModelTotals]:
    """:func:`replayed_models` in another process, so it runs beside the model topic's
    readings on the other core. Spawned, not forked: this process holds Kafka clients'
    threads, which a fork would copy mid-flight."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    future = pool.submit(replayed_models, settings, stream, list(coordinates))
    pool.shutdown(wait=False)  # the process exits once the replay is done
    return future


def replayed_models(
    settings: Settings, stream: Stream, coordinates: list[Coordinates | None]
) -> ModelTotals:
    """The shared models of one worker that was never interrupted, computed by the test.

    Every valid event of the stream, at the partition and offset it really got, in
    partition order, through :meth:`Recommender.process` in micro-batches of the worker's
    size, with user states read before each batch and written after it (as
    ``TailorModel.learn`` does in the evaluation harness). Decoded by the worker's own
    decoder, so an event the stream calls valid that the worker would refuse shows up here.
    """
    skew = timedelta(seconds=settings.max_future_skew_s)
    envelopes: list[Envelope] = []
    for (_, value), event_id, where in zip(
        stream.messages, stream.event_ids, coordinates, strict=True
    ):
        if event_id is None:
            continue
        assert where is not None, f"{event_id} has no delivery report"
        decoded = decode_event(
            value,
            max_bytes=settings.max_message_bytes,
            max_future_skew=skew,
            min_event_time=settings.min_event_time,
            max_id_length=settings.max_id_length,
        )
        assert decoded.event is not None, f"{event_id} refused: {decoded.dead_letter}"
        envelopes.append(Envelope(decoded.event, *where))
    envelopes.sort(key=lambda envelope: (envelope.partition, envelope.offset))
    recommender, states = Recommender(settings), MemoryStates()
    size = settings.batch_size
    for start in range(0, len(envelopes), size):
        batch = envelopes[start : start + size]
        users = list(dict.fromkeys(envelope.event.user_id for envelope in batch))
        result = recommender.process(batch, states.read(users))
        states.write(result.writes)
        states.erase(result.erased)
    return recommender.totals


# -- the figures -------------------------------------------------------------------------


@dataclass
class Figures:
    """What one scenario measured; printed at the end and written to .tailor/chaos.json."""

    scenario: str
    outcome: str = "incomplete"  # "ok" or "FAILED" once checked
    events: int = 0
    users: int = 0
    malformed: int = 0
    kills: int = 0
    rebalances: int = 0
    zombies: int = 0  # workers frozen past their session, then resumed
    redis_restarts: int = 0
    kafka_restarts: int = 0
    unaccounted: int = 0  # input messages neither covered by a list nor on the DLQ
    users_short: int = 0  # users whose counter is below their input count
    users_doubled: int = 0  # users whose counter is above their input count
    lists: int = 0
    handled_twice: int = 0  # event ids covered by more than one published list
    replayed: int = 0  # the workers' replay totals (at least: a kill may hide a few)
    stale_writes: int = 0  # user writes refused by the offset guard
    dlq_twice: int = 0
    worker_restarts: int = 0
    catch_up_s: float = 0.0  # from the last input acknowledged to everything accounted for
    seconds: float = 0.0
    # The shared models: merged as a starting worker builds them (newest checkpoint, then
    # the model topic), against one uninterrupted worker replaying the valid events.
    model_events: int = 0
    replay_events: int = 0
    model_visits: int = 0
    replay_visits: int = 0
    model_pairs: int = 0  # co-visits (before they are summed per pair)
    replay_pairs: int = 0
    model_trend_weight: float = 0.0
    replay_trend_weight: float = 0.0
    model_lessons: int = 0  # ranker lessons may differ after restarts (not checked)
    replay_lessons: int = 0
    log_events: int = 0  # the whole model topic in its order, no checkpoint
    log_visits: int = 0
    log_pairs: int = 0
    log_trend_weight: float = 0.0
    model_deltas: int = 0  # records in the model topic
    refused_deltas: int = 0  # distinct deltas refused (the whole-topic reading)
    duplicate_deltas: int = 0
    restored_from: int = -1  # model topic position of the checkpoint used (-1: none)
    models_match: bool = False  # events, visits, pairs and trend weight as the replay's
    models_s: float = 0.0  # checking the models, once the workers are stopped
    reading_s: float = 0.0  # of which reading the model topic twice (the replay runs beside)

    @property
    def lost(self) -> int:
        return self.unaccounted + self.users_short

    @property
    def doubled(self) -> int:
        return self.users_doubled

    @property
    def lessons_ratio(self) -> float:
        """Merged ranker lessons per lesson of the replay (1.0 when nothing to compare)."""
        return self.model_lessons / self.replay_lessons if self.replay_lessons else 1.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "lost": self.lost,
            "doubled": self.doubled,
            "lessons_ratio": round(self.lessons_ratio, 4),
        }


def write_figures(figures: list[Figures], path: Path, extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = extra | {"scenarios": [f.as_json() for f in figures]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def poll_until(condition: Callable[[], bool], timeout_s: float, explain: Callable[[], str]) -> None:
    """Poll ``condition`` until true; on timeout fail with what ``explain`` says."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout_s:.0f} s: {explain()}")
        time.sleep(0.5)
