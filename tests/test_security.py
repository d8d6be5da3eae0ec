"""Security: Redis over TLS with an ACL user, Kafka over SASL, the metrics bind address,
and no code path that unpickles or evaluates what it reads.

Why real servers: whether a password or certificate is refused, and what the operator
then reads, is decided by redis-server, the Kafka broker, OpenSSL and librdkafka; fakes
would only restate our assumptions. Certificates are generated per session (tests/certs.py).
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from pydantic import SecretStr

from tests.certs import Authority, TlsFiles, write_tls_files
from tests.helpers import event, running_worker, wait_until
from tests.servers import KafkaServer, RedisServer
from worker.config import Settings
from worker.loop import Worker
from worker.metrics import Health, Metrics, MetricsServer
from worker.redaction import redacted_url
from worker.state.store import StoreUnavailable, UserStore, connect_redis
from worker.state.user import Interaction, UserState, UserWrite
from worker.transport.kafka import (
    KafkaUnavailable,
    check_kafka,
    client_config,
    create_topics,
    make_consumer,
    make_producer,
)

ROOT = Path(__file__).resolve().parent.parent
REDIS_USER, REDIS_PASSWORD = "tailor", "redis-secret-7d1f"
KAFKA_USER, KAFKA_PASSWORD = "alice", "alice-secret-42ab"


# -- servers and settings ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The CA the Redis server and the worker both trust, with their certificates."""
    return write_tls_files(tmp_path_factory.mktemp("tls"), Authority.create("Tailor test CA"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Another CA and certificates it signed: nobody in these tests trusts it."""
    return write_tls_files(tmp_path_factory.mktemp("rogue"), Authority.create("Rogue CA"))


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[str]:
    """rediss:// URL of a redis-server that speaks only TLS, wants client certificates
    signed by ``tls.ca`` and lets only REDIS_USER in."""
    server = RedisServer(
        url="",
        directory=tmp_path_factory.mktemp("secure-redis"),
        tls_dir=tls.directory,
        acl_user=REDIS_USER,
        acl_password=REDIS_PASSWORD,
    ).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a broker whose only client listener is SASL_PLAINTEXT."""
    server = KafkaServer(
        bootstrap="",
        directory=tmp_path_factory.mktemp("sasl-kafka"),
        sasl_users={KAFKA_USER: KAFKA_PASSWORD},
    ).start()
    try:
        yield server.bootstrap
    finally:
        server.stop()


def _redis_settings(url: str, tls: TlsFiles, **changes: Any) -> Settings:
    """Settings that log in to ``secure_redis`` correctly, unless ``changes`` say otherwise."""
    values: dict[str, Any] = {
        "redis_url": url,
        "redis_username": REDIS_USER,
        "redis_password": SecretStr(REDIS_PASSWORD),
        "redis_ssl_ca_certs": tls.ca,
        "redis_ssl_certfile": tls.client_cert,
        "redis_ssl_keyfile": tls.client_key,
        "redis_key_prefix": f"sec{uuid.uuid4().hex[:8]}",
        "redis_timeout_s": 2.0,
    }
    return Settings(**(values | changes))


def _kafka_settings(bootstrap: str, password: str, base: Settings | None = None) -> Settings:
    changes = {
        "bootstrap_servers": bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": KAFKA_USER,
        "kafka_sasl_password": SecretStr(password),
    }
    return (base or Settings()).with_overrides(**changes)


def _refusal(settings: Settings) -> str:
    """The message of the start-up check against Redis, which must fail."""
    store = UserStore(connect_redis(settings), settings)
    with pytest.raises(StoreUnavailable) as caught:
        store.check()
    return str(caught.value)


# -- Redis: TLS and ACL -------------------------------------------------------------------


@pytest.mark.integration
def test_redis_with_tls_and_acl_user_round_trips_a_user(secure_redis: str, tls: TlsFiles) -> None:
    assert secure_redis.startswith("rediss://")
    settings = _redis_settings(secure_redis, tls, vector_dim=4)
    store = UserStore(connect_redis(settings), settings)
    store.check()
    state = UserState(
        user_id="u-tls",
        vector=np.arange(4, dtype=np.float32),
        recent=[Interaction("i1", "click", 1.0)],
        last_list=["i2"],
        events=1,
        last_seen=1.0,
        offsets={0: 3},
    )
    assert store.write([UserWrite(state)]).written == 1
    read = store.read(["u-tls"])["u-tls"]
    assert read is not None
    assert read.offsets == {0: 3}
    assert read.last_list == ["i2"]
    assert store.client.acl_whoami() == REDIS_USER


@pytest.mark.integration
def test_redis_wrong_password_is_refused_naming_the_user(secure_redis: str, tls: TlsFiles) -> None:
    message = _refusal(_redis_settings(secure_redis, tls, redis_password=SecretStr("nope")))
    assert f"refused user '{REDIS_USER}': authentication failed" in message
    assert "invalid username-password pair" in message
    assert "TAILOR_REDIS_PASSWORD" in message
    assert "nope" not in message


@pytest.mark.integration
def test_redis_default_user_is_switched_off(secure_redis: str, tls: TlsFiles) -> None:
    message = _refusal(_redis_settings(secure_redis, tls, redis_username=None, redis_password=None))
    assert "refused user 'default': authentication failed" in message


@pytest.mark.integration
def test_redis_server_certificate_from_an_untrusted_ca_is_refused(
    secure_redis: str, tls: TlsFiles, rogue: TlsFiles
) -> None:
    """The worker trusts only the rogue CA, so the real server's certificate is unknown."""
    message = _refusal(_redis_settings(secure_redis, tls, redis_ssl_ca_certs=rogue.ca))
    assert "TLS certificate of the server not trusted" in message
    assert "certificate in certificate chain" in message  # OpenSSL's verify reason
    assert "TAILOR_REDIS_SSL_CA_CERTS" in message


@pytest.mark.integration
def test_redis_client_certificate_from_an_untrusted_ca_is_refused(
    secure_redis: str, tls: TlsFiles, rogue: TlsFiles
) -> None:
    message = _refusal(
        _redis_settings(
            secure_redis,
            tls,
            redis_ssl_certfile=rogue.client_cert,
            redis_ssl_keyfile=rogue.client_key,
        )
    )
    assert "TLS connection failed" in message
    assert "TAILOR_REDIS_SSL_CERTFILE" in message


@pytest.mark.integration
def test_tailor_run_with_a_wrong_redis_password_exits_with_one_line(
    secure_redis: str, tls: TlsFiles
) -> None:
    settings = _redis_settings(secure_redis, tls, redis_password=SecretStr("wrong-pass"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env |= settings.as_environment() | {
        "TAILOR_METRICS_HOST": "127.0.0.1",
        "TAILOR_METRICS_PORT": "0",
        "TAILOR_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached: Redis is checked first
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 1
    critical = [line for line in done.stderr.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1, done.stderr
    assert f"cannot start: Redis at {secure_redis} refused user '{REDIS_USER}'" in critical[0]
    assert "Traceback" not in done.stderr
    assert "wrong-pass" not in done.stderr


# -- Kafka: SASL --------------------------------------------------------------------------


@pytest.mark.integration
def test_worker_over_sasl_kafka_and_tls_redis_publishes_a_list(
    sasl_kafka: str, secure_redis: str, tls: TlsFiles
) -> None:
    """Every client the worker builds (admin, catalog, consumer, producer) logs in."""
    settings = _kafka_settings(
        sasl_kafka, KAFKA_PASSWORD, _redis_settings(secure_redis, tls)
    ).in_namespace(uuid.uuid4().hex[:10], metrics_port=0, batch_wait_ms=20)
    check_kafka(settings, timeout_s=30)
    create_topics(settings, partitions=1)
    reader = make_consumer(settings.with_overrides(group_id=f"reader-{uuid.uuid4().hex[:8]}"))
    reader.subscribe([settings.recommendations_topic])
    body = event("sasl-user", "item-1")
    try:
        with running_worker(settings) as worker:
            producer = make_producer(settings)
            producer.produce(settings.events_topic, key=b"sasl-user", value=orjson.dumps(body))
            assert producer.flush(30) == 0
            wait_until(lambda: worker.stats.published >= 1)
        published = _read_one(reader)
    finally:
        reader.close()
    assert published["source_event_id"] == body["event_id"]
    store = UserStore(connect_redis(settings), settings)
    assert store.read(["sasl-user"])["sasl-user"] is not None


def _read_one(consumer: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None and message.value():
            return dict(orjson.loads(message.value()))
    raise AssertionError(f"nothing on the topic after {timeout_s} s")


@pytest.mark.integration
def test_kafka_wrong_password_is_refused_quickly_with_a_clear_error(sasl_kafka: str) -> None:
    settings = _kafka_settings(sasl_kafka, "not-the-password")
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as caught:
        check_kafka(settings, timeout_s=30)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"refused SASL user '{KAFKA_USER}' (PLAIN)" in message
    assert "Authentication failed: Invalid username or password" in message
    assert "TAILOR_KAFKA_SASL_PASSWORD" in message
    assert "not-the-password" not in message
    assert elapsed < 10, f"the refusal took {elapsed:.1f} s to surface"


@pytest.mark.integration
def test_worker_start_with_a_wrong_kafka_password_fails_instead_of_hanging(
    sasl_kafka: str, secure_redis: str, tls: TlsFiles
) -> None:
    settings = _kafka_settings(sasl_kafka, "not-the-password", _redis_settings(secure_redis, tls))
    worker = Worker(settings)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="refused SASL user 'alice'"):
        worker.start(catalog_timeout_s=5, kafka_timeout_s=30)
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_plaintext_client_cannot_use_the_sasl_listener(sasl_kafka: str) -> None:
    """Without SASL the broker never answers: the check gives up naming the protocol."""
    with pytest.raises(KafkaUnavailable, match="TAILOR_KAFKA_SECURITY_PROTOCOL"):
        check_kafka(Settings(bootstrap_servers=sasl_kafka), timeout_s=3)


# -- settings reach the clients ----------------------------------------------------------


def test_connect_redis_passes_tls_files_and_keeps_verification_on(tls: TlsFiles) -> None:
    settings = _redis_settings("rediss://127.0.0.1:6380/0", tls)
    client = connect_redis(settings)
    assert isinstance(client, redis.Redis)  # one server, not a cluster
    options = client.connection_pool.connection_kwargs
    assert options["ssl_ca_certs"] == str(tls.ca)
    assert options["ssl_certfile"] == str(tls.client_cert)
    assert options["ssl_keyfile"] == str(tls.client_key)
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_check_hostname"] is True
    assert options["username"] == REDIS_USER


def test_kafka_sasl_and_ssl_settings_reach_librdkafka(tls: TlsFiles) -> None:
    settings = _kafka_settings("broker:9093", KAFKA_PASSWORD).with_overrides(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_location=tls.ca,
        kafka_ssl_certificate_location=tls.client_cert,
        kafka_ssl_key_location=tls.client_key,
    )
    config = client_config(settings)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "PLAIN"
    assert config["sasl.username"] == KAFKA_USER
    assert config["sasl.password"] == KAFKA_PASSWORD
    assert config["ssl.ca.location"] == str(tls.ca)
    assert config["ssl.certificate.location"] == str(tls.client_cert)
    assert config["ssl.key.location"] == str(tls.client_key)


def test_redis_password_in_the_url_is_not_shown() -> None:
    assert redacted_url("rediss://svc:hunter2@redis:6380/0") == "rediss://svc:***@redis:6380/0"
    assert redacted_url("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted_url("redis://redis:6379/0") == "redis://redis:6379/0"


# -- the metrics bind address -----------------------------------------------------------


def test_metrics_server_listens_only_on_the_configured_address() -> None:
    """127.0.0.2 is loopback too on Linux: a server bound to 0.0.0.0 would answer there."""
    settings = Settings(metrics_host="127.0.0.1", metrics_port=0)
    server = MetricsServer(
        Metrics(), Health(), settings.metrics_host, settings.metrics_port
    ).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", server.port), timeout=2).close()
    finally:
        server.stop()


# -- nothing read is unpickled or evaluated ----------------------------------------------

_FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def unsafe_constructs(source: str, filename: str) -> list[str]:
    """Imports of unpickling modules, calls of eval-like builtins, and ``allow_pickle=True``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [
            f"{filename}:{line}: imports {name}"
            for name in names
            if name.split(".")[0] in _FORBIDDEN_MODULES
        ]
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
                found.append(f"{filename}:{line}: calls {node.func.id}")
            for keyword in node.keywords:
                if keyword.arg == "allow_pickle" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(f"{filename}:{line}: allow_pickle")
    return found


def test_no_worker_module_unpickles_or_evaluates() -> None:
    sources = sorted((ROOT / "worker").rglob("*.py"))
    assert len(sources) > 10
    found = [
        problem
        for path in sources
        for problem in unsafe_constructs(path.read_text(encoding="utf-8"), str(path))
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import dill as d",
        "from marshal import loads",
        "from shelve import open",
        "x = eval(text)",
        "exec(code)",
        "np.load(path, allow_pickle=True)",
    ],
)
def test_the_checker_catches_what_it_forbids(source: str) -> None:
    assert unsafe_constructs(source, "sample.py")


def test_the_checker_lets_safe_code_through() -> None:
    assert unsafe_constructs("import orjson\nre.compile('x')\nnp.load(p)\n", "ok.py") == []
