"""The one Kafka factory: every consumer, producer and admin client is built here.

Settings map to librdkafka keys in one place (security, SASL, SSL, pass-through extras),
and the loop-hygiene choices live next to the reasons for them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # public, not in __all__
    AdminClient,
    ConfigResource,
    ResourceType,
)
from confluent_kafka.cimpl import NewTopic

from worker.config import ENV_PREFIX, Settings
from worker.transport.topics import TopicFound, TopicSpec, model_topic, topic_specs

__all__ = [
    "KafkaCatalogFeed",
    "KafkaTopicIds",
    "KafkaUnavailable",
    "check_kafka",
    "client_config",
    "create_topics",
    "describe_topics",
    "make_admin",
    "make_catalog_consumer",
    "make_consumer",
    "make_model_consumer",
    "make_model_producer",
    "make_producer",
    "model_topic_spec",
]

log = logging.getLogger("tailor.kafka")

# Per partition, a bound on what librdkafka fetches ahead of the worker (see make_consumer).
_PREFETCH_KBYTES = 8192
# The lists' producer queue (see make_producer): about a hundred full batches of lists.
_PRODUCER_QUEUE_MESSAGES = 50_000
_PRODUCER_QUEUE_KBYTES = 32_768


def client_config(settings: Settings) -> dict[str, Any]:
    """Settings shared by every client: brokers, identity and security."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        assert settings.kafka_sasl_password is not None  # checked by Settings
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    for key, path in (
        ("ssl.ca.location", settings.kafka_ssl_ca_location),
        ("ssl.certificate.location", settings.kafka_ssl_certificate_location),
        ("ssl.key.location", settings.kafka_ssl_key_location),
    ):
        if path is not None:
            config[key] = str(path)
    if settings.kafka_ssl_key_password:
        config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    config.update(settings.kafka_extra)
    return config


def make_consumer(settings: Settings, **callbacks: Callable[..., None]) -> Consumer:
    """The events consumer of the group.

    Offsets are *stored* by hand only once a batch's outputs are acknowledged, and
    librdkafka commits what was stored in the background (confluent-kafka's canonical
    at-least-once pattern); a short fetch wait keeps event-to-publish latency low.

    The prefetch is bounded: librdkafka's defaults queue up to 64 MB and 100,000
    messages per partition ahead of the application, fetched in responses of up to
    50 MB, which is memory a worker holds for nothing while Redis is slow or away. A few
    batches ahead (at most ``_PREFETCH_KBYTES`` per partition) keeps the pipeline full;
    ``TAILOR_KAFKA_EXTRA`` can still raise it.
    """
    config = client_config(settings) | {
        "group.id": settings.group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": settings.commit_interval_ms,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 10,
        "statistics.interval.ms": 5000,
        "enable.partition.eof": False,
        "max.poll.interval.ms": 300_000,
        "queued.min.messages": max(1000, 4 * settings.batch_size),
        "queued.max.messages.kbytes": _PREFETCH_KBYTES,
        "fetch.max.bytes": _PREFETCH_KBYTES * 1024,
    }
    config.update(settings.kafka_extra)
    config.update(callbacks)
    return Consumer(config)


def make_catalog_consumer(settings: Settings) -> Consumer:
    """Reads the whole compacted catalog topic from the start, outside the group.

    Every worker needs every item, so the catalog is assigned (all partitions), not
    subscribed: in a group each worker would see only its share of the catalog.
    """
    config = client_config(settings) | {
        "group.id": f"{settings.group_id}.catalog.{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
    }
    # Group membership settings belong to the events consumer alone: a catalog reader
    # sharing its static group.instance.id could fence it.
    config.pop("group.instance.id", None)
    return Consumer(config)


