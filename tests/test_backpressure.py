"""Backpressure: a Redis outage of 30+ s under steady load leaves the worker's memory flat.

Why a real process: what must stay bounded is the whole worker (Python heap and
librdkafka's prefetch queues), which only the resident set size of a ``tailor run``
process shows. The worker must pause its partitions (nothing is fetched, nothing buffers),
report not-ready, keep backing off, and resume by itself when Redis is back, processing
every event produced meanwhile.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import orjson
import pytest
from confluent_kafka import Producer

from tests.helpers import event, wait_until
from tests.servers import RedisServer
from worker.config import Settings

pytestmark = pytest.mark.integration

OUTAGE_S = 32.0
RATE_PER_S = 600  # events produced per second during the outage
PADDING = 2800  # bytes of an ignored field per event: about 3 KB per message
# What the worker may grow by while paused: librdkafka's bounded prefetch (at most 8 MB per
# partition, here two) plus the batch in hand and allocator slack. The outage produces
# ~55 MB; a worker that buffered it would grow past this bound.
RSS_GROWTH_BOUND_MB = 24.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, with an append-only file: it is stopped and restarted."""
    server = RedisServer(url="", directory=tmp_path / "redis", persist=True).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class WorkerProcess:
    pid: int
    log: Path


@pytest.fixture
def worker_process(
    settings: Settings, own_redis: RedisServer, tmp_path: Path
) -> Iterator[WorkerProcess]:
    """``tailor run`` on this test's topics and Redis; SIGTERM (and exit 0) at the end."""
    configured = settings.with_overrides(redis_url=own_redis.url, redis_timeout_s=0.5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(configured.as_environment())
    env.update(TAILOR_METRICS_HOST="127.0.0.1", TAILOR_METRICS_PORT="0")
    log = tmp_path / "worker.log"
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the worker
        process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, stderr=sink)
    try:
        yield WorkerProcess(process.pid, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found.group(1)) / 1024


class Observed:
    """The worker as an operator sees it: /metrics and /readyz on its metrics port."""

    def __init__(self, log: Path) -> None:
        found: list[str] = []

        def address_logged() -> bool:
            found[:] = re.findall(r"metrics on http://[\d.]+:(\d+)/metrics", log.read_text())
            return bool(found)

        wait_until(address_logged, timeout_s=60)
        self.base = f"http://127.0.0.1:{found[0]}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", self.get("/metrics")[1], re.MULTILINE)
        return float(found.group(1)) if found else 0.0


class RssSampler:
    """Samples a process's resident set size every 0.25 s in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.samples.append(rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)


def _produce_steadily(settings: Settings, seconds: float, rate: int) -> tuple[int, int]:
    """Produce ~``rate`` events a second for ``seconds``; returns (events, bytes)."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 20})
    sent = size = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            body = event(f"bp-{sent % 500}", f"item-{sent % 2000}", padding="x" * PADDING)
            value = orjson.dumps(body)
            producer.produce(settings.events_topic, key=body["user_id"].encode(), value=value)
            sent, size = sent + 1, size + len(value)
        producer.poll(0)
        time.sleep(0.01)
    assert producer.flush(60) == 0
    return sent, size


def test_memory_stays_bounded_through_a_redis_outage_under_load(
    settings: Settings, own_redis: RedisServer, worker_process: WorkerProcess
) -> None:
    worker = Observed(worker_process.log)
    warm, _ = _produce_steadily(settings, 3.0, RATE_PER_S)
    wait_until(lambda: worker.metric("tailor_events_processed_total") == warm, timeout_s=60)
    assert worker.get("/readyz")[0] == 200

    own_redis.stop()
    outage_started = time.monotonic()
    with RssSampler(worker_process.pid) as sampler:
        during, produced_bytes = _produce_steadily(settings, OUTAGE_S, RATE_PER_S)
        status, why = worker.get("/readyz")
        assert (status, "redis" in why) == (503, True), why
        assert worker.metric("tailor_ready") == 0
        assert worker.metric("tailor_partitions_paused") == 2
        assert worker.metric("tailor_events_processed_total") == warm
    outage_s = time.monotonic() - outage_started
    own_redis.start()  # same port and data: the worker must find it by itself

    recovered = time.monotonic()
    total = warm + during
    wait_until(lambda: worker.metric("tailor_events_processed_total") == total, timeout_s=90)
    drained_s = time.monotonic() - recovered
    wait_until(lambda: worker.get("/readyz")[0] == 200, timeout_s=30)
    assert worker.metric("tailor_partitions_paused") == 0
    log = worker_process.log.read_text()
    assert "pausing consumption" in log
    assert "resuming consumption" in log

    samples = sampler.samples
    assert len(samples) >= 4 * 25, len(samples)
    paused_at = samples[len(samples) // 10]  # a few seconds in: the pause has taken hold
    growth = max(samples) - paused_at
    produced_mb = produced_bytes / 2**20
    print(
        f"\noutage {outage_s:.1f} s, produced {during} events / {produced_mb:.1f} MB; "
        f"RSS {min(samples):.1f}..{max(samples):.1f} MB, growth {growth:.1f} MB after the "
        f"pause; {total} events processed {drained_s:.1f} s after Redis returned"
    )
    assert outage_s >= 30.0
    assert produced_mb > 2 * RSS_GROWTH_BOUND_MB  # the bound means something
    assert growth < RSS_GROWTH_BOUND_MB, samples
