"""Redis refusing a command mid-run: one clear line, nothing committed, nothing lost.

Why: an ACL change (``NOPERM``) or a full Redis (``OOM`` at maxmemory) is not an outage:
retrying does not help and a traceback tells an operator nothing. ``tailor run`` must stop
with one CRITICAL line naming the cause and what to check, without a password in it, and
without committing the batch it could not write, so a restart after the fix applies every
event exactly once. Real processes on a real Redis of the test's own (its memory limit
and ACL users are changed under the worker).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Producer

from tests.helpers import event, wait_until
from tests.servers import RedisServer
from worker.config import Settings
from worker.redaction import RedactingFormatter, redact
from worker.state.store import UserStore

PASSWORD = "s3cret-acl-pass"
USER = "tailor-worker"
ROOT = Path(__file__).resolve().parent.parent


def test_redact_masks_passwords_in_any_url_of_a_line() -> None:
    line = "cannot reach redis://tailor:p@ss@redis:6379/0 nor rediss://:x@y:1 at kafka://h:9092"
    assert (
        redact(line)
        == "cannot reach redis://tailor:***@redis:6379/0 nor rediss://:***@y:1 at kafka://h:9092"
    )
    assert redact("http://host:8080/metrics") == "http://host:8080/metrics"


def test_log_lines_and_tracebacks_never_show_a_password() -> None:
    formatter = RedactingFormatter("%(message)s")
    try:
        raise ValueError("refused by redis://u:hunter2@db:6379")
    except ValueError:
        record = logging.LogRecord(
            "tailor",
            logging.ERROR,
            __file__,
            1,
            "url %s",
            ("redis://u:hunter2@db:1",),
            sys.exc_info(),
        )
    text = formatter.format(record)
    assert "hunter2" not in text
    assert text.startswith("url redis://u:***@db:1\n")
    assert text.endswith("ValueError: refused by redis://u:***@db:6379")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: its maxmemory and ACL users are changed."""
    server = RedisServer(url="", directory=tmp_path / "redis").start()
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
    )
    try:
        yield server
    finally:
        server.stop()


def _start(settings: Settings, url: str, log: Path) -> subprocess.Popen[bytes]:
    configured = settings.with_overrides(
        redis_url=url, redis_username=USER, redis_password=PASSWORD
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env |= configured.as_environment() | {
        "TAILOR_METRICS_HOST": "127.0.0.1",
        "TAILOR_METRICS_PORT": "0",
    }
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=env, stderr=sink, cwd=ROOT
        )


def _send(settings: Settings, users: list[str], item: str) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for user in users:
        producer.produce(settings.events_topic, key=user, value=orjson.dumps(event(user, item)))
    producer.flush(30)


REFUSALS: dict[
    str, tuple[Callable[[redis.Redis], object], Callable[[redis.Redis], object], str]
] = {
    "oom": (
        lambda admin: admin.config_set("maxmemory", 1),
        lambda admin: admin.config_set("maxmemory", 0),
        "is out of memory and refuses writes",
    ),
    "noperm": (
        lambda admin: admin.acl_setuser(USER, enabled=True, commands=["-evalsha"]),
        lambda admin: admin.acl_setuser(USER, enabled=True, commands=["+evalsha"]),
        f"user '{USER}' lacks a permission Tailor needs",
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_refused_write_stops_the_worker_with_one_line_and_loses_nothing(
    kind: str, settings: Settings, own_redis: RedisServer, tmp_path: Path
) -> None:
    refuse, allow, said = REFUSALS[kind]
    admin = redis.Redis.from_url(own_redis.url)
    store = UserStore(redis.Redis.from_url(own_redis.url), settings)
    url = own_redis.url.replace("redis://", f"redis://{USER}:{PASSWORD}@")
    first, second = [f"early-{n}" for n in range(5)], [f"late-{n}" for n in range(5)]

    log = tmp_path / "first.log"
    worker = _start(settings, url, log)
    try:
        _send(settings, first, "lamp")
        wait_until(lambda: all(store.read([u])[u] is not None for u in first), timeout_s=60)
        refuse(admin)
        _send(settings, second, "shade")
        assert worker.wait(60) == 1, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    text = log.read_text()
    critical = [line for line in text.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1, text[-3000:]
    assert said in critical[0]
    assert "Traceback" not in text
    assert PASSWORD not in text
    assert all(store.read([u])[u] is None for u in second)  # the refused batch wrote nothing

    allow(admin)
    log = tmp_path / "after.log"
    restarted = _start(settings, url, log)
    try:
        wait_until(lambda: all(store.read([u])[u] is not None for u in second), timeout_s=60)
        time.sleep(1)  # anything replayed twice would show up in the counts by now
    finally:
        restarted.terminate()
        assert restarted.wait(60) == 0, log.read_text()[-3000:]
    states = store.read(first + second)
    assert {u: s.events for u, s in states.items() if s is not None} == {
        u: 1 for u in first + second
    }


def test_tailor_config_never_prints_a_password() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env["TAILOR_REDIS_URL"] = f"redis://{USER}:{PASSWORD}@redis:6379/0"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert f"redis://{USER}:***@redis:6379/0" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
