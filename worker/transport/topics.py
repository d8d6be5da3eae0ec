"""Tailor's topics as the settings describe them, and how a topic on a broker differs.

What the worker relies on is written down once, here: the events and recommendations
topics have ``TAILOR_TOPIC_PARTITIONS`` partitions (the unit of parallelism), the catalog
is compacted (every worker reads it whole, and an item must outlive any retention), the
model topic has one partition (one order of deltas for every worker) and is never
compacted (its key is the writer, so compaction would drop deltas). ``tailor topics
create`` makes topics from these specs, and ``--check`` compares the broker's against
them. No Kafka client here: :mod:`worker.transport.kafka`, the one factory, does the admin
calls, so these rules are testable without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.config import Settings

__all__ = [
    "COMPACT",
    "DELETE",
    "MODEL_RETENTION_MS",
    "TopicFound",
    "TopicSpec",
    "differences",
    "model_topic",
    "topic_specs",
]

DELETE = "delete"
COMPACT = "compact"

#: Model deltas are kept for a week (Kafka's default), far longer than the interval
#: between checkpoints that a starting worker catches up from.
MODEL_RETENTION_MS = 7 * 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as ``tailor topics create`` makes it."""

    name: str
    partitions: int
    cleanup_policy: str
    retention_ms: int | None  # None: compacted, kept for ever
    #: False where any count works (the catalog and dead letters are read whole or by
    #: people), so ``--check`` does not hold a topic made elsewhere to our count.
    partitions_matter: bool
    replication: int | None  # None: the broker's default.replication.factor

    def config(self) -> dict[str, str]:
        """The topic-level settings given at creation."""
        config = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config

    def describe(self) -> str:
        """What creation makes, in the words ``tailor topics`` prints."""
        return _summary(self.partitions, self.cleanup_policy, self.retention_ms)


@dataclass(frozen=True, slots=True)
class TopicFound:
    """A topic as the broker has it."""

    partitions: int
    cleanup_policy: str  # as the broker reports it, e.g. "compact,delete"
    retention_ms: int | None  # -1: kept for ever

    def describe(self) -> str:
        """What the broker has, in the words ``tailor topics`` prints."""
        return _summary(self.partitions, self.cleanup_policy, self.retention_ms)


def model_topic(settings: Settings) -> TopicSpec:
    """The model topic: one partition, so every worker reads the deltas in one order."""
    return TopicSpec(
        settings.model_topic,
        1,
        DELETE,
        MODEL_RETENTION_MS,
        partitions_matter=True,
        replication=settings.topic_replication,
    )


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the settings, in the order data flows through them."""
    replication = settings.topic_replication
    retention_ms = settings.topic_retention_s * 1000
    return [
        TopicSpec(
            settings.events_topic,
            settings.topic_partitions,
            DELETE,
            retention_ms,
            partitions_matter=True,
            replication=replication,
        ),
        TopicSpec(
            settings.catalog_topic,
            1,
            COMPACT,
            None,
            partitions_matter=False,
            replication=replication,
        ),
        TopicSpec(
            settings.recommendations_topic,
            settings.topic_partitions,
            DELETE,
            retention_ms,
            partitions_matter=True,
            replication=replication,
        ),
        TopicSpec(
            settings.dlq_topic,
            1,
            DELETE,
            settings.dlq_retention_s * 1000,
            partitions_matter=False,
            replication=replication,
        ),
        model_topic(settings),
    ]


def differences(spec: TopicSpec, found: TopicFound | None) -> list[str]:
    """What is wrong with the broker's topic for the worker; empty when nothing is.

    Partitions and the cleanup policy are what the worker depends on. Retention and
    replication are the operator's to tune after creation, so they are not held to the
    settings.
    """
    if found is None:
        return ["missing"]
    problems = []
    if spec.partitions_matter and found.partitions != spec.partitions:
        problems.append(f"{_partitions(found.partitions)}, the settings say {spec.partitions}")
    policies = {policy.strip() for policy in found.cleanup_policy.split(",")}
    if policies != {spec.cleanup_policy}:
        problems.append(
            f"cleanup.policy={found.cleanup_policy}, Tailor needs {spec.cleanup_policy}"
        )
    return problems


def _summary(partitions: int, cleanup_policy: str, retention_ms: int | None) -> str:
    parts = [_partitions(partitions), f"cleanup.policy={cleanup_policy}"]
    if retention_ms is not None and DELETE in cleanup_policy:  # compaction alone keeps all
        parts.append(f"retention {_duration(retention_ms)}")
    return ", ".join(parts)


def _partitions(count: int) -> str:
    return f"{count} partition{'s' if count != 1 else ''}"


def _duration(ms: int) -> str:
    """``604800000`` -> ``7 d``; hours or seconds when days would not be whole."""
    if ms < 0:
        return "unlimited"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"
