"""The recommender core: (user states, events) -> (new user states, recommendations).

No I/O happens here. ``tailor run`` feeds it micro-batches read from Kafka with states read
from Redis; the demo feeds it the same way through the mock cluster and fakeredis;
``tailor bench core`` feeds it a synthetic stream directly (and an evaluation harness will
feed it a log). One code path, so what is measured is what runs.

A micro-batch is handled in three steps:

1. **sort out** the events per user: drop those at or below the user's applied offset
   (a replay after a crash changes nothing), and honour ``forget`` requests;
2. **learn** from all fresh events at once: the ranker (from what the user did after the
   previous list), trending, co-visitation and taste vectors (vectorised over the batch);
3. **recommend** for every touched user: candidates -> features -> ranker -> filters ->
   diversity -> exploration -> top-K with reasons.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import orjson

from worker import __version__
from worker.config import Settings
from worker.contract import CatalogItem, Event, EventType
from worker.models.catalog import Catalog, content_vector
from worker.models.content import ContentNeighbours, content_tokens
from worker.models.covisitation import CoVisitation
from worker.models.index import ItemIndex
from worker.models.ranker import TREND_TIMESCALES_S, Ranker
from worker.models.sessions import SessionNeighbours
from worker.models.taste import TasteModel
from worker.models.trending import Trending
from worker.recommend.candidates import Candidates, UserContext, gather_candidates
from worker.recommend.lists import Item, finish_lists
from worker.recommend.signals import event_weight
from worker.state.user import Interaction, UserState, UserWrite

__all__ = ["BatchResult", "Envelope", "Published", "Recommender"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

MODEL_VERSION = f"tailor-{__version__}"
_CATEGORY_CACHE_REFRESHES = 8  # category top lists follow trending, a little behind
_REMEMBERED_CANDIDATES = 100


@dataclass(frozen=True, slots=True)
class Envelope:
    """An event with where it came from; the offset is what makes updates exactly-once."""

    event: Event
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Published:
    """A recommendation ready to serialise (see :class:`worker.contract.Recommendation`)."""

    user_id: str
    items: list[Item]
    source_event_id: str
    covered_event_ids: list[str]
    generated_at: datetime
    model_version: str = MODEL_VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "schema_version": 1,
                "user_id": self.user_id,
                "items": [
                    {"item_id": item, "score": round(score, 6), "reasons": reasons}
                    for item, score, reasons in self.items
                ],
                "source_event_id": self.source_event_id,
                "covered_event_ids": self.covered_event_ids,
                "generated_at": self.generated_at.isoformat(timespec="milliseconds"),
                "model_version": self.model_version,
            }
        )


@dataclass(slots=True)
class BatchResult:
    writes: list[UserWrite] = field(default_factory=list)  # users whose state changed
    published: list[Published] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)
    replayed: int = 0  # events already applied before (skipped: exactly once)
    applied: int = 0


@dataclass(slots=True)
class _UserBatch:
    state: UserState
    fresh: list[Envelope]
    covered: list[Envelope]
    erase_first: bool


class Recommender:
    """All shared models plus the per-batch procedure; one instance per worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = ItemIndex(settings.max_items)
        self.catalog = Catalog()
        self.trending = Trending(
            settings.trending_half_life_s,
            top_size=max(settings.trending_pool, settings.taste_pool),
            segment_size=settings.trending_pool,
            segment_half_life_events=settings.segment_half_life_events,
            timescales_s=TREND_TIMESCALES_S,
            timescale_top=settings.trending_pool,
        )
        self.covis = CoVisitation(settings.covis_neighbours, settings.covis_half_life_s)
        self.sessions = SessionNeighbours(
            settings.sessions_kept,
            settings.sessions_per_item,
            settings.session_length,
            settings.session_neighbours,
            settings.covis_session_gap_s,
            settings.session_half_life_s,
        )
        self.content = ContentNeighbours(settings.content_neighbours)
        self.taste = TasteModel(
            settings.vector_dim,
            settings.learning_rate,
            settings.regularization,
            settings.seed,
            settings.taste_memory,
        )
        self.ranker = Ranker(
            settings.ranker_learning_rate, settings.ranker_l2, settings.ranker_optimizer
        )
        self.rng = np.random.default_rng(settings.seed)
        self.deny_categories = set(settings.deny_categories)
        self._shown: OrderedDict[str, Candidates] = OrderedDict()
        self._category_cache: dict[int, IntArray] = {}
        self._category_cache_version = -_CATEGORY_CACHE_REFRESHES

    # -- catalog ------------------------------------------------------------------------

    def apply_catalog(self, item_id: str, item: CatalogItem | None) -> None:
        """An upsert from the catalog topic, or a tombstone (``item`` None) deleting it."""
        row = self.index.row(item_id)
        if row < 0:
            return
        if item is None:
            self.catalog.delete(row)
            self.content.delete(row)
            return
        self.catalog.upsert(row, item)
        if self.settings.part_on("content"):
            self.content.upsert(row, content_tokens(item))
        vector = content_vector(item, self.settings.vector_dim)
        if vector is not None and self.settings.part_on("content"):
            self.taste.set_content(row, vector)

    # -- one micro-batch ------------------------------------------------------------------

    def process(
        self,
        batch: Sequence[Envelope],
        states: Mapping[str, UserState | None],
        now: datetime | None = None,
    ) -> BatchResult:
        """Learn from ``batch`` and return every touched user's new state and list."""
        result = BatchResult()
        users = self._sort_out(batch, states, result)
        self._learn(users)
        generated_at = now or datetime.now(UTC)
        contexts = [UserContext.of(user.covered[-1].event) for user in users.values()]
        lists = self.recommend([user.state for user in users.values()], contexts)
        for (user_id, user), items in zip(users.items(), lists, strict=True):
            result.applied += len(user.fresh)
            user.state.last_list = [item for item, _, _ in items]
            if user.fresh or user.erase_first:
                result.writes.append(UserWrite(user.state, user.erase_first))
            result.published.append(
                Published(
                    user_id=user_id,
                    items=items,
                    source_event_id=user.covered[-1].event.event_id,
                    covered_event_ids=[envelope.event.event_id for envelope in user.covered],
                    generated_at=generated_at,
                )
            )
        return result

    def _sort_out(
        self,
        batch: Sequence[Envelope],
        states: Mapping[str, UserState | None],
        result: BatchResult,
    ) -> dict[str, _UserBatch]:
        grouped: dict[str, list[Envelope]] = {}
        for envelope in batch:
            grouped.setdefault(envelope.event.user_id, []).append(envelope)
        users: dict[str, _UserBatch] = {}
        for user_id, received in grouped.items():
            state = states.get(user_id)
            forgets = [k for k, e in enumerate(received) if e.event.type is EventType.FORGET]
            erase_first = bool(forgets)
            envelopes = received
            if forgets:
                # Everything up to the last forget is erased; later events start afresh.
                state = None
                self._shown.pop(user_id, None)
                self.sessions.forget(user_id)
                envelopes = received[forgets[-1] + 1 :]
                if not envelopes:
                    result.erased.append(user_id)
                    continue
            if state is None:
                state = UserState(user_id=user_id, vector=self.taste.new_user(user_id))
            fresh = [e for e in envelopes if not state.already_applied(e.partition, e.offset)]
            result.replayed += len(envelopes) - len(fresh)
            users[user_id] = _UserBatch(state, fresh, envelopes, erase_first)
        return users

    # -- learning ---------------------------------------------------------------------------

    def _learn(self, users: Mapping[str, _UserBatch]) -> None:
        window = self.settings.recent_window
        self._train_ranker(users)
        slots: list[int] = []
        rows: list[int] = []
        weights: list[float] = []
        times: list[float] = []
        segments: list[tuple[str, ...]] = []
        visits: tuple[list[str], list[int], list[float]] = ([], [], [])
        pairs: tuple[list[int], list[int], list[float], list[float]] = ([], [], [], [])
        taste_pairs: tuple[list[int], list[int], list[float]] = ([], [], [])
        taste_window = self.settings.taste_window
        for slot, user in enumerate(users.values()):
            state = user.state
            reach = self.settings.covis_window
            recent = [(self.index.row(i.item_id), i.at) for i in state.recent[-reach:]]
            history = [self.index.row(i.item_id) for i in state.recent[-taste_window:]]
            for envelope in user.fresh:
                event = envelope.event
                state.events += 1
                state.last_seen = max(state.last_seen, event.epoch_seconds)
                state.offsets[envelope.partition] = max(
                    envelope.offset, state.offsets.get(envelope.partition, -1)
                )
                assert event.item_id is not None  # forget events never reach here
                row = self.index.row(event.item_id)
                weight = event_weight(event)
                state.remember(
                    Interaction(event.item_id, event.type.value, event.epoch_seconds), window
                )
                if row < 0:
                    continue
                slots.append(slot)
                rows.append(row)
                weights.append(weight)
                times.append(event.epoch_seconds)
                segments.append(UserContext.of(event).segments)
                if weight > 0:
                    self._pairs(row, weight, event.epoch_seconds, recent, pairs)
                    visits[0].append(state.user_id)
                    visits[1].append(row)
                    visits[2].append(event.epoch_seconds)
                    for previous in dict.fromkeys(history):
                        if previous >= 0 and previous != row:
                            taste_pairs[0].append(row)
                            taste_pairs[1].append(previous)
                            taste_pairs[2].append(weight)
                recent = [*recent, (row, event.epoch_seconds)][-reach:]
                history = [*history, row][-taste_window:]
        if not rows:
            return
        row_array = np.array(rows, dtype=np.int64)
        weight_array = np.array(weights)
        time_array = np.array(times)
        self.catalog.ensure(int(row_array.max()) + 1)
        self.trending.observe(row_array, np.maximum(weight_array, 0.0), time_array, segments)
        self.covis.observe(
            np.array(pairs[0], dtype=np.int64),
            np.array(pairs[1], dtype=np.int64),
            np.array(pairs[2]),
            np.array(pairs[3]),
        )
        if self.settings.part_on("sessions"):
            self.sessions.observe(*visits)
        if not self.settings.part_on("taste"):
            return  # user vectors stay where they started: no cost for an unused part
        user_vectors = np.stack([u.state.vector for u in users.values()])
        sources = np.array(taste_pairs[0], dtype=np.int64)
        self.taste.learn_pairs(
            sources,
            np.array(taste_pairs[1], dtype=np.int64),
            self._sample_negatives(sources.size),
            np.minimum(np.array(taste_pairs[2]) / 4.0, 1.0),
        )
        self.taste.fold(
            user_vectors, np.array(slots, dtype=np.int64), row_array, np.sign(weight_array)
        )
        for slot, user in enumerate(users.values()):
            user.state.vector = user_vectors[slot]

    def _pairs(
        self,
        row: int,
        weight: float,
        at: float,
        recent: list[tuple[int, float]],
        pairs: tuple[list[int], list[int], list[float], list[float]],
    ) -> None:
        """Co-visits of ``row`` with the user's recent items of the same session.

        A session is cut where the user was away longer than ``covis_session_gap_s``:
        what one basket holds together says far more than what a customer bought last
        month (on the Online Retail log, pairing across sessions lost a fifth of HR@20).
        """
        gap = self.settings.covis_session_gap_s
        sources, targets, weights, times = pairs
        for previous, previous_at in reversed(recent):
            if at - previous_at > gap:
                break
            if previous >= 0 and previous != row:
                sources += [previous, row]
                targets += [row, previous]
                weights += [weight, weight]
                times += [at, at]

    def _sample_negatives(self, n: int) -> IntArray:
        """Negatives drawn from the popular pool: hard negatives, as in BPR practice."""
        pool = self.trending.top()
        if pool.size == 0:
            pool = np.arange(max(len(self.index), 1), dtype=np.int64)
        return pool[self.rng.integers(0, pool.size, size=n)]

    def _train_ranker(self, users: Mapping[str, _UserBatch]) -> None:
        """Learn from what each user did after their previous list.

        The features are those the candidates had when the list was made (kept for the
        last ``ranker_memory_users`` users; recomputed in one batch after a restart). A
        chosen item that was among the candidates is a positive; negatives come from
        :meth:`_negatives`. A chosen item outside the candidates teaches the ranker
        nothing: no ordering of the candidates would have shown it.
        """
        if not self.settings.part_on("ranker"):
            return
        lessons: list[tuple[_UserBatch, set[str | None]]] = []
        missing: list[_UserBatch] = []
        for user_id, user in users.items():
            chosen = {e.event.item_id for e in user.fresh if event_weight(e.event) > 0}
            if not chosen:
                continue
            lessons.append((user, chosen))
            if user_id not in self._shown and user.state.last_list:
                missing.append(user)
        if missing:
            contexts = [UserContext.of(user.fresh[0].event) for user in missing]
            batch = gather_candidates(self, [user.state for user in missing], contexts)
            for slot, user in enumerate(missing):
                self._remember_shown(user.state.user_id, batch.user(slot))
        for user, chosen in lessons:
            shown = self._shown.pop(user.state.user_id, None)
            if shown is None or shown.rows.size == 0:
                continue
            chosen_rows = self.index.known_rows(item for item in chosen if item is not None)
            positive = _positions(shown.rows, chosen_rows)
            if positive.size == 0:
                continue
            negative = self._negatives(shown, positive, chosen, user.state.last_list)
            self.ranker.learn(shown.features[positive], shown.features[negative])

    # -- recommending ---------------------------------------------------------------------------

    def recommend(
        self, states: Sequence[UserState], contexts: Sequence[UserContext]
    ) -> list[list[Item]]:
        """Each user's top-K as (item id, score, reasons), best first, in one batch."""
        if not states:
            return []
        batch = gather_candidates(self, states, contexts)
        scores = self.ranker.score(batch.features)
        remembered = batch.best(scores, _REMEMBERED_CANDIDATES)
        for state, candidates in zip(states, remembered, strict=True):
            self._remember_shown(state.user_id, candidates)
        return finish_lists(self, states, contexts, batch, scores)

    def category_top(self, category: int, n: int) -> IntArray:
        """The ``n`` most popular items of a category, recomputed every few trending refreshes."""
        if self.trending.version - self._category_cache_version >= _CATEGORY_CACHE_REFRESHES:
            self._category_cache.clear()
            self._category_cache_version = self.trending.version
        top = self._category_cache.get(category)
        if top is None:
            members = np.asarray(self.catalog.members.get(category, ()), dtype=np.int64)
            if members.size > n:
                popularity = self.trending.normalised(members)
                members = members[np.argpartition(-popularity, n - 1)[:n]]
            top = self._category_cache[category] = members
        return top

    def _negatives(
        self, shown: Candidates, positive: IntArray, chosen: set[str | None], last_list: list[str]
    ) -> IntArray:
        """Negatives that do not teach the ranker its own bias.

        When the chosen item was in the published list, the items shown beside it and
        passed over are the honest negatives. When it was not shown, shown items are
        exactly the ones the ranker already favoured, so comparing against them would
        teach it to prefer what it did not show: sample other candidates instead.
        """
        taken = set(positive.tolist())
        wanted = self.settings.ranker_negatives
        if any(item in chosen for item in last_list):
            passed = self.index.known_rows(i for i in last_list if i not in chosen)
            pool = _positions(shown.rows, passed).tolist()
            start = int(self.rng.integers(0, max(len(pool), 1)))
            pool = pool[start:] + pool[:start]  # a random pick that costs no shuffle
        else:
            pool = self.rng.integers(0, shown.rows.size, size=2 * wanted).tolist()
        negatives = [p for p in pool if p not in taken][:wanted]
        return np.array(negatives, dtype=np.int64)

    def _remember_shown(self, user_id: str, candidates: Candidates) -> None:
        """Keep the features behind each user's latest list, for the ranker's next lesson."""
        self._shown[user_id] = candidates
        self._shown.move_to_end(user_id)
        while len(self._shown) > self.settings.ranker_memory_users:
            self._shown.popitem(last=False)


def _positions(sorted_rows: IntArray, wanted: IntArray) -> IntArray:
    """Positions in ``sorted_rows`` of the ``wanted`` rows that it holds."""
    if sorted_rows.size == 0 or wanted.size == 0:
        return np.zeros(0, dtype=np.int64)
    position = np.minimum(np.searchsorted(sorted_rows, wanted), sorted_rows.size - 1)
    return np.unique(position[sorted_rows[position] == wanted])