def assign_whole_topic(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> int:
    """Assign every partition of ``topic`` from the beginning; returns the partition count."""
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return 0
    partitions = [TopicPartition(topic, p, -2) for p in metadata.partitions]  # -2 = beginning
    consumer.assign(partitions)
    return len(partitions)


class KafkaCatalogFeed:
    """The catalog topic read whole (a :class:`~worker.transport.ports.CatalogFeed`)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.catalog_topic
        self.consumer = make_catalog_consumer(settings)

    def assign(self) -> int:
        return assign_whole_topic(self.consumer, self.topic)

    def consume(self, limit: int, timeout_s: float) -> list[Message]:
        return self.consumer.consume(limit, timeout_s)

    def caught_up(self) -> bool:
        for partition in self.consumer.assignment():
            _, high = self.consumer.get_watermark_offsets(partition, timeout=5)
            position = self.consumer.position([partition])[0].offset
            if high > 0 and position < high:
                return False
        return True

    def close(self) -> None:
        self.consumer.close()


def make_producer(settings: Settings, **callbacks: Callable[..., None]) -> Producer:
    """Idempotent producer with a short linger: recommendations are latency-bound.

    Its local queue is bounded well below librdkafka's defaults (100,000 messages and
    1 GB): while Kafka is slow or away the lists of the batches in hand wait there, and a
    worker must not grow by a gigabyte to hold them. A full queue raises ``BufferError``
    in ``produce``; the loop then waits for acknowledgements, reporting not-ready, and
    stops without committing if Kafka stays away past ``outage_timeout_s``.
    """
    config = client_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.max.bytes": 1_000_000,
        "queue.buffering.max.messages": _PRODUCER_QUEUE_MESSAGES,
        "queue.buffering.max.kbytes": _PRODUCER_QUEUE_KBYTES,
    }
    config.update(settings.kafka_extra)
    config.update(callbacks)
    return Producer(config)


def model_topic_spec(settings: Settings) -> NewTopic:
    """The model topic as :func:`worker.transport.topics.model_topic` describes it."""
    return _new_topic(model_topic(settings))


def _new_topic(spec: TopicSpec) -> NewTopic:
    # -1: the broker's default.replication.factor (KIP-464), right on one dev broker and
    # on a production cluster alike.
    replication = spec.replication if spec.replication is not None else -1
    return NewTopic(spec.name, spec.partitions, replication, config=spec.config())


def make_model_producer(settings: Settings) -> Producer:
    """The model deltas' own producer: no linger, since each batch waits for its delta.

    Kept apart from the lists' producer so that waiting for a delta's acknowledgement
    (before the users' state is written) does not also wait for every list in flight.
    """
    config = client_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 0,
        "compression.type": "lz4",
        "message.max.bytes": 8_000_000,
    }
    config.update(settings.kafka_extra)
    return Producer(config)


def make_model_consumer(settings: Settings) -> Consumer:
    """Reads the model topic whole, outside the group (assigned, like the catalog)."""
    config = client_config(settings) | {
        "group.id": f"{settings.group_id}.model.{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 10,
        "fetch.message.max.bytes": 8_000_000,
    }
    config.update(settings.kafka_extra)
    config.pop("group.instance.id", None)
    return Consumer(config)


def make_admin(settings: Settings, **callbacks: Callable[..., None]) -> AdminClient:
    """A short-lived admin client, quiet below librdkafka's notices.

    At level 6 (info) librdkafka tells stderr, now and then, that it purged an event
    nobody was waiting for any more when an admin client goes away ("BGQUEUE"): noise in
    the one-line output of ``tailor topics``. ``TAILOR_KAFKA_EXTRA`` can raise it again.
    """
    return AdminClient({"log_level": 5} | client_config(settings) | dict(callbacks))


#: The all-zero UUID: what a broker without topic ids (before Kafka 2.8) reports.
_NO_TOPIC_ID = "A" * 22


class KafkaTopicIds:
    """Topic ids (Kafka's topic UUIDs, as their 22-character base64 text) read with
    ``AdminClient.describe_topics``: a :class:`~worker.transport.ports.TopicIds`.

    Asked at start and on each assignment, never per batch. A broker without topic ids
    (the all-zero UUID) answers "" like a failure. Right after a topic is
    created the broker may not describe it yet, so a failure is retried for up to
    ``timeout_s``; after that it is logged and answers "" (unknown), which leaves stored
    offsets in force as before ids were kept: better than stopping the worker.
    """

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    def topic_id(self, topic: str) -> str:
        admin = make_admin(self.settings)
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = max(0.5, deadline - time.monotonic())
            try:
                futures = admin.describe_topics(TopicCollection([topic]), request_timeout=left)
                found = str(futures[topic].result(timeout=left).topic_id)
                return "" if found == _NO_TOPIC_ID else found
            except Exception as error:  # KafkaException, a timeout: either means not now
                if time.monotonic() + 0.2 >= deadline:
                    log.warning("cannot learn the id of topic %s: %s", topic, error)
                    return ""
            time.sleep(0.2)


class KafkaUnavailable(RuntimeError):
    """At start-up the brokers could not be reached, or refused the client's credentials."""


def check_kafka(settings: Settings, timeout_s: float = 30.0) -> None:
    """Read cluster metadata within ``timeout_s`` or raise :class:`KafkaUnavailable`.

    librdkafka retries a refused login for ever and reports it only to the error
    callback; the clients' own calls just time out with "Broker transport failure". This
    check stops at the first authentication or TLS error and says which settings to fix.
    """
    errors: list[KafkaError] = []
    admin = make_admin(settings, error_cb=errors.append)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return
        except KafkaException as error:
            errors.append(error.args[0])
        admin.poll(0)
        refused = next((e for e in errors if e.code() in _REFUSALS), None)
        if refused is not None:
            raise KafkaUnavailable(_explain_refusal(refused, settings))
        if time.monotonic() >= deadline:
            raise KafkaUnavailable(
                f"cannot reach Kafka at {settings.bootstrap_servers} within {timeout_s:g} s "
                f"({errors[-1].str()}); check {ENV_PREFIX}BOOTSTRAP_SERVERS and "
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL"
            )


_REFUSALS = (KafkaError._AUTHENTICATION, KafkaError._SSL)


def _explain_refusal(error: KafkaError, settings: Settings) -> str:
    where = f"Kafka at {settings.bootstrap_servers}"
    if error.code() == KafkaError._AUTHENTICATION:
        return (
            f"{where} refused SASL user {settings.kafka_sasl_username!r} "
            f"({settings.kafka_sasl_mechanism}): {error.str()}; check "
            f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD"
        )
    return (
        f"{where}: TLS failed ({error.str()}); check {ENV_PREFIX}KAFKA_SSL_CA_LOCATION, "
        f"{ENV_PREFIX}KAFKA_SSL_CERTIFICATE_LOCATION and {ENV_PREFIX}KAFKA_SSL_KEY_LOCATION"
    )


def create_topics(
    settings: Settings, partitions: int | None = None, timeout_s: float = 30.0
) -> list[str]:
    """Create the settings' topics that are missing; returns the names created.

    Existing topics are left as they are, whatever they hold: changing the partitions of
    a keyed topic would move users to other partitions, so that is for an operator to do
    by hand (:func:`describe_topics` and ``tailor topics create --check`` say what
    differs). ``partitions`` overrides ``TAILOR_TOPIC_PARTITIONS`` (tests, benchmarks).
    """
    if partitions is not None:
        settings = settings.with_overrides(topic_partitions=partitions)
    admin = make_admin(settings)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [_new_topic(spec) for spec in topic_specs(settings) if spec.name not in existing]
    if not missing:
        return []
    created = []
    for topic, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(topic)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a racing creator
                raise RuntimeError(f"could not create topic {topic}: {error}") from error
    return sorted(created, key=[topic.topic for topic in missing].index)


def describe_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, TopicFound]:
    """The settings' topics that exist, with their partitions and cleanup settings."""
    admin = make_admin(settings)
    names = [spec.name for spec in topic_specs(settings)]
    metadata = admin.list_topics(timeout=timeout_s).topics
    present = [name for name in names if name in metadata and metadata[name].error is None]
    if not present:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in present]
    found = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        entries = future.result(timeout=timeout_s)
        retention = entries.get("retention.ms")
        found[resource.name] = TopicFound(
            partitions=len(metadata[resource.name].partitions),
            cleanup_policy=str(entries["cleanup.policy"].value),
            retention_ms=int(retention.value) if retention is not None else None,
        )
    return found
