"""An experiment on a real ``tailor run`` process, the real Kafka broker and Redis.

Why: what the unit tests check of the core must hold where users meet it: every list on
the recommendations topic carries the variant its user is assigned (the same hash the
evaluation uses), each variant's lists follow its own settings, and a shadow variant is
kept in Redis to be scored but never reaches the topic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message

from tests.helpers import TopicReader, body_of, event, produce, produce_events, tailor_process
from worker.config import CONTROL_VARIANT, Settings
from worker.contract import Recommendation
from worker.recommend.variants import Variants
from worker.state.store import UserStore, connect_redis

pytestmark = pytest.mark.integration

CATEGORIES = ("garden", "kitchen", "toys")
USERS = [f"shopper-{n}" for n in range(24)]


def _catalog(settings: Settings) -> None:
    items: list[dict[str, Any]] = [
        {"item_id": f"{c}-{n}", "title": f"{c} thing {n}", "category": ["shop", c], "tags": [c]}
        for c in CATEGORIES
        for n in range(30)
    ]
    produce(
        settings,
        settings.catalog_topic,
        [(i["item_id"].encode(), orjson.dumps(i)) for i in items],
    )


def test_published_lists_carry_the_assigned_variant_and_shadows_stay_unpublished(
    settings: Settings, tmp_path: Path
) -> None:
    experiment = settings.with_overrides(
        top_k=10,
        variants={
            "short": {"share": 0.5, "settings": {"top_k": 5}},
            "wide": {"share": 1.0, "shadow": True, "settings": {"top_k": 7}},
        },
    )
    variants = Variants(experiment)
    assigned = {user: variants.assign(user) for user in USERS}
    assert set(assigned.values()) == {"short", CONTROL_VARIANT}  # both sides are exercised
    _catalog(experiment)
    events = []
    for n, user in enumerate(USERS):
        category = CATEGORIES[n % len(CATEGORIES)]
        events += [event(user, f"{category}-{(n + k) % 30}") for k in range(3)]
    last = {e["user_id"]: e["event_id"] for e in events}
    reader = TopicReader(experiment, experiment.recommendations_topic)
    try:
        with tailor_process(experiment, tmp_path / "worker.log"):
            produce_events(experiment, events)

            def all_covered(messages: list[Message]) -> bool:
                covered = {e for m in messages for e in body_of(m).get("covered_event_ids", [])}
                return set(last.values()) <= covered

            reader.wait_for(all_covered, timeout_s=90)
        bodies = reader.bodies()
    finally:
        reader.close()

    assert {body["user_id"] for body in bodies} == set(USERS)
    for body in bodies:
        message = Recommendation.model_validate(body)
        assert message.variant == assigned[message.user_id], body
        assert len(message.items) == (5 if message.variant == "short" else 10), body
    assert "wide" not in {body["variant"] for body in bodies}

    client = connect_redis(experiment)
    try:
        states = UserStore(client, experiment).read(USERS)
    finally:
        client.close()
    for user in USERS:
        state = states[user]
        assert state is not None
        assert state.shadow_lists is not None
        assert list(state.shadow_lists) == ["wide"]
        assert len(state.shadow_lists["wide"]) == 7
        published = [b for b in bodies if b["user_id"] == user][-1]
        assert state.last_list == [item["item_id"] for item in published["items"]]
