"""The prequential (test-then-train) loop, and Tailor's own core as one of its models.

Every model sees the same micro-batches in the same order and is scored by the same
code: for each event, if its user already has a list from that model, a hit is counted
when the event's item is in the top K; then the model learns from the batch and refreshes
the lists of the batch's users. A batch never holds two events of one user, so every event
is tested against the list made right after the user's previous event, which is what the
worker publishes after every interaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.config import Settings
from worker.contract import CatalogItem, Event, EventType
from worker.recommend.core import Envelope, Recommender
from worker.recommend.signals import event_weight
from worker.state.user import UserState, UserWrite

__all__ = [
    "MemoryStates",
    "Model",
    "ModelScore",
    "StateStore",
    "TailorModel",
    "micro_batches",
    "replay",
]

#: Points on each model's HR curve (what ``--plot`` draws).
CURVE_POINTS = 100
#: An event is "cold" when its user had fewer earlier events than this: what a new
#: customer sees, where trending and segments have to stand in for a missing history.
COLD_EVENTS = 5


class Model(Protocol):
    """What the harness needs of a recommender: learn from a batch, then list for users."""

    name: str

    def learn(self, events: Sequence[Event]) -> None: ...

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]: ...


class StateStore(Protocol):
    """Where Tailor's per-user state lives: Redis (:class:`UserStore`) or this process."""

    def read(self, user_ids: Sequence[str]) -> Mapping[str, UserState | None]: ...

    def write(self, writes: Sequence[UserWrite]) -> object: ...

    def erase(self, user_ids: Sequence[str]) -> object: ...


class MemoryStates:
    """User states in a dict: the harness's default, so a replay needs no server."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}

    def read(self, user_ids: Sequence[str]) -> dict[str, UserState | None]:
        return {user_id: self.states.get(user_id) for user_id in user_ids}

    def write(self, writes: Sequence[UserWrite]) -> None:
        for write in writes:
            self.states[write.state.user_id] = write.state

    def erase(self, user_ids: Sequence[str]) -> None:
        for user_id in user_ids:
            self.states.pop(user_id, None)


class TailorModel:
    """The worker's :class:`Recommender`, fed exactly as ``tailor run`` feeds it.

    Events become envelopes of one partition with increasing offsets, states are read
    before and written after each batch, and the lists are the ones that would be
    published: no second copy of the recommender logic lives here.
    """

    def __init__(
        self,
        settings: Settings,
        catalog: Mapping[str, CatalogItem],
        store: StateStore | None = None,
        name: str = "tailor",
    ) -> None:
        self.name = name
        self.recommender = Recommender(settings)
        for item_id, item in catalog.items():
            self.recommender.apply_catalog(item_id, item)
        self.store: StateStore = store if store is not None else MemoryStates()
        self._offset = 0
        self._lists: dict[str, list[str]] = {}

    def learn(self, events: Sequence[Event]) -> None:
        envelopes = []
        for event in events:
            envelopes.append(Envelope(event, 0, self._offset))
            self._offset += 1
        states = self.store.read(list(dict.fromkeys(event.user_id for event in events)))
        result = self.recommender.process(envelopes, states, now=events[-1].timestamp)
        if result.writes:
            self.store.write(result.writes)
        if result.erased:
            self.store.erase(result.erased)
        self._lists = {
            published.user_id: [item for item, _, _ in published.items]
            for published in result.published
        }

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]:
        return [self._lists.get(event.user_id, [])[:k] for event in events]


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
    cold_counted: int = 0
    cold_hits: int = 0  # at the largest K
    _window_counted: int = 0
    _window_hits: int = 0

    def hit_rate(self, k: int) -> float:
        return self.hits.get(k, 0) / self.counted if self.counted else 0.0

    def mrr(self, k: int) -> float:
        return self.reciprocal_ranks.get(k, 0.0) / self.counted if self.counted else 0.0

    @property
    def cold_hit_rate(self) -> float:
        """HR at the largest K over cold events only (see :data:`COLD_EVENTS`)."""
        return self.cold_hits / self.cold_counted if self.cold_counted else 0.0

    def coverage(self, catalog: set[str]) -> float:
        """Share of the catalog that appeared in a scored list (unknown items do not count)."""
        return len(self.shown & catalog) / len(catalog) if catalog else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def count(self, item_id: str, shown: Sequence[str], cold: bool = False) -> None:
        """Score one event against the list the user had before it."""
        self.counted += 1
        self._window_counted += 1
        self.cold_counted += cold
        top = max(self.ks)
        self.shown.update(shown[:top])
        try:
            rank = shown.index(item_id, 0, top) + 1
        except ValueError:
            return
        self.cold_hits += cold
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
    history: dict[str, int] = {}  # events seen per user, for the cold-start figure
    for batch in micro_batches(events, batch_size):
        latest = list({event.user_id: event for event in batch}.values())
        cold = [history.get(event.user_id, 0) < COLD_EVENTS for event in batch]
        for event in batch:
            if event.type is EventType.FORGET:
                history.pop(event.user_id, None)  # a forgotten user starts cold again
            else:
                history[event.user_id] = history.get(event.user_id, 0) + 1
        for model, score, shown in zip(models, scores, lists, strict=True):
            for position, event in enumerate(batch, start=replayed):
                if position < scored_from or event.item_id is None or event_weight(event) <= 0:
                    continue
                previous = shown.get(event.user_id)
                if previous is not None:
                    score.count(event.item_id, previous, cold[position - replayed])
            started = time.perf_counter()
            model.learn(batch)
            refreshed = model.recommend(latest, k)
            score.seconds += time.perf_counter() - started
            score.events += len(batch)
            for event, items in zip(latest, refreshed, strict=True):
                if event.type is EventType.FORGET:
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
