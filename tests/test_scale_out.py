"""Scale-out on the real servers: three ``tailor run`` processes share six partitions, one is
SIGKILLed mid-stream, a fourth joins later, and every event is applied exactly once.

Why processes: a SIGKILL must be a real crash (no flush, no commit, no LeaveGroup), and
a joining worker must be a separate member that the group rebalances to. The chaos suite
(``make chaos``) kills and restarts workers in a slot and grows a group one worker at a
time; this test is the operator's scale-out path in one run: a fleet of three losing a
member for good (the survivors must take its partitions over after its session expires
and finish the stream), then a fourth added under load, which must take partitions
without a single event applied or published twice because of it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.chaos.driver import (
    Fleet,
    OutputReader,
    PacedProducer,
    applied_counts,
    make_stream,
    poll_until,
    scrape_metrics,
    wait_for_members,
)
from worker.config import Settings
from worker.state.store import UserStore
from worker.transport.kafka import create_topics

pytestmark = pytest.mark.integration

PARTITIONS = 6
EVENTS = 10_500
USERS = 300
#: Long enough that a fourth worker, started once the group has settled after the kill,
#: joins while events still come: starting takes 10-25 s on two busy cores.
SEND_S = 70.0
#: Workers checkpoint their models often, so the newcomer starts from a checkpoint
#: rather than from the whole model topic.
CHECKPOINT_INTERVAL_S = 5.0
SETTLE_S = 90.0  # three workers starting at once on two busy cores
CATCH_UP_S = 90.0


@pytest.fixture
def scale_settings(kafka_bootstrap: str, redis_url: str) -> Settings:
    settings = Settings(bootstrap_servers=kafka_bootstrap, redis_url=redis_url).in_namespace(
        f"scale-{uuid.uuid4().hex[:8]}",
        metrics_host="127.0.0.1",
        metrics_port=0,
        top_k=5,
        model_checkpoint_interval_s=CHECKPOINT_INTERVAL_S,
    )
    create_topics(settings, partitions=PARTITIONS)
    return settings


@pytest.fixture
def fleet(scale_settings: Settings, tmp_path: Path) -> Iterator[Fleet]:
    """Worker processes in slots; whatever happens, none outlives the test."""
    workers = Fleet(scale_settings, tmp_path)
    try:
        yield workers
    finally:
        for worker in workers.workers.values():
            if worker.alive():
                worker.kill()


def test_three_workers_lose_one_and_gain_a_fourth_without_a_duplicate(
    scale_settings: Settings, fleet: Fleet, redis_url: str
) -> None:
    settings = scale_settings
    stream = make_stream(settings.group_id, EVENTS, USERS, malformed_share=0.01)
    reader = OutputReader(settings).start()
    client = redis.Redis.from_url(redis_url)
    store = UserStore(client, settings)
    users = list(stream.expected)
    try:

        def settle(slots: str) -> None:
            members = {fleet.client_id(slot) for slot in slots}
            wait_for_members(
                settings.bootstrap_servers, settings.group_id, members, PARTITIONS, SETTLE_S
            )
            fleet.check()

        for slot in "abc":
            fleet.start(slot)
        settle("abc")
        producer = PacedProducer(
            settings.bootstrap_servers, settings.events_topic, stream, SEND_S
        ).start()

        _until_sent(fleet, producer, 0.2)
        fleet.kill("b")  # for good: its partitions must move to a and c
        killed_at = producer.sent  # b never saw an event sent from here on
        settle("ac")

        newcomer = fleet.start("d")
        settle("acd")
        # A newcomer that joined after the last event would prove nothing about a join
        # under load: starting it (catalog, model topic) takes seconds on a busy machine.
        assert producer.progress() < 0.9, "d joined too late to take events: raise SEND_S"
        producer.join(120)

        def caught_up() -> bool:
            fleet.check()
            applied = applied_counts(client, store, users)
            return all(applied[u] >= stream.expected[u] for u in users) and (
                reader.unaccounted(stream, producer.coordinates) == 0
            )

        poll_until(caught_up, CATCH_UP_S, fleet.tails)
        assert newcomer.metrics_port is not None
        newcomer_metrics = scrape_metrics(newcomer.metrics_port)
        fleet.stop_all()
        fleet.check()
        reader.settle()

        applied = applied_counts(client, store, users)
        doubled = {u: applied[u] - n for u, n in stream.expected.items() if applied[u] > n}
        assert not doubled, f"{len(doubled)} users applied events twice: {list(doubled)[:5]}"
        assert reader.unaccounted(stream, producer.coordinates) == 0
        # The newcomer took partitions and events: a and c committed what they had done
        # when they gave partitions up, so it found nothing already applied.
        assert newcomer_metrics["tailor_events_processed_total"] > 0, newcomer_metrics
        assert newcomer_metrics["tailor_events_replayed_total"] == 0, newcomer_metrics
        assert "assigned " + settings.events_topic in newcomer.log_path.read_text()
        # The SIGKILL makes a and c replay what b had consumed but not committed
        # (published again, applied once). Events sent after it were never b's, so none
        # of them may be published twice: not by the takeover, not by d's join.
        twice = {event_id for event_id, count in reader.covered.items() if count > 1}
        late = [i for i in range(killed_at, EVENTS) if stream.event_ids[i] in twice]
        assert not late, f"{len(late)} events sent after the SIGKILL were published twice"
    finally:
        reader.close()
        client.close()


def _until_sent(fleet: Fleet, producer: PacedProducer, share: float) -> None:
    """Wait until ``share`` of the stream is sent, failing at once if a worker died."""
    while producer.progress() < share:
        fleet.check()
        time.sleep(0.1)
