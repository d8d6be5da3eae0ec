"""Kafka away for a minute under a steady stream: the worker waits, stays small, says it is
not ready, stays alive, and recovers by itself with every event applied once.

Why its own test: the chaos suite's ``kafka-restart`` scenario stops the broker for 2 s
and checks only the end result. A minute is long enough for what a short blip hides: a
loop blocked inside one batch (waiting for a model delta or for room in the producer's
queue) stops beating, so ``/healthz`` fails and an orchestrator would kill a worker that
only had to wait; readiness must say "not ready" the whole time; and once the broker is
back, the minute of events that upstream buffered arrives at once, in batches whose
lists overflow a producer queue kept small here on purpose, so the overflow path is
taken for real and must lose no output.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.chaos.driver import (
    OutputReader,
    PacedProducer,
    applied_counts,
    make_stream,
    poll_until,
    scrape_metrics,
)
from tests.helpers import tailor_process, wait_until
from tests.servers import KafkaServer
from worker.config import Settings
from worker.state.store import UserStore
from worker.transport.kafka import create_topics

pytestmark = pytest.mark.integration

OUTAGE_S = 60.0
EVENTS = 8_000
USERS = 600
SEND_S = 75.0  # the outage starts ~8 s in, so events come before, during and after it
#: Smaller than one batch's lists (up to 500): every full batch overflows the queue.
PRODUCER_QUEUE = 200
#: What the worker may grow by while Kafka is away: a batch in hand, its lists in the
#: bounded producer queue, allocator slack. (Once Kafka is back the worker grows as it
#: learns the users and items of the backlog, as it would have anyway: reported only.)
RSS_GROWTH_BOUND_MB = 24.0
CATCH_UP_S = 90.0


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaServer]:
    """A broker of this test's own: it is stopped for a minute and started again."""
    server = KafkaServer(bootstrap="", directory=tmp_path / "kafka").start()
    try:
        yield server
    finally:
        server.stop()


def test_a_minute_without_kafka_is_waited_out_within_bounds(
    own_kafka: KafkaServer, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(bootstrap_servers=own_kafka.bootstrap, redis_url=redis_url).in_namespace(
        f"away-{uuid.uuid4().hex[:8]}",
        metrics_port=0,
        top_k=5,
        # A member silent for a minute has lost its partitions; the restarted broker
        # reassigns them only once the old member's session has expired (45 s by
        # default): a shorter session keeps the test short, it changes nothing else.
        kafka_extra={
            "queue.buffering.max.messages": str(PRODUCER_QUEUE),
            "session.timeout.ms": "10000",
        },
    )
    create_topics(settings, partitions=2)
    stream = make_stream(settings.group_id, EVENTS, USERS, malformed_share=0.01)
    client = redis.Redis.from_url(redis_url)
    store = UserStore(client, settings)
    users = list(stream.expected)
    reader = OutputReader(settings).start()
    log = tmp_path / "worker.log"
    try:
        with tailor_process(settings, log) as worker:
            base = worker.metrics_url.removesuffix("/metrics")
            wait_until(lambda: f"assigned {settings.events_topic}[" in log.read_text(), 60)
            producer = PacedProducer(
                settings.bootstrap_servers, settings.events_topic, stream, SEND_S
            ).start()
            wait_until(lambda: producer.progress() > 0.1, 30)
            wait_until(lambda: _status(base, "/readyz") == 200, 30)

            watch = _Watch(base, worker.pid).start()
            own_kafka.stop()
            away = time.monotonic()
            while time.monotonic() - away < OUTAGE_S:
                time.sleep(0.5)
            during = watch.take()
            own_kafka.start()  # same port and data: the worker must find it by itself

            producer.join(180)

            def caught_up() -> bool:
                applied = applied_counts(client, store, users)
                return all(applied[u] >= stream.expected[u] for u in users) and (
                    reader.unaccounted(stream, producer.coordinates) == 0
                )

            poll_until(caught_up, CATCH_UP_S, lambda: log.read_text()[-3000:])
            wait_until(lambda: _status(base, "/readyz") == 200, 60)
            after = watch.stop()
            samples = scrape_metrics(int(base.rpartition(":")[2]))
        # Stopped with SIGTERM and exit status 0 (tailor_process checks it).
        reader.settle()
        applied = applied_counts(client, store, users)
        doubled = [u for u in users if applied[u] > stream.expected[u]]
        assert not doubled, f"{len(doubled)} users applied events twice"
        assert reader.unaccounted(stream, producer.coordinates) == 0

        # Not ready while Kafka was away (after the first seconds), alive all along.
        settled = [s for s in during if s.at >= 15.0]
        assert settled, during
        assert {s.ready for s in settled} == {503}, [s for s in settled if s.ready != 503][:3]
        assert {s.alive for s in during} == {200}, [s for s in during if s.alive != 200][:3]
        # The small queue overflowed on the backlog and lost nothing (checked above).
        assert samples["tailor_producer_queue_full_total"] > 0, samples
        rss = [s.rss_mb for s in during]
        growth = max(rss) - rss[0]
        later = max(s.rss_mb for s in after) - rss[0]
        full, replayed = (
            samples[f"tailor_{name}_total"] for name in ("producer_queue_full", "events_replayed")
        )
        print(
            f"\nKafka away {OUTAGE_S:.0f} s: RSS {rss[0]:.1f} MB at the start, growth "
            f"{growth:.1f} MB while away, {later:.1f} MB by the end of the catch-up; queue "
            f"full {full:.0f} times; {replayed:.0f} replayed"
        )
        assert growth < RSS_GROWTH_BOUND_MB, rss
        assert "CRITICAL" not in log.read_text()
    finally:
        reader.close()
        client.close()


class _Sample:
    __slots__ = ("alive", "at", "ready", "rss_mb")

    def __init__(self, at: float, ready: int, alive: int, rss_mb: float) -> None:
        self.at, self.ready, self.alive, self.rss_mb = at, ready, alive, rss_mb

    def __repr__(self) -> str:
        return f"{self.at:.1f}s ready={self.ready} alive={self.alive} rss={self.rss_mb:.1f}"


class _Watch:
    """Every half second, what an orchestrator sees (/readyz, /healthz) and the RSS."""

    def __init__(self, base: str, pid: int) -> None:
        self.base, self.pid = base, pid
        self.samples: list[_Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def start(self) -> _Watch:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            sample = _Sample(
                time.monotonic() - self._started,
                _status(self.base, "/readyz"),
                _status(self.base, "/healthz"),
                _rss_mb(self.pid),
            )
            with self._lock:
                self.samples.append(sample)

    def take(self) -> list[_Sample]:
        """The samples so far, and a fresh list for what follows."""
        with self._lock:
            taken, self.samples = self.samples, []
        return taken

    def stop(self) -> list[_Sample]:
        self._stop.set()
        self._thread.join(10)
        return self.take()


def _status(base: str, path: str) -> int:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")
