"""The prequential (test-then-train) loop, and Tailor's own core as one of its models.

Every model sees the same micro-batches in the same order and is scored by the same
code: for each event, if its user already has a list from that model, a hit is counted
when the event's item is in the top K; then the model learns from the batch and refreshes
the lists of the batch's users. A batch never holds two events of one user, so every event
is tested against the list made right after the user's previous event, which is what the
worker publishes after every interaction.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.config import Settings
from worker.contract import CatalogItem, Event, EventType
from worker.evaluate.partitioning import user_partition, worker_of_partition
from worker.recommend.core import Envelope, Recommender
from worker.recommend.signals import event_weight
from worker.state.store import StateStore
from worker.sync.model_sync import ModelSync
from worker.testing import MemoryCheckpoints, MemoryModelLog, MemoryStates

__all__ = [
    "SPLITS",
    "Model",
    "ModelScore",
    "SplitCount",
    "TailorModel",
    "VariantView",
    "history_split",
    "micro_batches",
    "replay",
    "replay_in_processes",
]

#: Points on each model's HR curve (what ``--plot`` draws).
CURVE_POINTS = 100
#: An event is "cold" when its user had fewer earlier events than this: what a new
#: customer sees, where trending and segments have to stand in for a missing history.
COLD_EVENTS = 5
#: Users with more earlier events than this have a long history ("more"); between
#: COLD_EVENTS and this, a short one ("5-50").
LONG_HISTORY = 50
#: The splits of the scored events, each with HR and MRR at the largest K. By the user's
#: earlier events (all types, since their last ``forget``): "first" (< COLD_EVENTS, the
#: cold@K figure), "5-50", "more" (> LONG_HISTORY). By the item: "seen" when an earlier
#: event of the user (any type, since their last ``forget``) was on the same item, else
#: "new". A recommender that only re-lists what a user had shines on "seen" and not on
#: "new", one that finds neighbours the other way round: the overall figure hides which.
SPLITS = ("first", "5-50", "more", "seen", "new")


class Model(Protocol):
    """What the harness needs of a recommender: learn from a batch, then list for users."""

    name: str

    def learn(self, events: Sequence[Event]) -> None: ...

    def recommend(self, events: Sequence[Event], k: int) -> Sequence[list[str] | None]:
        """Each event's user's list; None where this model makes none for the user (a
        variant's view of a user of another variant): their events are not scored."""
        ...


class TailorModel:
    """The worker's :class:`Recommender`, fed exactly as ``tailor run`` feeds it.

    Events become envelopes with increasing offsets, states are read before and written
    after each batch, and the lists are the ones that would be published: no second copy
    of the recommender logic lives here.

    With ``workers`` > 1 the log is replayed as a consumer group would see it: each user
    hashed to one of ``partitions`` partitions by Kafka's default partitioner, partitions
    given to workers by the range assignor, each worker with its own models, all sharing
    one user store (Redis) and, unless ``sync`` is off, one model log read ``sync_lag_s``
    (event time) behind, as ``tailor run`` does over the model topic. With
    ``restart_every_s`` every worker drops its models at each such step of event time and
    restores them from the checkpoint written (by whichever worker held the lease) one
    checkpoint interval before, then catches up from the log.
    """

    def __init__(
        self,
        settings: Settings,
        catalog: Mapping[str, CatalogItem],
        store: StateStore | None = None,
        name: str = "tailor",
        *,
        workers: int = 1,
        partitions: int = 6,
        restart_every_s: float | None = None,
        sync: bool | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.catalog = dict(catalog)
        self.store: StateStore = store if store is not None else MemoryStates()
        self.partitions = max(partitions, 1) if workers > 1 else 1
        self.owner = worker_of_partition(self.partitions, workers)
        self.restart_every_s = restart_every_s
        self.sync = settings.model_sync if sync is None else sync
        self.now = 0.0  # event time of the latest batch: the harness's clock
        self.log = MemoryModelLog()
        self.checkpoints = MemoryCheckpoints(lambda: self.now, settings.model_checkpoints_kept)
        shared = self.sync and (workers > 1 or restart_every_s is not None)
        self.shared = shared
        self.restarts = 0
        self.workers = [self._start_worker(n) for n in range(max(workers, 1))]
        self._offsets = [0] * self.partitions
        self._next_restart: float | None = None
        self._next_checkpoint: float | None = None
        self._checkpointed_at: list[int] = []  # log positions of the kept checkpoints
        self._lists: dict[str, list[str]] = {}
        #: user -> variant name -> the list that variant made for them in the latest batch
        #: (their published variant's, and each shadow's that samples them)
        self.variant_lists: dict[str, dict[str, list[str]]] = {}

    def _start_worker(self, number: int, restore: bool = False) -> _Worker:
        # Named by worker and restart: unique as a process id is, and the replay repeatable.
        recommender = Recommender(self.settings, origin=f"w{number}-{self.restarts}")
        sync = None
        if self.shared:
            reader = self.log.reader(lambda: self.now, self.settings.model_sync_max_lag_s)
            sync = ModelSync(
                recommender,
                reader,
                self.checkpoints,
                self.settings.model_checkpoint_interval_s,
                clock=lambda: self.now,
                background=False,
            )
            if restore:
                sync.restore()
            else:  # workers start together: nothing to catch up
                sync.position = self.log.first + len(self.log.records)
        recommender.apply_catalog_many(list(self.catalog.items()))
        if sync is not None and restore:
            sync.catch_up(timeout_s=float("inf"))
        return _Worker(recommender, sync)

    def learn(self, events: Sequence[Event]) -> None:
        self.now = max(self.now, events[-1].epoch_seconds)
        self._maybe_checkpoint()  # the models as they stood when it fell due: no event since
        self._maybe_restart()
        shares: list[list[Envelope]] = [[] for _ in self.workers]
        for event in events:
            partition = user_partition(event.user_id, self.partitions) if self.partitions > 1 else 0
            shares[self.owner[partition]].append(
                Envelope(event, partition, self._offsets[partition])
            )
            self._offsets[partition] += 1
        self._lists = {}
        self.variant_lists = {}
        for worker, share in zip(self.workers, shares, strict=True):
            if worker.sync is not None:
                worker.sync.poll(limit=1_000_000)
            if not share:
                continue
            users = list(dict.fromkeys(envelope.event.user_id for envelope in share))
            states = self.store.read(users)
            result = worker.recommender.process(share, states, now=events[-1].timestamp)
            if worker.sync is not None:
                worker.sync.publish(result.delta)
            if result.writes:
                self.store.write(result.writes)
            if result.erased:
                self.store.erase(result.erased)
            for published in result.published:
                self._lists[published.user_id] = [item for item, _, _ in published.items]
                if published.variant is not None:
                    lists = {published.variant: self._lists[published.user_id]}
                    self.variant_lists[published.user_id] = lists
            for write in result.writes:  # the shadows' new lists, kept in the users' states
                if write.state.shadow_lists:
                    made = self.variant_lists.setdefault(write.state.user_id, {})
                    made.update(write.state.shadow_lists)
        self._trim_log()

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]:
        return [self._lists.get(event.user_id, [])[:k] for event in events]

    @property
    def recommender(self) -> Recommender:
        """The first worker's recommender (the only one unless ``workers`` > 1)."""
        return self.workers[0].recommender

    def _maybe_restart(self) -> None:
        every = self.restart_every_s
        if every is None:
            return
        if self.now < self._next_restart_at():
            return
        self._next_restart = (self.now // every + 1) * every
        self.restarts += 1
        self.workers = [self._start_worker(n, restore=True) for n in range(len(self.workers))]

    def _next_restart_at(self) -> float:
        if self._next_restart is None:
            every = self.restart_every_s
            assert every is not None
            self._next_restart = (self.now // every + 1) * every
        return self._next_restart

    def _maybe_checkpoint(self) -> None:
        """Checkpoint only where a restart will read it: one interval before each restart
        (writing one every interval over a year of event time would dwarf the replay)."""
        if self.restart_every_s is None or not self.shared:
            return
        due = self._next_restart_at() - self.settings.model_checkpoint_interval_s
        if self.now >= due and (self._next_checkpoint is None or self._next_checkpoint < due):
            self._next_checkpoint = due
            sync = self.workers[0].sync
            assert sync is not None
            sync.checkpoint()
            self._checkpointed_at.append(sync.position)
            del self._checkpointed_at[: -self.settings.model_checkpoints_kept]

    def _trim_log(self) -> None:
        """Drop deltas every worker has read and no kept checkpoint needs (bounded memory)."""
        if not self.shared:
            return
        read = min(worker.sync.position for worker in self.workers if worker.sync is not None)
        self.log.trim(min([read, *self._checkpointed_at]))


class VariantView:
    """One experiment variant of a :class:`TailorModel` replayed with variants, as a model
    of its own: the lists that variant made, for its users only (None for the others, so
    that each variant is scored on its own users, as the live metrics label them).

    The views of one Tailor share its replay: the ``driver`` (the first view) feeds it each
    batch, the others only read what it made. They must stay in one process.
    """

    def __init__(self, tailor: TailorModel, variant: str, *, shadow: bool, driver: bool) -> None:
        self.tailor = tailor
        self.variant = variant
        self.shadow = shadow
        self.driver = driver
        self.name = f"{tailor.name} {variant}" + (" (shadow)" if shadow else "")

    def learn(self, events: Sequence[Event]) -> None:
        if self.driver:
            self.tailor.learn(events)

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str] | None]:
        made = self.tailor.variant_lists
        found = [made.get(event.user_id, {}).get(self.variant) for event in events]
        return [None if items is None else items[:k] for items in found]


@dataclass(slots=True)
class _Worker:
    recommender: Recommender
    sync: ModelSync | None


def micro_batches(events: Sequence[Event], size: int) -> Iterator[list[Event]]:
    """Consecutive events, at most ``size``, cut before a user's second event."""
    batch: list[Event] = []
    users: set[str] = set()
    for event in events:
        if len(batch) >= size or event.user_id in users:
            yield batch
            batch, users = [], set()
        batch.append(event)
        users.add(event.user_id)
    if batch:
        yield batch


def history_split(earlier: int) -> str:
    """The split of an event whose user had ``earlier`` events before it."""
    if earlier < COLD_EVENTS:
        return "first"
    return "5-50" if earlier <= LONG_HISTORY else "more"


@dataclass(slots=True)
class SplitCount:
    """Counts of one split at the largest K: scored events, hits, sum of 1/rank."""

    counted: int = 0
    hits: int = 0
    reciprocal_ranks: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.counted if self.counted else 0.0

    @property
    def mrr(self) -> float:
        return self.reciprocal_ranks / self.counted if self.counted else 0.0


def _empty_splits() -> dict[str, SplitCount]:
    return {name: SplitCount() for name in SPLITS}


@dataclass(slots=True)
class ModelScore:
    """One model's counts over the scored part of a replay."""

    name: str
    ks: tuple[int, ...]
    counted: int = 0
    hits: dict[int, int] = field(default_factory=dict)
    reciprocal_ranks: dict[int, float] = field(default_factory=dict)
    shown: set[str] = field(default_factory=set)
    seconds: float = 0.0
    events: int = 0
    #: (events replayed, HR@K of the window since the previous point, HR@K so far)
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    splits: dict[str, SplitCount] = field(default_factory=_empty_splits)
    _window_counted: int = 0
    _window_hits: int = 0

    def hit_rate(self, k: int) -> float:
        return self.hits.get(k, 0) / self.counted if self.counted else 0.0

    def mrr(self, k: int) -> float:
        return self.reciprocal_ranks.get(k, 0.0) / self.counted if self.counted else 0.0

    @property
    def cold_counted(self) -> int:
        """Scored events of users with fewer than :data:`COLD_EVENTS` earlier events."""
        return self.splits["first"].counted

    @property
    def cold_hits(self) -> int:
        return self.splits["first"].hits

    @property
    def cold_hit_rate(self) -> float:
        """HR at the largest K over cold events only: the "first" split."""
        return self.splits["first"].hit_rate

    def coverage(self, catalog: set[str]) -> float:
        """Share of the catalog that appeared in a scored list (unknown items do not count)."""
        return len(self.shown & catalog) / len(catalog) if catalog else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def count(self, item_id: str, shown: Sequence[str], *, earlier: int, seen: bool) -> None:
        """Score one event against the list the user had before it.

        ``earlier`` is the user's number of earlier events and ``seen`` whether one of them
        was on this item: they pick the event's splits (see :data:`SPLITS`).
        """
        self.counted += 1
        self._window_counted += 1
        splits = (self.splits[history_split(earlier)], self.splits["seen" if seen else "new"])
        for split in splits:
            split.counted += 1
        top = max(self.ks)
        self.shown.update(shown[:top])
        try:
            rank = shown.index(item_id, 0, top) + 1
        except ValueError:
            return
        for split in splits:
            split.hits += 1
            split.reciprocal_ranks += 1.0 / rank
        for k in self.ks:
            if rank <= k:
                self.hits[k] = self.hits.get(k, 0) + 1
                self.reciprocal_ranks[k] = self.reciprocal_ranks.get(k, 0.0) + 1.0 / rank
        if rank <= top:
            self._window_hits += 1

    def close_window(self, replayed: int) -> None:
        """A point of the HR@K curve: the hit rate since the previous point."""
        if self._window_counted:
            window = self._window_hits / self._window_counted
            self.curve.append((replayed, window, self.hits.get(max(self.ks), 0) / self.counted))
        self._window_counted = self._window_hits = 0


class _Past:
    """What each user did before the current batch: the events and items of the splits.

    Counted over every event (scored or not, any type), and cleared by a ``forget``: a
    forgotten user starts cold again, as the worker has nothing left of them.
    """

    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.items: dict[str, set[str]] = {}

    def before(self, batch: Sequence[Event]) -> tuple[list[int], list[bool]]:
        """Each event's earlier-event count and whether its item was had before; then
        takes the batch in (a batch holds one event per user, so order does not matter).
        """
        earlier = [self.events.get(event.user_id, 0) for event in batch]
        seen = [
            event.item_id is not None and event.item_id in self.items.get(event.user_id, ())
            for event in batch
        ]
        for event in batch:
            if event.type is EventType.FORGET:
                self.events.pop(event.user_id, None)
                self.items.pop(event.user_id, None)
                continue
            self.events[event.user_id] = self.events.get(event.user_id, 0) + 1
            if event.item_id is not None:
                self.items.setdefault(event.user_id, set()).add(event.item_id)
        return earlier, seen


def replay(
    events: Sequence[Event],
    models: Sequence[Model],
    k: int = 20,
    warmup: float = 0.0,
    batch_size: int = 256,
    on_progress: Callable[[int], None] = lambda done: None,
) -> list[ModelScore]:
    """Test-then-train every model over ``events``; the first ``warmup`` share is not scored."""
    ks = tuple(sorted({max(1, k // 2), k}))
    scores = [ModelScore(model.name, ks) for model in models]
    lists: list[dict[str, list[str]]] = [{} for _ in models]
    scored_from = int(len(events) * warmup)
    window = max(1, (len(events) - scored_from) // CURVE_POINTS)
    replayed = 0
    past = _Past()
    for batch in micro_batches(events, batch_size):
        latest = list({event.user_id: event for event in batch}.values())
        earlier, seen = past.before(batch)
        for model, score, shown in zip(models, scores, lists, strict=True):
            for offset, event in enumerate(batch):
                if (
                    replayed + offset < scored_from
                    or event.item_id is None
                    or event_weight(event) <= 0
                ):
                    continue
                previous = shown.get(event.user_id)
                if previous is not None:
                    score.count(event.item_id, previous, earlier=earlier[offset], seen=seen[offset])
            started = time.perf_counter()
            model.learn(batch)
            refreshed = model.recommend(latest, k)
            score.seconds += time.perf_counter() - started
            score.events += len(batch)
            for event, items in zip(latest, refreshed, strict=True):
                if items is None or event.type is EventType.FORGET:
                    shown.pop(event.user_id, None)
                else:
                    shown[event.user_id] = items
        before = replayed
        replayed += len(batch)
        if (
            replayed > scored_from
            and (replayed - scored_from) // window != max(0, before - scored_from) // window
        ):
            for score in scores:
                score.close_window(replayed)
        on_progress(replayed)
    for score in scores:
        score.close_window(replayed)
    return scores


def replay_in_processes(
    events: Sequence[Event],
    models: Sequence[Model],
    jobs: int,
    k: int = 20,
    warmup: float = 0.0,
    batch_size: int = 256,
    on_progress: Callable[[int], None] = lambda done: None,
) -> list[ModelScore]:
    """:func:`replay` with the models shared out over ``jobs`` forked processes.

    Models never talk to each other, so each process replays the same events through its
    share and sends back only the scores: the figures are exactly those of one process,
    in ``models`` order, and a long comparison takes the time of its slowest share. Fork
    (not spawn) hands every child the models as built, Redis clients included (redis-py
    reconnects after a fork). Progress is that of the slowest share.
    """
    jobs = max(1, min(jobs, len(models)))
    if jobs == 1:
        return replay(events, models, k, warmup, batch_size, on_progress)
    context = multiprocessing.get_context("fork")
    shares = [list(range(job, len(models), jobs)) for job in range(jobs)]
    progress = context.Array("q", jobs)
    results: multiprocessing.Queue[tuple[int, list[ModelScore]]] = context.Queue()

    def run(job: int) -> None:
        def advance(done: int) -> None:
            progress[job] = done

        share = [models[n] for n in shares[job]]
        results.put((job, replay(events, share, k, warmup, batch_size, advance)))

    processes = [context.Process(target=run, args=(job,), daemon=True) for job in range(jobs)]
    for process in processes:
        process.start()
    finished: dict[int, list[ModelScore]] = {}
    try:
        while len(finished) < jobs:
            try:
                job, scores = results.get(timeout=0.5)
                finished[job] = scores
            except queue.Empty:
                failed = [p for p in processes if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(
                        f"a replay process failed (exit code {failed[0].exitcode})"
                    ) from None
            on_progress(min(progress[:]))
    finally:
        for process in processes:
            process.join(timeout=1.0)
            if process.is_alive():
                process.terminate()
    ordered: dict[int, ModelScore] = {}
    for job, scores in finished.items():
        ordered.update(zip(shares[job], scores, strict=True))
    return [ordered[n] for n in range(len(models))]
