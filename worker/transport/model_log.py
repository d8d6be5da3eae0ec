"""The model topic as a :class:`~worker.sync.model_sync.ModelLog`.

One partition (partition 0 is written and read whatever the topic has), so every worker
applies the deltas in the same order; each worker reads it whole through its own
assigned consumer, outside the consumer group, as it reads the catalog.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.config import Settings
from worker.sync.model_sync import LogRecord
from worker.transport.delivery import DeliveryFailed, NotYetAcknowledged
from worker.transport.kafka import (
    make_admin,
    make_model_consumer,
    make_model_producer,
    model_topic_spec,
)

__all__ = ["KafkaModelLog"]

log = logging.getLogger("tailor.sync")

_PARTITION = 0
#: Answers of a broker whose new topic has no leader yet (retried, not fatal).
_NOT_READY = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


class KafkaModelLog:
    def __init__(self, settings: Settings) -> None:
        self.topic = settings.model_topic
        self.settings = settings
        self.producer = make_model_producer(settings)
        self.consumer = make_model_consumer(settings)
        self._failures: list[str] = []
        self._partition = TopicPartition(self.topic, _PARTITION)

    def prepare(self, timeout_s: float = 30.0) -> None:
        """Create the topic (one partition) when it is missing, rather than let broker
        auto-creation give it the default partition count."""
        admin = make_admin(self.settings)
        if self.topic in admin.list_topics(timeout=timeout_s).topics:
            return
        future = admin.create_topics([model_topic_spec(self.settings)])[self.topic]
        try:
            future.result(timeout=timeout_s)
            log.info("created model topic %s (1 partition)", self.topic)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                log.warning(
                    "model topic %s not created (%s); only partition 0 is used", self.topic, error
                )
        except TimeoutError:
            log.warning("model topic %s not created in time; only partition 0 is used", self.topic)

    def append(self, data: bytes, origin: str) -> None:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                self._failures.append(str(error))

        while True:
            try:
                self.producer.produce(
                    self.topic,
                    value=data,
                    key=origin.encode(),
                    partition=_PARTITION,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                self.producer.poll(0.05)

    def flush(self, timeout_s: float) -> None:
        remaining = self.producer.flush(timeout_s)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(f"model delta not delivered: {failures[0]}")
        if remaining:
            raise NotYetAcknowledged(f"model delta not acknowledged within {timeout_s:g} s")

    def seek(self, position: int) -> None:
        self.consumer.assign([TopicPartition(self.topic, _PARTITION, position)])

    def read(self, limit: int, timeout_s: float) -> list[LogRecord]:
        records = []
        for message in self.consumer.consume(limit, timeout_s):
            error = message.error()
            if error is not None:
                log.warning("model topic: %s", error)
                continue
            offset, value, key = message.offset(), message.value(), message.key()
            if offset is None or value is None:
                continue
            _, stamp = message.timestamp()
            origin = key.decode("utf-8", "replace") if key else ""
            records.append(LogRecord(offset, value, stamp / 1000.0, origin))
        return records

    def bounds(self, timeout_s: float = 30.0) -> tuple[int, int]:
        """The partition's watermarks. A topic created a moment ago (by :meth:`prepare`, or
        by ``tailor topics create`` just before the worker starts) may have no leader yet,
        which the broker answers with a retriable error: asked again until ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                low, high = self.consumer.get_watermark_offsets(self._partition, timeout=10)
                return int(low), int(high)
            except KafkaException as error:
                reason = error.args[0]
                not_ready = reason.retriable() or reason.code() in _NOT_READY
                if not not_ready or time.monotonic() > deadline:
                    raise
                log.info("model topic %s not served yet (%s): asking again", self.topic, reason)
                time.sleep(0.25)

    def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()
