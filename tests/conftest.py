"""Shared fixtures: real servers (tests/servers.py) and per-test topics, group and keys.

Every integration test gets its own topics, consumer group and Redis key prefix, so tests
share one broker and one Redis server without seeing each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import TopicReader
from worker.config import Settings
from worker.transport.kafka import create_topics

pytest_plugins = ["tests.servers"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the fault suite unless ``-m`` names it: it takes minutes and restarts servers.

    Not ``addopts = -m "not chaos"``: a ``-m`` on the command line would replace it, and
    ``make unit`` already passes one.
    """
    if "chaos" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the fault suite runs with `make chaos` (pytest -m chaos)")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)


@pytest.fixture
def redis_kind() -> str:
    """Which Redis a test runs on: one server, unless marked ``on_single_and_cluster``."""
    return "single"


@pytest.fixture
def redis_under_test(redis_kind: str, request: pytest.FixtureRequest) -> str:
    """The URL of the Redis this test runs on; the cluster is started only when asked for."""
    fixture = {"single": "redis_url", "cluster": "redis_cluster_url"}[redis_kind]
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def settings(kafka_bootstrap: str, redis_under_test: str) -> Settings:
    """Settings on the real servers with fresh topics, group and key prefix."""
    configured = Settings(
        bootstrap_servers=kafka_bootstrap, redis_url=redis_under_test
    ).in_namespace(uuid.uuid4().hex[:10], metrics_port=0, batch_wait_ms=20)
    create_topics(configured, partitions=2)
    return configured


@pytest.fixture
def reader(settings: Settings) -> Iterator[Callable[[str], TopicReader]]:
    readers: list[TopicReader] = []

    def open_reader(topic: str) -> TopicReader:
        readers.append(TopicReader(settings, topic))
        return readers[-1]

    yield open_reader
    for opened in readers:
        opened.close()
