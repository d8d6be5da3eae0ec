"""Helpers for integration tests: messages, producing, reading topics, running a worker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer

from worker.config import Settings
from worker.loop import Worker


def event(
    user: str, item: str | None, kind: str = "click", *, event_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A valid event message as a frontend would send it."""
    body: dict[str, Any] = {
        "event_id": event_id or uuid.uuid4().hex,
        "user_id": user,
        "type": kind,
        "timestamp": int(time.time() * 1000),
        "context": {"device": "web", "country": "NL"},
    }
    if item is not None:
        body["item_id"] = item
    body.update(extra)
    return body


def produce(
    settings: Settings, topic: str, messages: list[tuple[bytes | None, bytes | None]]
) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    produce(
        settings,
        settings.events_topic,
        [(e["user_id"].encode(), orjson.dumps(e)) for e in events],
    )


class TopicReader:
    """Reads a topic from the beginning, as a downstream service would."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([topic])
        self.messages: list[Message] = []

    def wait_for(
        self, condition: Callable[[list[Message]], bool], timeout_s: float = 30.0
    ) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while not condition(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met after {timeout_s} s: {len(self.messages)} seen"
                )
            for message in self.consumer.consume(500, 0.1):
                if message.error() is None:
                    self.messages.append(message)
        return self.messages

    def bodies(self) -> list[dict[str, Any]]:
        return [body for m in self.messages if (body := body_of(m))]

    def close(self) -> None:
        self.consumer.close()


def body_of(message: Message) -> dict[str, Any]:
    """The JSON body of a message; empty for a tombstone."""
    value = message.value()
    return {} if value is None else dict(orjson.loads(value))


def headers_of(message: Message) -> dict[str, bytes]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {key: value.encode() if isinstance(value, str) else value or b"" for key, value in pairs}


@contextmanager
def running_worker(settings: Settings, **kwargs: Any) -> Iterator[Worker]:
    """A worker turning in a thread; leaving the block stops it the way SIGTERM does."""
    worker = Worker(settings, **kwargs)
    worker.start(catalog_timeout_s=10)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "worker did not stop within 60 s"


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout_s} s")
        time.sleep(0.02)


@dataclass(frozen=True)
class TailorProcess:
    """A ``tailor run`` process: its pid, its log file and its metrics address."""

    pid: int
    log: Path
    metrics_url: str


@contextmanager
def tailor_process(settings: Settings, log: Path) -> Iterator[TailorProcess]:
    """``tailor run`` as an operator starts it, with ``settings`` as its environment.

    Metrics on 127.0.0.1 and a free port (read back from the log). The log is a file, not
    a pipe: a pipe nobody reads would stall the worker once full. Leaving the block sends
    SIGTERM and expects exit status 0.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(settings.as_environment())
    env.update(TAILOR_METRICS_HOST="127.0.0.1", TAILOR_METRICS_PORT="0")
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, stderr=sink)
    try:
        ports: list[str] = []

        def address_logged() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            ports[:] = re.findall(r"metrics on http://[\d.]+:(\d+)/metrics", log.read_text())
            return bool(ports)

        wait_until(address_logged, timeout_s=60)
        yield TailorProcess(process.pid, log, f"http://127.0.0.1:{ports[0]}/metrics")
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
