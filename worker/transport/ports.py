"""The worker's Kafka-facing collaborators as small interfaces.

The loop (:mod:`worker.loop`) reads events from an :class:`EventSource`, writes lists and
dead letters to :class:`OutputSink` s and reads the catalog from a :class:`CatalogFeed`.
In ``tailor run`` the first two are confluent-kafka's own ``Consumer`` and ``Producer``
(they satisfy these protocols as they are, so the hot path pays no wrapper per message)
and the catalog is :class:`~worker.transport.kafka.KafkaCatalogFeed`. The loop's unit
tests hand in the in-memory ones of :mod:`worker.testing` and run the same loop without
servers, as bytewax's ``testing`` sources and sinks do.

Only what the loop uses is declared: the subset of confluent-kafka's API whose
semantics the in-memory versions reproduce (delivery reports served by ``poll`` and
``flush``, offsets stored then committed, assignment callbacks on rebalance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from confluent_kafka import KafkaError, TopicPartition

__all__ = [
    "CatalogFeed",
    "DeliveryCallback",
    "EventSource",
    "Incoming",
    "OutputSink",
    "TopicIds",
]


class Incoming(Protocol):
    """A consumed message: what the loop reads of confluent-kafka's ``Message``."""

    def error(self) -> KafkaError | None: ...

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...

    def timestamp(self) -> tuple[int, int]: ...

    def headers(self) -> Any: ...


DeliveryCallback = Callable[[KafkaError | None, Any], None]
RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


class EventSource(Protocol):
    """The events topic, consumed in a group: a subset of ``confluent_kafka.Consumer``."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback = ...,
        on_revoke: RebalanceCallback = ...,
        on_lost: RebalanceCallback = ...,
    ) -> None: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> Sequence[Incoming]: ...

    def poll(self, timeout: float = ...) -> Incoming | None: ...

    def assignment(self) -> list[TopicPartition]: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition) -> None: ...

    def store_offsets(
        self, message: Any = ..., offsets: list[TopicPartition] | None = ...
    ) -> None: ...

    def commit(self, *, asynchronous: Literal[False]) -> Any:
        """Commit the stored offsets now (the loop commits synchronously, on revoke and at
        the end; librdkafka commits stored offsets in the background otherwise)."""
        ...

    def close(self) -> None: ...


class OutputSink(Protocol):
    """Where lists and dead letters go: a subset of ``confluent_kafka.Producer``.

    ``on_delivery`` is called from ``poll`` or ``flush`` once the output is durable (or
    has failed); the loop stores a batch's offsets only when all its outputs are.
    """

    def produce(
        self,
        topic: str,
        value: str | bytes | None = ...,
        key: str | bytes | None = ...,
        *,
        headers: list[tuple[str, str | bytes | None]] | None = ...,
        on_delivery: DeliveryCallback | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class CatalogFeed(Protocol):
    """The compacted catalog topic, read whole by every worker."""

    def assign(self) -> int:
        """Start reading every partition from the beginning; returns how many there are."""
        ...

    def consume(self, limit: int, timeout_s: float) -> Sequence[Incoming]: ...

    def caught_up(self) -> bool:
        """Whether everything the topic held when asked has been read."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TopicIds(Protocol):
    """Who tells a topic's id (Kafka's topic UUID): offsets mean something only within
    one topic id, so the worker tags each batch with the events topic's."""

    def topic_id(self, topic: str) -> str:
        """The topic's id, or "" when it cannot be learned now (treated as unchanged)."""
        ...
