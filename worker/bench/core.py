"""``tailor bench core``: the recommender core alone, no Kafka, no Redis.

It is fed batch by batch, keeping user states in a dict the way the worker keeps them in
Redis: what the core costs per event and per batch, without any I/O.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt
from rich.console import Console

from worker.bench.common import Json, chunks, percentiles, progress_bar, warmup_count, warn_unfilled
from worker.bench.report import machine_info, now_iso
from worker.bench.synthetic import CORE_START_S, Clickstream, Workload
from worker.config import Settings
from worker.contract import CatalogItem, Event
from worker.loop import freeze_startup_objects
from worker.recommend import Envelope, Recommender
from worker.state.user import UserState

__all__ = ["CoreOptions", "run_core"]


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CoreOptions:
    workload: Workload = field(default_factory=Workload)
    events: int = 50_000
    batch_size: int = 500
    warmup: float = 0.2  # share of the events processed first and not timed
    progress: bool = True
    fill_timeout_s: float = 600.0  # longest wait for the text neighbours' background fill


def run_core(settings: Settings, options: CoreOptions, console: Console) -> Json:
    """The recommender core alone: ``Recommender.process`` over the synthetic stream."""
    stream = Clickstream(options.workload)
    recommender = Recommender(settings)
    warmup = warmup_count(options.events, options.warmup)
    batch_ms: list[float] = []
    distinct_users: list[int] = []
    lists = 0
    states: dict[str, UserState] = {}
    with progress_bar(console, options.progress) as progress:
        task = progress.add_task("catalog", total=options.workload.items)
        started = time.perf_counter()
        chunk: list[tuple[str, CatalogItem | None]] = []
        for count, body in enumerate(stream.catalog(), 1):
            chunk.append((body["item_id"], CatalogItem.model_validate(body)))
            if count % 5000 == 0:  # as the worker applies what one catalog poll brings
                recommender.apply_catalog_many(chunk)
                chunk = []
                progress.update(task, completed=count)
        recommender.apply_catalog_many(chunk)
        catalog_s = time.perf_counter() - started
        progress.update(task, completed=options.workload.items)

        bodies = stream.events(options.events, start_s=CORE_START_S, id_prefix="e-")
        envelopes = [
            Envelope(Event.model_validate(body), 0, offset) for offset, body in enumerate(bodies)
        ]
        freeze_startup_objects()  # as the worker does once its catalog is loaded
        task = progress.add_task("warm-up", total=warmup)
        for batch in chunks(envelopes[:warmup], options.batch_size):
            _process(recommender, batch, states)
            progress.advance(task, len(batch))
        # Timed in the steady state: the text neighbours of every item filled in (the
        # worker's background fill after a catalog rebuild, reported on its own).
        if not recommender.content.wait_filled(options.fill_timeout_s):
            warn_unfilled(console, recommender.content.pending(), options.fill_timeout_s)
        task = progress.add_task("measured", total=options.events - warmup)
        for batch in chunks(envelopes[warmup:], options.batch_size):
            seconds, published, users = _process(recommender, batch, states)
            batch_ms.append(seconds * 1000)
            lists += published
            distinct_users.append(users)
            progress.advance(task, len(batch))
    measured = options.events - warmup
    seconds = sum(batch_ms) / 1000
    return {
        "bench": "core",
        "when": now_iso(),
        "options": {
            **asdict(options.workload),
            "events": options.events,
            "batch_size": options.batch_size,
            "warmup": options.warmup,
        },
        "catalog_items": recommender.catalog.size,
        "catalog_load_s": catalog_s,
        "content_fill_s": recommender.content.fill_s,
        "content_pending": recommender.content.pending(),
        "warmup_events": warmup,
        "events": measured,
        "batches": len(batch_ms),
        "lists": lists,
        "users_seen": len(states),
        "distinct_users_per_batch": float(np.mean(distinct_users)) if distinct_users else 0.0,
        "seconds": seconds,
        "events_per_s": measured / seconds if seconds > 0 else 0.0,
        "lists_per_s": lists / seconds if seconds > 0 else 0.0,
        "batch_ms": percentiles(batch_ms),
        "machine": machine_info(),
    }


def _process(
    recommender: Recommender, batch: Sequence[Envelope], states: dict[str, UserState]
) -> tuple[float, int, int]:
    """One micro-batch as the worker runs it, minus I/O: seconds, lists and distinct users."""
    users = dict.fromkeys(envelope.event.user_id for envelope in batch)
    read = {user: states.get(user) for user in users}  # what the Redis read would return
    started = time.perf_counter()
    result = recommender.process(batch, read)
    seconds = time.perf_counter() - started
    for write in result.writes:
        states[write.state.user_id] = write.state
    return seconds, len(result.published), len(users)
