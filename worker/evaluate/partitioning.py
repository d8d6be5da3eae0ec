"""Which Kafka worker sees which user: the partitioner and the range assignor, in Python.

The harness replays a log "as N workers would see it". That split is only faithful if it is
the split a real deployment makes, so both steps copy Kafka bit for bit rather than
approximating it with Python's ``hash``: the producer's key partitioner (Java's
``DefaultPartitioner``, librdkafka's ``murmur2``/``murmur2_random``) and the consumer
group's ``RangeAssignor`` for one topic.
"""

from __future__ import annotations

import struct

__all__ = [
    "kafka_partition",
    "murmur2",
    "range_assignment",
    "user_partition",
    "worker_of_partition",
]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF  # Java ints wrap at 32 bits; Python ints do not, so every product is masked


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``, returned as Java's signed int so Kafka's test vectors apply."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    body = length & ~3
    for (block,) in struct.iter_unpack("<I", data[:body]):
        k = (block * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    if tail := data[body:]:  # Java's fall-through switch: XOR in 1-3 bytes, then one multiply
        h = ((h ^ int.from_bytes(tail, "little")) * _M) & _MASK
    h ^= h >> 13  # h is unsigned here, so >> is Java's >>>
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null ``key``.

    ``toPositive`` masks the sign bit rather than taking ``abs``, so keys whose hash is
    negative land where Kafka puts them (and ``Integer.MIN_VALUE`` cannot stay negative).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def user_partition(user_id: str, partitions: int) -> int:
    """The partition of a user's events: producers key them by the UTF-8 bytes of the user id."""
    return kafka_partition(user_id.encode("utf-8"), partitions)


def range_assignment(partitions: int, workers: int) -> list[list[int]]:
    """Kafka's ``RangeAssignor`` for one topic: worker ``i`` is the i-th member id in sort order.

    Contiguous runs of ``partitions // workers``; the first ``partitions % workers`` workers
    take one more, and workers beyond the partition count sit idle with ``[]``.
    """
    if partitions < 1 or workers < 1:
        raise ValueError(f"need partitions >= 1 and workers >= 1, got {partitions}, {workers}")
    per, extra = divmod(partitions, workers)
    starts = [per * i + min(i, extra) for i in range(workers + 1)]
    return [list(range(starts[i], starts[i + 1])) for i in range(workers)]


def worker_of_partition(partitions: int, workers: int) -> list[int]:
    """Index ``p`` gives the worker that owns partition ``p`` under :func:`range_assignment`."""
    owner = [0] * partitions
    for worker, owned in enumerate(range_assignment(partitions, workers)):
        for partition in owned:
            owner[partition] = worker
    return owner
