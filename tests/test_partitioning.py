"""Kafka's partitioner and range assignor in Python: Kafka's own vectors, librdkafka, examples."""

from __future__ import annotations

import random

import pytest
from confluent_kafka import KafkaError, Message, Producer

from worker.evaluate.partitioning import (
    kafka_partition,
    murmur2,
    range_assignment,
    user_partition,
    worker_of_partition,
)

# org.apache.kafka.common.utils.UtilsTest#testMurmur2, as Java signed ints.
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS)
def test_murmur2_matches_kafkas_test_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS)
def test_partition_masks_the_sign_bit_rather_than_taking_abs(key: bytes, expected: int) -> None:
    assert kafka_partition(key, 2**31) == expected & 0x7FFFFFFF  # toPositive, untouched by %
    assert kafka_partition(key, 12) == (expected & 0x7FFFFFFF) % 12


def test_user_partition_hashes_the_utf8_bytes() -> None:
    for user in ("u-1", "josé", "用户42", "🙂"):
        assert user_partition(user, 7) == kafka_partition(user.encode("utf-8"), 7)


def test_partitions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="partitions"):
        kafka_partition(b"k", 0)


def test_librdkafka_puts_each_key_where_kafka_partition_says() -> None:
    """Produce keyed messages on librdkafka's in-process mock cluster and compare partitions.

    The mock broker has no CreateTopics (and names a controller that is not one of its
    brokers), so the AdminClient cannot make the topic; a metadata request auto-creates it
    with the mock's default partition count (4) instead. Kafka's vectors above check every
    bit of the hash; this checks that librdkafka agrees on keys of every tail length.
    """
    producer = Producer({"test.mock.num.brokers": 1, "partitioner": "murmur2_random"})
    partitions = len(producer.list_topics("keyed", timeout=10).topics["keyed"].partitions)
    assert partitions > 1

    rng = random.Random(20240611)
    keys = [rng.randbytes(rng.randint(1, 40)) for _ in range(200)]
    keys += [f"user-{rng.randrange(10**6)}-é".encode() for _ in range(50)]
    delivered: dict[bytes, int] = {}

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        key, partition = msg.key(), msg.partition()
        assert err is None, err
        assert isinstance(key, bytes), key
        assert partition is not None
        delivered[key] = partition

    for key in keys:
        producer.produce("keyed", key=key, value=b"x", on_delivery=on_delivery)
    assert producer.flush(10) == 0

    assert len(delivered) == len(set(keys))
    assert {key: kafka_partition(key, partitions) for key in delivered} == delivered
    assert len(set(delivered.values())) == partitions  # every partition got some keys


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        (1, [[0, 1, 2, 3, 4, 5]]),
        (3, [[0, 1], [2, 3], [4, 5]]),
        (4, [[0, 1], [2, 3], [4], [5]]),
        (6, [[0], [1], [2], [3], [4], [5]]),
        (8, [[0], [1], [2], [3], [4], [5], [], []]),
    ],
)
def test_range_assignment_of_six_partitions(workers: int, expected: list[list[int]]) -> None:
    assert range_assignment(6, workers) == expected
    owner = worker_of_partition(6, workers)
    assert owner == [w for w, owned in enumerate(expected) for _ in owned]


@pytest.mark.parametrize(("partitions", "workers"), [(0, 1), (6, 0)])
def test_range_assignment_needs_a_partition_and_a_worker(partitions: int, workers: int) -> None:
    with pytest.raises(ValueError, match="need partitions"):
        range_assignment(partitions, workers)
