"""The ``tailor`` command as an operator runs it: real processes, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from tests.helpers import TopicReader, body_of, event, produce_events
from worker.config import Settings
from worker.state.store import UserStore

ROOT = Path(__file__).resolve().parent.parent
TAILOR = [sys.executable, "-m", "worker"]


def _environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(settings.as_environment())
    env.update(TAILOR_METRICS_HOST="127.0.0.1", TAILOR_METRICS_PORT="0")
    env.update(extra)
    return env


def test_a_bad_setting_stops_start_up_naming_the_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env["TAILOR_BATCH_SIZE"] = "zero"
    done = subprocess.run(
        [*TAILOR, "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "TAILOR_BATCH_SIZE" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unreachable_redis_stops_start_up_with_exit_1() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(
        TAILOR_REDIS_URL="redis://127.0.0.1:1/0",
        TAILOR_REDIS_TIMEOUT_S="0.5",
        TAILOR_METRICS_PORT="0",
        TAILOR_METRICS_HOST="127.0.0.1",
    )
    done = subprocess.run(
        [*TAILOR, "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "cannot reach Redis" in done.stderr
    assert "TAILOR_REDIS_URL" in done.stderr


def test_help_explains_every_option() -> None:
    done = subprocess.run(
        [*TAILOR, "run", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--exit-when-idle" in done.stdout
    assert "SIGTERM" in done.stdout


def test_schemas_on_disk_match_the_models() -> None:
    done = subprocess.run(
        [*TAILOR, "schemas", "--check", "--out", str(ROOT / "schemas")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_demo_runs_without_servers_and_exits_zero() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    done = subprocess.run(
        [*TAILOR, "demo", "--users", "2", "--events", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "customer c" in done.stdout
    assert "recommended now" in done.stdout
    assert "dead-lettered" in done.stdout
    # the backlog's drain and the live events' latency apart, each on one line
    assert "incl. backlog" not in done.stdout
    assert re.search(r"backlog sent at once +│ [\d,]+ events in [\d.]+ s \(", done.stdout)
    assert re.search(r"backlog: mean wait per list +│ \d+ ms \(queued", done.stdout)
    assert re.search(
        r"live: event sent to its list +│ median \d+ ms \(\d+-\d+ ms, 4 events\)", done.stdout
    )


@pytest.mark.integration
def test_run_serves_until_sigterm_then_commits_and_exits_zero(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    recommendations = reader(settings.recommendations_topic)
    process = subprocess.Popen(
        [*TAILOR, "run"],
        env=_environment(settings),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        events = [event(f"cli{n % 3}", f"item-{n}") for n in range(12)]
        produce_events(settings, events)
        last = events[-1]["event_id"]
        recommendations.wait_for(
            lambda seen: any(last in body_of(m).get("covered_event_ids", []) for m in seen),
            timeout_s=60,
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "received SIGTERM" in stderr
    assert re.search(r"stopped: 12 consumed, 12 processed", stderr), stderr[-2000:]

    # Every consumed offset was committed before the worker left.
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group_id}
    )
    try:
        partitions = [TopicPartition(settings.events_topic, p) for p in range(2)]
        committed = consumer.committed(partitions, timeout=10)
        ends = [consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions]
    finally:
        consumer.close()
    assert sum(ends) == 12
    assert [max(p.offset, 0) for p in committed] == ends  # an empty partition has no commit


@pytest.mark.integration
def test_metrics_and_readiness_are_served_while_running(settings: Settings) -> None:
    process = subprocess.Popen(
        [*TAILOR, "run"], env=_environment(settings), stderr=subprocess.PIPE, text=True
    )
    try:
        port = _metrics_port(process)
        produce_events(settings, [event("m1", "a"), event("m2", "b"), event("m1", "c")])
        deadline = time.monotonic() + 60
        text = ""
        while "tailor_events_processed_total 3.0" not in text:
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.2)
            text = _get(f"http://127.0.0.1:{port}/metrics")[1]
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert "tailor_event_to_publish_seconds_bucket" in text
        assert "tailor_redis_roundtrip_seconds_count" in text
        assert "m1" not in text, "user ids must never appear in metrics"
        while "tailor_consumer_lag{" not in text:  # librdkafka statistics come every 5 s
            assert time.monotonic() < deadline + 15, text[-2000:]
            time.sleep(0.5)
            text = _get(f"http://127.0.0.1:{port}/metrics")[1]
        lags = re.findall(r'tailor_consumer_lag\{partition="(\d)",topic="([^"]+)"\} (\S+)', text)
        assert {(topic, float(lag)) for _, topic, lag in lags} == {(settings.events_topic, 0.0)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


@pytest.mark.integration
def test_forget_removes_every_key_and_publishes_a_tombstone(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    store = UserStore(redis.Redis.from_url(settings.redis_url), settings)
    recommendations = reader(settings.recommendations_topic)
    process = subprocess.Popen(
        [*TAILOR, "run"], env=_environment(settings), stderr=subprocess.PIPE, text=True
    )
    try:
        produce_events(settings, [event("carol", "x1"), event("carol", "x2")])
        recommendations.wait_for(lambda seen: len(seen) >= 1, timeout_s=60)
        deadline = time.monotonic() + 30
        while not store.keys_of("carol"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)

    done = subprocess.run(
        [*TAILOR, "forget", "carol"],
        env=_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert store.keys_of("carol") == []
    recommendations.wait_for(
        lambda seen: any(m.key() == b"carol" and m.value() is None for m in seen)
    )


def _metrics_port(process: subprocess.Popen[str]) -> int:
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", line)
        if found:
            return int(found.group(1))
    raise AssertionError("the worker never logged its metrics address")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
