"""Play the bundled sample into Kafka once: the compose stack's one-shot producer.

Why a module of the package and not a script in ``deploy/``: the worker image already
holds the package and its sample, so the compose service runs
``python -m worker.sample.play`` from that image with nothing mounted, and the same
``TAILOR_*`` settings name the brokers and topics that the workers read.

The catalog goes first (titles and tags make the reasons readable), then the events in
time order, keyed by user id as a frontend would send them, at ``--rate`` events per
second so that a dashboard shows the stream arriving rather than one spike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from confluent_kafka import Producer

from worker.config import ConfigError, Settings, load_settings
from worker.sample import sample_catalog, sample_events
from worker.transport.kafka import make_producer

__all__ = ["Played", "main", "play"]


@dataclass(frozen=True, slots=True)
class Played:
    """What went out, for the exit line and for tests."""

    catalog: int
    events: int
    seconds: float


def play(settings: Settings, rate: float, limit: int | None = None) -> Played:
    """Produce the catalog, then ``limit`` events (all by default), ``rate`` per second.

    A rate of 0 sends as fast as the producer takes them. Raises ``RuntimeError`` when
    Kafka does not acknowledge everything within a minute of the last message, so the
    one-shot container exits non-zero instead of reporting a stream that never arrived.
    """
    started = time.monotonic()
    producer = make_producer(settings)
    catalog = sample_catalog()
    for line in catalog:
        producer.produce(settings.catalog_topic, key=orjson.loads(line)["item_id"], value=line)
        producer.poll(0)
    events = sample_events()[:limit]
    interval = 1.0 / rate if rate > 0 else 0.0
    for sent, line in enumerate(events):
        if interval:
            _wait_until(started + sent * interval, producer)
        producer.produce(settings.events_topic, key=orjson.loads(line)["user_id"], value=line)
        producer.poll(0)
    unacknowledged = producer.flush(60)
    if unacknowledged:
        raise RuntimeError(f"{unacknowledged} messages not acknowledged by Kafka")
    return Played(len(catalog), len(events), time.monotonic() - started)


def _wait_until(moment: float, producer: Producer) -> None:
    """Pace by the clock, serving delivery reports meanwhile (a sleep would not)."""
    while (left := moment - time.monotonic()) > 0:
        producer.poll(min(left, 0.1))


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.sample.play",
        description="Produce the bundled Online Retail sample (catalog, then events) to the "
        "topics the TAILOR_* settings name, once, and exit.",
    )
    parser.add_argument(
        "--rate",
        type=_non_negative,
        default=50.0,
        metavar="PER_S",
        help="events per second (default 50, about 100 s for the sample; 0 = unpaced)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="send only the first N events"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"play: {error}", file=sys.stderr)
        return 2
    try:
        played = play(settings, args.rate, args.limit)
    except (RuntimeError, BufferError) as error:
        print(f"play: {error}", file=sys.stderr)
        return 1
    print(
        f"play: {played.catalog} catalog items to {settings.catalog_topic}, "
        f"{played.events} events to {settings.events_topic} in {played.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
