"""Real Kafka and Redis servers for the integration tests (a pytest plugin).

Why real servers: what the worker must get right (consumer groups, offsets, rebalances,
Redis persistence) is exactly what fakes model poorly, and CI has no Docker engine. So
``deploy/local/kafka.sh`` and ``deploy/local/redis.sh`` start the genuine servers on
127.0.0.1 on free ports, and this module wraps them in fixtures.

Load it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.servers"]``.

Set ``TAILOR_TEST_BOOTSTRAP`` / ``TAILOR_TEST_REDIS_URL`` / ``TAILOR_TEST_REDIS_CLUSTER_URL``
to point the tests at servers that are already running (a developer's own broker, a CI
service); nothing is started then.

Tests that must hold on a Redis Cluster as on one server are marked
:data:`on_single_and_cluster`: they run twice, and the ``settings`` fixture of
``tests/conftest.py`` points the second run at a three-master cluster started by
``deploy/local/redis-cluster.sh`` (once per session, only when such a test runs).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

LOCAL_DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "local"
BOOTSTRAP_ENV = "TAILOR_TEST_BOOTSTRAP"
REDIS_URL_ENV = "TAILOR_TEST_REDIS_URL"
REDIS_CLUSTER_URL_ENV = "TAILOR_TEST_REDIS_CLUSTER_URL"

#: Run a test on the single Redis server and again on the Redis Cluster (the value
#: overrides the ``redis_kind`` fixture, which the ``settings`` fixture reads).
on_single_and_cluster = pytest.mark.parametrize("redis_kind", ["single", "cluster"])
# The first Kafka start resolves the broker jars with Maven, which can take minutes.
_SCRIPT_TIMEOUT_S = 900.0


def _run_script(script: str, action: str, directory: Path, env: Mapping[str, str]) -> str:
    """Run ``deploy/local/<script> <action> <directory>`` and return its stdout.

    The scripts print their result on stdout and everything else on stderr, so on
    failure the stderr (which includes the tail of the server log) is the useful part.
    """
    result = subprocess.run(
        ["bash", str(LOCAL_DEPLOY / script), action, str(directory)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=_SCRIPT_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{script} {action} {directory} failed with exit code {result.returncode}:\n"
            f"{result.stderr}"
        )
    return result.stdout


def _result_line(stdout: str, key: str) -> str:
    """Return the value of the ``KEY=value`` line a start script prints."""
    for line in stdout.splitlines():
        if line.startswith(f"{key}="):
            return line.removeprefix(f"{key}=")
    raise RuntimeError(f"no {key}= line in script output: {stdout!r}")


@dataclass
class KafkaServer:
    """A single-node KRaft broker run by ``deploy/local/kafka.sh`` in ``directory``.

    ``bootstrap`` is empty until the first ``start()``; afterwards the port is kept, so
    a ``restart()`` comes back at the same address with the same data, as a real broker
    restart would, and connected clients can reconnect on their own.

    With ``sasl_users`` (name -> password) the client listener is SASL_PLAINTEXT with
    mechanism PLAIN and accepts only those users.
    """

    bootstrap: str
    directory: Path
    sasl_users: dict[str, str] = field(default_factory=dict)

    def start(self) -> KafkaServer:
        """Start the broker (reusing its port and data if it ran before) and wait for it."""
        env = {"KAFKA_PORT": self.bootstrap.rpartition(":")[2]} if self.bootstrap else {}
        if self.sasl_users:
            env["KAFKA_SASL_USERS"] = ",".join(f"{u}:{p}" for u, p in self.sasl_users.items())
        stdout = _run_script("kafka.sh", "start", self.directory, env)
        self.bootstrap = _result_line(stdout, "BOOTSTRAP")
        return self

    def stop(self) -> None:
        """Stop the broker by its pid (TERM, then KILL after 20 s)."""
        _run_script("kafka.sh", "stop", self.directory, {})

    def restart(self) -> KafkaServer:
        """Stop and start again on the same port and data directory."""
        self.stop()
        return self.start()


@dataclass
class RedisServer:
    """A ``redis-server`` run by ``deploy/local/redis.sh`` in ``directory``.

    With ``persist`` the server keeps an append-only file in ``directory``, so data
    survives ``restart()``; without it a restart starts empty, like a cache that was
    flushed. ``url`` is empty until the first ``start()``; afterwards the port is kept.

    With ``tls_dir`` (``ca.crt``, ``redis.crt``, ``redis.key``) it speaks only TLS and
    requires client certificates; with ``acl_user`` and ``acl_password`` only that user
    may log in (the ``default`` user is off).
    """

    url: str
    directory: Path
    persist: bool = False
    tls_dir: Path | None = None
    acl_user: str | None = None
    acl_password: str | None = None

    def start(self) -> RedisServer:
        """Start the server (reusing its port if it ran before) and wait for PING."""
        env = {"REDIS_PERSIST": "1" if self.persist else "0"}
        if self.tls_dir is not None:
            env["REDIS_TLS_DIR"] = str(self.tls_dir)
        if self.acl_user is not None and self.acl_password is not None:
            env |= {"REDIS_ACL_USER": self.acl_user, "REDIS_ACL_PASSWORD": self.acl_password}
        if self.url:
            env["REDIS_PORT"] = str(urlsplit(self.url).port)
        stdout = _run_script("redis.sh", "start", self.directory, env)
        self.url = _result_line(stdout, "REDIS_URL")
        return self

    def stop(self) -> None:
        """Stop the server by its pid."""
        _run_script("redis.sh", "stop", self.directory, {})

    def restart(self) -> RedisServer:
        """Stop and start again on the same port and data directory."""
        self.stop()
        return self.start()


@dataclass
class RedisClusterServer:
    """Three masters and three replicas run by ``deploy/local/redis-cluster.sh``.

    ``url`` (``redis+cluster://127.0.0.1:<port>``) is empty until the first ``start()``.
    A ``start()`` after a ``stop()`` brings the same cluster back on the same ports (its
    data too with ``persist``), as after an outage of every node.
    """

    url: str
    directory: Path
    persist: bool = False

    def start(self) -> RedisClusterServer:
        """Start the six nodes, join them (the first time) and wait for cluster_state:ok."""
        env = {"REDIS_PERSIST": "1" if self.persist else "0"}
        stdout = _run_script("redis-cluster.sh", "start", self.directory, env)
        self.url = _result_line(stdout, "REDIS_URL")
        return self

    def stop(self) -> None:
        """Stop every node by its pid."""
        _run_script("redis-cluster.sh", "stop", self.directory, {})

    def ports(self) -> list[int]:
        """The client port of every node, masters and replicas alike."""
        return [
            int((node / "redis.port").read_text()) for node in sorted(self.directory.glob("node-*"))
        ]


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker so ``--strict-markers`` accepts it and ``-m`` can select it."""
    config.addinivalue_line(
        "markers",
        "integration: talks to the real Kafka broker and Redis server started by deploy/local/",
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker, started once per session (a few seconds)."""
    if external := os.environ.get(BOOTSTRAP_ENV):
        yield external
        return
    server = KafkaServer(bootstrap="", directory=tmp_path_factory.mktemp("kafka")).start()
    try:
        yield server.bootstrap
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server, started once per session."""
    if external := os.environ.get(REDIS_URL_ENV):
        yield external
        return
    server = RedisServer(url="", directory=tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real three-master Redis Cluster, started once per session (about 7 s)."""
    if external := os.environ.get(REDIS_CLUSTER_URL_ENV):
        yield external
        return
    cluster = RedisClusterServer(url="", directory=tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start().url
    finally:
        cluster.stop()
