"""The peer of ``tailor bench``: Tailor's job written the way a Python team would write it.

A Quix Streams application that handles one message at a time, as its documentation
shows: for each event it reads the user's state from Redis (one GET), learns (the
previous list's feedback into a River logistic regression, the event into in-memory
co-visitation and popularity counts), gathers candidates (co-visited with the user's
last items, plus the most popular items), scores them one by one with the River model,
writes the state back (one SET with a TTL) and returns the top K in the shape of Tailor's
``Recommendation``, which Quix Streams produces to the output topic (key = user id).

It is a fair, plainly written app, not tuned against itself and not a strawman: the
popular list is refreshed every ``POPULAR_EVERY`` events rather than sorted per message,
the candidates are as many as Tailor's at its defaults (20 co-visited items for each of
the user's last three, the 100 most popular), the ranker learns from a chosen item and
two passed over as Tailor's does, unavailable items are filtered (the catalog topic is
read once at start). What it does not do beside Tailor:
no taste vectors, content neighbours, trending decay, segments, sessions, diversity,
exploration, exactly-once state, shared models across processes, DLQ or metrics.

This file is its own project (``pyproject.toml`` beside it): quixstreams 3.x pins
confluent-kafka and pydantic below the versions the worker needs, so it runs in its own
virtual environment and never imports ``worker``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application
from river import linear_model, optim, preprocessing

TOP_K = 20
RECENT = 10  # items kept per user
NEIGHBOURS = 20  # co-visited items taken per recent item (Tailor: covis_candidates 20)
POPULAR = 100  # popular items always among the candidates (Tailor: trending_pool 100)
PASSED_OVER = 2  # skipped items learnt as negatives per event (Tailor: 2 per chosen item)
POPULAR_EVERY = 1000  # events between two refreshes of the popular list
STATE_TTL_S = 30 * 24 * 3600
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0, "like": 3.0}


class PeerRecommender:
    """In-memory co-visitation and popularity, a River ranker, user state in Redis."""

    def __init__(self, client: redis.Redis, prefix: str, catalog: dict[str, tuple[bool, str]]):
        self.redis = client
        self.prefix = prefix
        self.catalog = catalog  # item -> (available, leaf category)
        self.covis: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.popularity: Counter[str] = Counter()
        self.popular: list[str] = []
        self.seen = 0
        self.model = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(0.05)
        )

    def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        user, item = event.get("user_id"), event.get("item_id")
        key = f"{self.prefix}:u:{user}"
        if event.get("type") == "forget":
            self.redis.delete(key)
            return None
        raw = self.redis.get(key)
        state = orjson.loads(raw) if raw else {"recent": [], "shown": [], "events": 0}
        if not item:
            return None
        recent: list[str] = state["recent"]
        for shown, chosen in feedback(state["shown"], item):  # on the previous list
            self.model.learn_one(self.features(shown, recent, item), chosen)
        weight = WEIGHTS.get(event.get("type", "view"), 1.0)
        self.popularity[item] += weight
        for earlier in recent[-3:]:
            if earlier != item:
                self.covis[earlier][item] += 1
                self.covis[item][earlier] += 1
        self.seen += 1
        if self.seen % POPULAR_EVERY == 1:
            self.popular = [name for name, _ in self.popularity.most_common(POPULAR)]
        recent = [*(r for r in recent if r != item), item][-RECENT:]
        scored = []
        for candidate in self.candidates(recent):
            score = self.model.predict_proba_one(self.features(candidate, recent, item))[True]
            scored.append((score, candidate))
        scored.sort(reverse=True)
        top = scored[:TOP_K]
        state.update(recent=recent, shown=[c for _, c in top], events=state["events"] + 1)
        self.redis.set(key, orjson.dumps(state), ex=STATE_TTL_S)
        return {
            "schema_version": 1,
            "user_id": user,
            "items": [
                {"item_id": c, "score": round(s, 6), "reasons": [self.reason(c, recent)]}
                for s, c in top
            ],
            "source_event_id": event["event_id"],
            "covered_event_ids": [event["event_id"]],
            "generated_at": datetime.now(UTC).isoformat(),
            "model_version": "peer-quixstreams-river",
        }

    def candidates(self, recent: list[str]) -> list[str]:
        found: dict[str, None] = {}
        for earlier in recent[-3:]:
            for neighbour, _ in self.covis[earlier].most_common(NEIGHBOURS):
                found[neighbour] = None
        for name in self.popular:
            found[name] = None
        return [c for c in found if c not in recent and self.catalog.get(c, (True, ""))[0]]

    def features(self, candidate: str, recent: list[str], current: str) -> dict[str, float]:
        covis = sum(self.covis[earlier].get(candidate, 0) for earlier in recent[-3:])
        category = self.catalog.get(candidate, (True, ""))[1]
        return {
            "covis": math.log1p(covis),
            "popularity": math.log1p(self.popularity.get(candidate, 0.0)),
            "same_category": float(bool(category) and category == self.category(current)),
            "history": math.log1p(len(recent)),
        }

    def category(self, item: str) -> str:
        return self.catalog.get(item, (True, ""))[1]

    def reason(self, candidate: str, recent: list[str]) -> str:
        for earlier in reversed(recent):
            if self.covis[earlier].get(candidate):
                return f"viewed together with {earlier}"
        return "popular now"


def feedback(shown: list[str], item: str) -> list[tuple[str, bool]]:
    """What the previous list teaches: the chosen item, and the items shown above it.

    As Tailor's ranker learns: a chosen item is a positive, ``PASSED_OVER`` items the
    user passed over are negatives (the top of the list when nothing on it was chosen).
    """
    if item in shown:
        above = shown[: shown.index(item)][:PASSED_OVER]
        return [(item, True), *((other, False) for other in above)]
    return [(other, False) for other in shown[:PASSED_OVER]]


def read_catalog(bootstrap: str, topic: str, group: str) -> dict[str, tuple[bool, str]]:
    """The catalog topic read once to its end: availability and leaf category per item."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    catalog: dict[str, tuple[bool, str]] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or not metadata.partitions:
            return catalog
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        while ends:
            for message in consumer.consume(1000, 1.0):
                if message.error() is not None:
                    continue
                value = message.value()
                key = (message.key() or b"").decode()
                if value is None:
                    catalog.pop(key, None)
                else:
                    body = orjson.loads(value)
                    path = body.get("category") or [""]
                    catalog[key] = (bool(body.get("available", True)), str(path[-1]))
                if message.offset() + 1 >= ends.get(message.partition(), 0):
                    ends.pop(message.partition(), None)
    finally:
        consumer.close()
    return catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--events-topic", required=True)
    parser.add_argument("--lists-topic", required=True)
    parser.add_argument("--catalog-topic")
    parser.add_argument("--group", required=True)
    parser.add_argument("--key-prefix", required=True)
    args = parser.parse_args()

    started = time.monotonic()
    catalog = (
        read_catalog(args.bootstrap, args.catalog_topic, f"{args.group}.catalog")
        if args.catalog_topic
        else {}
    )
    loaded_s = time.monotonic() - started
    print(f"peer: catalog of {len(catalog)} items in {loaded_s:.1f} s", flush=True)
    recommender = PeerRecommender(redis.Redis.from_url(args.redis_url), args.key_prefix, catalog)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        auto_create_topics=False,
    )
    events = app.topic(args.events_topic, key_deserializer="str", value_deserializer="json")
    lists = app.topic(args.lists_topic, key_serializer="str", value_serializer="json")
    frame = app.dataframe(events)
    frame = frame.apply(recommender.handle).filter(lambda value: value is not None)
    frame.to_topic(lists)
    print("peer: consuming", flush=True)
    app.run()


if __name__ == "__main__":
    main()
