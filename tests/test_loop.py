"""The worker loop in one process, without servers: sync between workers and restore.

The same :class:`~worker.loop.Worker` as ``tailor run``, on librdkafka's in-process mock
cluster, with the in-memory user store, model log and checkpoint store of
:mod:`worker.testing`. What the real-server tests show end to end
(``tests/test_shared_models.py``), this shows for the loop's own logic, fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import orjson
import pytest
from confluent_kafka import Producer

from tests.helpers import event, running_worker
from worker.config import Settings
from worker.demo import start_mock_cluster
from worker.loop import Worker
from worker.testing import MemoryCheckpoints, MemoryModelLog, MemoryStates

ITEMS = ("lamp", "shade", "bulb", "vase", "rug", "mug")


@pytest.fixture
def cluster() -> Iterator[tuple[Producer, Settings]]:
    owner, bootstrap = start_mock_cluster()
    settings = Settings(
        bootstrap_servers=bootstrap,
        model_checkpoint_interval_s=1,
        batch_wait_ms=20,
        metrics_port=0,
    ).in_namespace(f"loop{time.monotonic_ns() % 10**8}")
    for topic in (settings.events_topic, settings.catalog_topic, settings.recommendations_topic):
        owner.list_topics(topic, timeout=10)  # the mock cluster creates 4 partitions
    producer = Producer({"bootstrap.servers": bootstrap})
    for item in ITEMS:
        body = {"item_id": item, "title": f"the {item}", "category": ["home"]}
        producer.produce(settings.catalog_topic, key=item, value=orjson.dumps(body))
    producer.flush(10)
    yield producer, settings
    producer.flush(5)
    owner.flush(1)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def covisits(worker: Worker, item: str, other: str) -> bool:
    """Whether ``worker``'s co-visitation links ``item`` to ``other``."""
    rec = worker.recommender
    row, wanted = rec.index.lookup(item), rec.index.lookup(other)
    if row < 0 or wanted < 0 or row >= rec.covis.neighbour.shape[0]:
        return False
    return bool((rec.covis.neighbour[row] == wanted).any())


def send(producer: Producer, settings: Settings, partition: int, user: str, item: str) -> None:
    body = event(user, item)
    producer.produce(settings.events_topic, key=user, value=orjson.dumps(body), partition=partition)
    producer.flush(10)


def owned(worker: Worker) -> set[int]:
    return {p.partition for p in worker.consumer.assignment()}


def test_workers_learn_each_others_events_and_a_new_one_restores_them(
    cluster: tuple[Producer, Settings],
) -> None:
    producer, settings = cluster
    log, states = MemoryModelLog(), MemoryStates()
    checkpoints = MemoryCheckpoints(time.time, keep=2)

    def worker() -> AbstractContextManager[Worker]:
        return running_worker(
            settings, store=states, model_log=log.reader(time.time), checkpoints=checkpoints
        )

    with worker() as first, worker() as second:
        wait_until(lambda: len(owned(first)) == 2 and len(owned(second)) == 2, 60, "a rebalance")
        assert not covisits(second, "lamp", "shade")
        mine = sorted(owned(first))[0]
        for n in range(5):  # shoppers on the first worker's partition buy both
            send(producer, settings, mine, f"shopper{n}", "lamp")
            send(producer, settings, mine, f"shopper{n}", "shade")
        wait_until(lambda: covisits(first, "lamp", "shade"), 30, "the first worker to learn")
        wait_until(lambda: covisits(second, "lamp", "shade"), 10, "the second worker to learn")
        assert second.recommender.totals.events == first.recommender.totals.events == 10
        wait_until(lambda: len(checkpoints.saved) > 0, 10, "a checkpoint")

    # Both gone: a new worker starts from the checkpoint and the model log, not cold.
    with worker() as restarted:
        assert covisits(restarted, "lamp", "shade")
        assert restarted.sync is not None
        assert restarted.sync.restored_from is not None
        assert restarted.recommender.totals.events == 10  # nothing counted twice
