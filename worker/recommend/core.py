"""The recommender core: (user states, events) -> (new user states, recommendations).

No I/O happens here. ``tailor run`` feeds it micro-batches read from Kafka with states read
from Redis; the demo feeds it the same way through the mock cluster and fakeredis;
``tailor bench core`` feeds it a synthetic stream directly (and an evaluation harness will
feed it a log). One code path, so what is measured is what runs.

A micro-batch is handled in three steps:

1. **sort out** the events per user: drop those at or below the user's applied offset
   (a replay after a crash changes nothing), unless the offset was of another id of the
   events topic (deleted and recreated: void), and honour ``forget`` requests;
2. **learn** from all fresh events at once: the ranker (from what the user did after the
   previous list), trending, co-visitation and taste vectors (vectorised over the batch);
3. **recommend** for every touched user: candidates -> features -> ranker -> filters ->
   diversity -> exploration -> top-K with reasons.

Experiments (:mod:`worker.recommend.variants`) touch step 3 only: the batch's users are
grouped by the variant they are assigned and each group's lists are assembled with that
variant's settings, while the shared models learn from every event alike. The ranker
learns from the published lists alone (whatever variant made them); a shadow variant's
lists are kept in the user's state to be scored against, never published and never taught
from, and are drawn with a random generator of their own, so that adding a shadow does not
change one published list.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import numpy.typing as npt
import orjson
from threadpoolctl import threadpool_limits

from worker import __version__
from worker.config import Settings
from worker.contract import CatalogItem, Event, EventType
from worker.models.catalog import Catalog, content_vectors
from worker.models.content import ContentNeighbours, item_words
from worker.models.covisitation import CoVisitation
from worker.models.delta import DeltaBuilder, ModelDelta
from worker.models.index import ItemIndex
from worker.models.ranker import FEATURES, TREND_TIMESCALES_S, Ranker, pairwise_differences
from worker.models.sessions import SessionNeighbours, session_token
from worker.models.taste import TasteModel
from worker.models.trending import Trending
from worker.quality.exposure import BatchExposure, batch_exposure
from worker.quality.live import LiveCounts, Segmenter
from worker.recommend.candidates import (
    CandidateBatch,
    Candidates,
    UserContext,
    gather_candidates,
)
from worker.recommend.context import ModelContext
from worker.recommend.lists import Item, Lists, finish_lists, recommendable
from worker.recommend.signals import event_weight
from worker.recommend.variants import Variants, unit_hash
from worker.state.user import Interaction, UserState, UserWrite, other_topic

__all__ = [
    "BatchResult",
    "DeltaOutcome",
    "Envelope",
    "ModelTotals",
    "Published",
    "Recommender",
    "count_delta",
    "judge_delta",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

MODEL_VERSION = f"tailor-{__version__}"
DeltaOutcome = Literal["applied", "duplicate", "refused"]


def judge_delta(
    positions: Mapping[int, tuple[int, int]], contributed: Mapping[int, int]
) -> DeltaOutcome:
    """Whether a delta of events at ``positions`` counts, given what is counted already.

    The one rule every copy of the models follows (:meth:`Recommender.apply_delta`), kept
    apart so that a worker can also ask what a reader of the model topic alone decides.
    """
    behind = [first <= contributed.get(p, -1) for p, (first, _) in positions.items()]
    if behind and all(last <= contributed.get(p, -1) for p, (_, last) in positions.items()):
        return "duplicate"
    if any(behind):
        return "refused"
    return "applied"


def count_delta(positions: Mapping[int, tuple[int, int]], contributed: dict[int, int]) -> None:
    """Record in ``contributed`` that the events at ``positions`` are counted."""
    for partition, (_, last) in positions.items():
        contributed[partition] = max(last, contributed.get(partition, -1))


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
    #: the experiment variant that made the list; None (and no field in the message)
    #: when no experiment is configured
    variant: str | None = None

    def to_json(self) -> bytes:
        message = {
            "schema_version": 1,
            "user_id": self.user_id,
            "items": [
                {"item_id": item, "score": round(score, 6), "reasons": reasons}
                for item, score, reasons in self.items
            ],
            "source_event_id": self.source_event_id,
            "covered_event_ids": self.covered_event_ids,
            "generated_at": _timestamp(self.generated_at),
            "model_version": self.model_version,
        }
        if self.variant is not None:
            message["variant"] = self.variant
        return orjson.dumps(message)


@functools.lru_cache(maxsize=4)
def _timestamp(moment: datetime) -> str:
    """A batch's lists share one ``generated_at``: formatted once, not once a list (a
    fifth of :meth:`Published.to_json`)."""
    return moment.isoformat(timespec="milliseconds")


@dataclass(slots=True)
class BatchResult:
    writes: list[UserWrite] = field(default_factory=list)  # users whose state changed
    published: list[Published] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)
    replayed: int = 0  # events already applied before (skipped: exactly once)
    applied: int = 0
    #: users whose stored offsets were of another events topic id, and so were dropped
    voided: int = 0
    #: the events topic id the shared models' offsets (:attr:`Recommender.contributed`)
    #: were of, when that was another one than the batch's and they were dropped
    models_voided: str = ""
    #: what the shared models learned from this batch, for the other workers (None: nothing)
    delta: ModelDelta | None = None
    #: fresh events scored against their user's last list (live quality)
    quality: LiveCounts = field(default_factory=LiveCounts)
    #: per variant, what the published lists showed (live bias and coverage)
    exposure: dict[str, BatchExposure] = field(default_factory=dict)
    #: per user with any, each shadow variant's list as it stood before this batch (from
    #: the user's state): what this batch's events are scored against live
    shadow_lists: dict[str, dict[str, list[str]]] = field(default_factory=dict)


@dataclass(slots=True)
class ModelTotals:
    """What the shared models have learned, counted: the fault suite's exactly-once check."""

    events: int = 0
    deltas: int = 0
    pairs: int = 0
    visits: int = 0
    lessons: int = 0
    trend_weight: float = 0.0

    def add(self, delta: ModelDelta) -> None:
        self.events += delta.events
        self.deltas += 1
        self.pairs += delta.pair_visits
        self.visits += int(delta.visit_token.size)
        self.lessons += int(delta.lessons.shape[0])
        self.trend_weight += float(delta.trend_weight.sum())


@dataclass(slots=True)
class _UserBatch:
    state: UserState
    fresh: list[Envelope]  # not yet in the user's state
    covered: list[Envelope]
    erase_first: bool
    shared: list[bool]  # per fresh event: not yet in the shared models either
    listed: bool  # the user had a list before this batch (their state was stored)
    variant: str


@dataclass(frozen=True, slots=True)
class _Ranked:
    """One variant's users of a batch (their slots) with their ranked candidates."""

    slots: list[int]
    gathering: dict[str, object]  # what candidate gathering read of the settings
    batch: CandidateBatch
    scores: FloatArray


#: What only list finishing reads (:func:`~worker.recommend.lists.finish_lists`): two
#: variants alike in everything else gather and rank the same candidates.
_FINISHING_ONLY = frozenset(
    {"top_k", "explore_share", "max_per_category", "just_bought_window_s", "parts_off", "variants"}
)


def _gathering(settings: Settings) -> dict[str, object]:
    """The settings candidate gathering and ranking read (the explore part is finishing's)."""
    read: dict[str, object] = settings.model_dump(exclude=set(_FINISHING_ONLY))
    read["parts_off"] = sorted(set(settings.parts_off) - {"explore"})
    return read


class Recommender:
    """All shared models plus the per-batch procedure; one instance per worker process."""

    def __init__(self, settings: Settings, origin: str = "local") -> None:
        self.settings = settings
        if settings.blas_threads:
            # Process-wide, and here because every path (run, demo, evaluate, bench) builds
            # this core. Its products are small (a batch's users against a pool of items):
            # on 2 cores shared with Kafka and Redis, OpenBLAS's second thread made a
            # 32-event batch take 48 ms instead of 28 ms, and a 500-event one no faster.
            threadpool_limits(limits=settings.blas_threads, user_api="blas")
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
            item_ids=self.index.ids,
        )
        self.ranker = Ranker(
            settings.ranker_learning_rate, settings.ranker_l2, settings.ranker_optimizer
        )
        self.rng = np.random.default_rng(settings.seed)  # reseeded by a checkpoint restore
        self.variants = Variants(settings)
        #: per variant, what its candidate gathering reads of its settings (a shadow alike
        #: in it finishes a published variant's candidates: :meth:`_shadows`)
        self._gathering = {name: _gathering(s) for name, s in self.variants.settings.items()}
        self.deny_categories = frozenset(settings.deny_categories)
        self.segmenter = Segmenter(settings.quality_segment, settings.quality_segment_values)
        self._shown: OrderedDict[str, Candidates] = OrderedDict()
        self._category_cache: dict[int, IntArray] = {}
        self._sentences: dict[tuple[int, int], str | None] = {}
        self._category_cache_version = -_CATEGORY_CACHE_REFRESHES
        #: event partition -> the last offset the shared models reflect (see apply_delta),
        #: in the events topic of id ``contributed_topic`` ("" unknown)
        self.contributed: dict[int, int] = {}
        self.contributed_topic = ""
        self.origin = origin
        self.batches = 0
        self.totals = ModelTotals()

    # -- catalog ------------------------------------------------------------------------

    def apply_catalog(self, item_id: str, item: CatalogItem | None) -> None:
        """An upsert from the catalog topic, or a tombstone (``item`` None) deleting it."""
        self.apply_catalog_many([(item_id, item)])

    def apply_catalog_many(self, changes: Sequence[tuple[str, CatalogItem | None]]) -> None:
        """Upserts and tombstones in topic order, content vectors computed in one go."""
        content_on = self.settings.part_on("content")
        self._sentences.clear()  # they name titles and categories
        #: row -> its latest words and embedding, for the items whose start vector still
        #: takes their content (after a checkpoint restore, few do)
        wanted: dict[int, tuple[list[str], list[float] | None]] = {}
        for item_id, item in changes:
            row = self.index.row(item_id)
            if row < 0:
                continue
            if item is None:
                self.catalog.delete(row)
                self.content.delete(row)
                wanted.pop(row, None)
                continue
            self.catalog.upsert(row, item)
            if content_on:
                tokens = item_words(item)
                self.content.upsert(row, list(dict.fromkeys(tokens)))
                if self.taste.wants_content(row):
                    wanted.pop(row, None)  # the latest version goes last, as it came
                    wanted[row] = (tokens, item.embedding)
        self._reserve()
        if not wanted:
            return
        rows = list(wanted)
        vectors, valid = content_vectors(
            [words for words, _ in wanted.values()],
            [embedding for _, embedding in wanted.values()],
            self.settings.vector_dim,
        )
        for slot, row in enumerate(rows):
            if valid[slot]:
                self.taste.set_content(row, vectors[slot])

    def catalog_loaded(self) -> None:
        """The catalog as read at start-up is in: build what is built from it now (the
        text neighbours' matrix), so that their background fill runs while the worker
        joins its group, not from its first batch."""
        if self.settings.part_on("content"):
            self.content.refresh()

    def _reserve(self) -> None:
        """Size the per-item models for every item known, at catalog time.

        Otherwise they grow by doubling (and item vectors are drawn) inside the first
        batches that touch new items: seconds of stalls in the lists' latency in a worker's
        first minutes, for the same arrays and values in the end.
        """
        items = len(self.index)
        self.covis.reserve(items)
        self.sessions.reserve(items)
        self.taste.ensure(items)

    # -- one micro-batch ------------------------------------------------------------------

    def process(
        self,
        batch: Sequence[Envelope],
        states: Mapping[str, UserState | None],
        now: datetime | None = None,
        topic_id: str = "",
    ) -> BatchResult:
        """Learn from ``batch`` and return every touched user's new state and list.

        ``topic_id`` is the id of the events topic the whole batch was read from ("" when
        unknown); one per batch, since offsets compare only within one topic id.
        """
        result = BatchResult()
        counted_topic = self.contributed_topic
        if self.adopt_topic(topic_id):
            result.models_voided = counted_topic
        forgotten: list[int] = []  # session tokens of users erased by this batch
        users = self._sort_out(batch, states, result, forgotten, topic_id)
        self._score(users, result.quality)  # before learning: test, then train
        forgets = [e for e in batch if e.event.type is EventType.FORGET]
        result.delta = self._learn(users, forgets, forgotten)
        generated_at = now or datetime.now(UTC)
        contexts = [UserContext.of(user.covered[-1].event) for user in users.values()]
        user_states = [user.state for user in users.values()]
        variants = self.variants
        if variants.enabled:
            names = [user.variant for user in users.values()]
            lists, ranked = self._recommend_variants(user_states, contexts, names)
            self._shadows(user_states, contexts, result, ranked)
        else:
            lists = self.recommend_lists(user_states, contexts)
            for state in user_states:
                if state.shadow_lists is not None:  # shadows configured before: clear them
                    state.shadow_lists = {}
        for (user_id, user), items, sources in zip(
            users.items(), lists.items, lists.sources, strict=True
        ):
            result.applied += len(user.fresh)
            user.state.last_list = [item for item, _, _ in items]
            user.state.last_sources = sources
            if user.fresh or user.erase_first:
                result.writes.append(UserWrite(user.state, user.erase_first))
            result.published.append(
                Published(
                    user_id=user_id,
                    items=items,
                    source_event_id=user.covered[-1].event.event_id,
                    covered_event_ids=[envelope.event.event_id for envelope in user.covered],
                    generated_at=generated_at,
                    variant=user.variant if variants.enabled else None,
                )
            )
        result.exposure = self._exposure([user.variant for user in users.values()], lists)
        return result

    def variant_of(self, user_id: str) -> str:
        """The experiment variant whose list a user is published (``"control"`` without an
        experiment): the one place that decides it, for lists and for live metrics."""
        return self.variants.assign(user_id)

    def _score(self, users: Mapping[str, _UserBatch], counts: LiveCounts) -> None:
        """Live quality: each fresh event against the list its user was last published,
        and against each shadow variant's last list for them (labelled by the shadow).

        The definition of ``tailor evaluate`` (:mod:`worker.quality.live`); replayed events
        are not fresh, so a redone batch is not counted twice. A shadow's hits have no
        source (``unknown``): its reasons are not kept.
        """
        segment_of = self.segmenter.of
        for user in users.values():
            if not user.listed:
                continue
            shown, sources = user.state.last_list, user.state.last_sources
            shadows = {
                name: ids
                for name, ids in (user.state.shadow_lists or {}).items()
                if name in self.variants.shadows
            }
            for envelope in user.fresh:
                event = envelope.event
                if event.item_id is None or event_weight(event) <= 0:
                    continue
                labels = (user.variant, event.type.value, segment_of(event))
                counts.score(labels, event.item_id, shown, sources)
                for shadow, listed in shadows.items():  # never shown: scored all the same
                    counts.score((shadow, labels[1], labels[2]), event.item_id, listed, "")

    def _exposure(self, variants: list[str], lists: Lists) -> dict[str, BatchExposure]:
        """Per variant, what the batch's lists showed (one vectorised pass per variant)."""
        by_variant: dict[str, list[list[int]]] = {}
        for variant, rows in zip(variants, lists.rows, strict=True):
            by_variant.setdefault(variant, []).append(rows)
        categories_of = self.catalog.categories_of
        return {
            variant: batch_exposure(rows, categories_of) for variant, rows in by_variant.items()
        }

    def showable(self) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Per item row: overall popularity, and whether any user may be shown the item
        now (what the live bias figures measure against)."""
        rows = np.arange(len(self.index), dtype=np.int64)
        return self.trending.normalised(rows), recommendable(self.model_context(), rows)

    def _recommend_variants(
        self, states: Sequence[UserState], contexts: Sequence[UserContext], names: Sequence[str]
    ) -> tuple[Lists, list[_Ranked]]:
        """Each user's list made with their variant's settings: one pipeline per variant;
        and each variant's ranked candidates, for shadows that gather alike."""
        groups: dict[str, list[int]] = {}
        for slot, name in enumerate(names):
            groups.setdefault(name, []).append(slot)
        lists = Lists([[] for _ in states], ["" for _ in states], [[] for _ in states])
        ranked: list[_Ranked] = []
        for name, slots in groups.items():
            group_states = [states[slot] for slot in slots]
            group_contexts = [contexts[slot] for slot in slots]
            models = self.model_context(self.variants.settings[name])
            batch, scores = self._rank(models, group_states, group_contexts, remember=True)
            made = finish_lists(models, group_states, group_contexts, batch, scores)
            for position, slot in enumerate(slots):
                lists.items[slot] = made.items[position]
                lists.sources[slot] = made.sources[position]
                lists.rows[slot] = made.rows[position]
            ranked.append(_Ranked(slots, self._gathering[name], batch, scores))
        return lists, ranked

    def _shadows(
        self,
        states: Sequence[UserState],
        contexts: Sequence[UserContext],
        result: BatchResult,
        ranked: Sequence[_Ranked],
    ) -> None:
        """Make each shadow's lists for its users and keep them in their states (bounded:
        K ids per shadow per user); ``result`` gets the lists they replace, to score.

        A shadow that gathers and ranks candidates as a published variant does (it differs
        only in K, exploration, the category cap or the just-bought window) finishes that
        variant's ranked candidates instead of gathering them again, when it samples every
        user of that variant: the same lists at a fraction of the cost (but for the random
        draws of exploration, dealt out per variant rather than over all users at once).
        """
        shadows = self.variants.shadows
        for state in states:
            if state.shadow_lists:
                kept = {name: ids for name, ids in state.shadow_lists.items() if name in shadows}
                if kept:
                    result.shadow_lists[state.user_id] = kept
            if state.shadow_lists is not None:  # made afresh below, or emptied
                state.shadow_lists = {}
        for name in self.variants.shadows:
            slots = [
                slot
                for slot, state in enumerate(states)
                if name in self.variants.shadows_of(state.user_id)
            ]
            if not slots:
                continue
            rng = np.random.default_rng(
                [self.settings.seed, int(unit_hash(name, "shadow") * 2**32), self.totals.events]
            )
            settings = self.variants.settings[name]
            models = self.model_context(settings, rng)
            gathering = self._gathering[name]
            rest = set(slots)
            made: list[tuple[list[int], list[list[Item]]]] = []
            for group in ranked:
                if group.gathering == gathering and rest.issuperset(group.slots):
                    group_states = [states[slot] for slot in group.slots]
                    group_contexts = [contexts[slot] for slot in group.slots]
                    lists = finish_lists(
                        models, group_states, group_contexts, group.batch, group.scores
                    ).items
                    made.append((group.slots, lists))
                    rest.difference_update(group.slots)
            if rest:
                left = sorted(rest)
                lists = self.recommend(
                    [states[slot] for slot in left],
                    [contexts[slot] for slot in left],
                    settings,
                    rng=rng,
                )
                made.append((left, lists))
            for group_slots, lists in made:
                for slot, items in zip(group_slots, lists, strict=True):
                    state = states[slot]
                    if state.shadow_lists is None:
                        state.shadow_lists = {}
                    state.shadow_lists[name] = [item for item, _, _ in items]

    def _sort_out(
        self,
        batch: Sequence[Envelope],
        states: Mapping[str, UserState | None],
        result: BatchResult,
        forgotten: list[int],
        topic_id: str,
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
                if state is not None:
                    forgotten += state.sessions
                state = None
                self._shown.pop(user_id, None)
                envelopes = received[forgets[-1] + 1 :]
                if not envelopes:
                    result.erased.append(user_id)
                    continue
            listed = state is not None
            if state is None:
                state = UserState(user_id=user_id, vector=self.taste.new_user(user_id))
            result.voided += state.adopt_topic(topic_id)
            fresh = [e for e in envelopes if not state.already_applied(e.partition, e.offset)]
            result.replayed += len(envelopes) - len(fresh)
            shared = [e.offset > self.contributed.get(e.partition, -1) for e in fresh]
            users[user_id] = _UserBatch(
                state, fresh, envelopes, erase_first, shared, listed, self.variant_of(user_id)
            )
        return users

    # -- learning ---------------------------------------------------------------------------

    def _learn(
        self,
        users: Mapping[str, _UserBatch],
        forgets: Sequence[Envelope],
        forgotten: list[int],
    ) -> ModelDelta | None:
        """Update the users' states and collect what the shared models learn, then learn it.

        A fresh event (one the user's state does not hold yet) always updates the user; it
        feeds the shared models only when they do not reflect it yet (``shared``: its
        offset is past :attr:`contributed`). The two differ only after a crash between a
        published delta and the user's write, and keep both exactly-once.
        """
        settings = self.settings
        window, reach, taste_window = (
            settings.recent_window,
            settings.covis_window,
            settings.taste_window,
        )
        gap = settings.covis_session_gap_s
        taste_on = settings.part_on("taste")
        builder = DeltaBuilder()
        builder.topic_id = self.contributed_topic
        builder.lessons = self._ranker_lessons(users)
        builder.forgotten = forgotten
        for envelope in forgets:
            if envelope.offset > self.contributed.get(envelope.partition, -1):
                builder.event(envelope.partition, envelope.offset)
        folds: tuple[list[int], list[int], list[float]] = ([], [], [])
        for slot, user in enumerate(users.values()):
            state = user.state
            recent = [(self.index.row(i.item_id), i.at) for i in state.recent[-reach:]]
            history = [self.index.row(i.item_id) for i in state.recent[-taste_window:]]
            for envelope, shared in zip(user.fresh, user.shared, strict=True):
                event = envelope.event
                at = event.epoch_seconds
                state.events += 1
                state.last_seen = max(state.last_seen, at)
                state.offsets[envelope.partition] = max(
                    envelope.offset, state.offsets.get(envelope.partition, -1)
                )
                assert event.item_id is not None  # forget events never reach here
                row = self.index.row(event.item_id)
                weight = event_weight(event)
                state.remember(Interaction(event.item_id, event.type.value, at), window)
                token = None
                if weight > 0:
                    token = state.session_for(at, gap)
                    if token is None:
                        token = session_token(event.event_id)
                        state.open_session(token)
                    state.visit_at = at
                if shared:
                    builder.event(envelope.partition, envelope.offset)
                if row < 0:
                    continue
                folds[0].append(slot)
                folds[1].append(row)
                folds[2].append(weight)
                if shared:
                    builder.trend[0].append(row)
                    builder.trend[1].append(max(weight, 0.0))
                    builder.trend[2].append(at)
                    builder.segments(UserContext.of(event).segments, row, max(round(weight), 1))
                if shared and token is not None:
                    self._pairs(row, weight, at, recent, builder.pairs)
                    builder.visits[0].append(token)
                    builder.visits[1].append(row)
                    builder.visits[2].append(at)
                    if taste_on:
                        for previous in dict.fromkeys(history):
                            if previous >= 0 and previous != row:
                                builder.taste[0].append(row)
                                builder.taste[1].append(previous)
                                builder.taste[2].append(min(weight / 4.0, 1.0))
                recent = [*recent, (row, at)][-reach:]
                history = [*history, row][-taste_window:]
        delta = self._commit_delta(builder)
        if taste_on and folds[0]:
            user_vectors = np.stack([u.state.vector for u in users.values()])
            self.taste.fold(
                user_vectors,
                np.array(folds[0], dtype=np.int64),
                np.array(folds[1], dtype=np.int64),
                np.sign(np.array(folds[2])),
            )
            for slot, user in enumerate(users.values()):
                user.state.vector = user_vectors[slot]
        return delta

    def _commit_delta(self, builder: DeltaBuilder) -> ModelDelta | None:
        """Pack the batch's contributions, learn them here, and hand them on."""
        if not builder.events and not builder.forgotten:
            return None
        self.batches += 1
        negatives = self._sample_negatives(len(builder.taste[0]))
        delta, rows = builder.build(
            self.origin,
            self.batches,
            self.index.ids,
            negatives,
            self.settings.covis_half_life_s,
            len(FEATURES),
        )
        self._apply(delta, rows)
        return delta

    # -- shared models: deltas ----------------------------------------------------------

    def apply_delta(self, delta: ModelDelta) -> DeltaOutcome:
        """Learn another worker's delta, unless that would count its events twice.

        Events reach the shared models in partition order, one owner at a time, and every
        worker reads the deltas in the one order of the model topic. So a delta counts
        once exactly when each of its partitions starts past what the models already
        reflect. One wholly behind is a ``duplicate`` (a worker's own deltas read back
        after a restart from a checkpoint that already held them); one that overlaps is
        ``refused`` (a batch redone after a crash, or a worker that lost its partitions
        still publishing): every copy decides alike, so they stay in step. A delta of
        another events topic id finds what the models reflect void (:meth:`adopt_topic`).
        """
        other = other_topic(self.contributed_topic, delta.topic_id)
        outcome = judge_delta(delta.positions, {} if other else self.contributed)
        if outcome != "applied":
            return outcome
        if delta.lessons.size and delta.lessons.shape[1] != len(FEATURES):
            raise ValueError(
                f"ranker lessons with {delta.lessons.shape[1]} features, not {len(FEATURES)}"
            )
        self.adopt_topic(delta.topic_id)
        row = self.index.row
        self._apply(delta, np.array([row(item) for item in delta.items], dtype=np.int64))
        return "applied"

    def adopt_topic(self, topic_id: str) -> bool:
        """Make :attr:`contributed` offsets of topic ``topic_id``; True when they were of
        another id and were dropped.

        The same rule as a user's offsets (:meth:`UserState.adopt_topic`): a recreated
        events topic numbers from 0 again, and its events must not be taken for ones the
        models already hold, nor its deltas for duplicates.
        """
        other = other_topic(self.contributed_topic, topic_id)
        if other:
            self.contributed.clear()
        if topic_id:
            self.contributed_topic = topic_id
        return other

    def _apply(self, delta: ModelDelta, table: IntArray) -> None:
        """Learn ``delta`` (own or another worker's): the one way shared models change.

        Segments are counted before trending refreshes its cached top lists.
        """
        settings = self.settings
        if delta.lessons.size and settings.part_on("ranker"):
            self.ranker.learn_differences(delta.lessons)
        if delta.segment_key.size:
            self.trending.count_segments(
                [delta.segment_keys[k] for k in delta.segment_key.tolist()],
                table[delta.segment_item],
                delta.segment_count.astype(np.int64),
            )
        trend_rows = table[delta.trend_item]
        if trend_rows.size:
            self.catalog.ensure(int(trend_rows.max()) + 1)
            self.trending.observe(trend_rows, delta.trend_weight, delta.trend_time)
        if delta.pair_source.size:
            sources, targets = table[delta.pair_source], table[delta.pair_target]
            times = np.full(2 * sources.size, delta.pair_time)
            self.covis.observe(
                np.concatenate([sources, targets]),
                np.concatenate([targets, sources]),
                np.concatenate([delta.pair_weight, delta.pair_weight]),
                times,
            )
        if delta.forgotten.size:
            self.sessions.forget(delta.forgotten.tolist())
        if delta.visit_token.size and settings.part_on("sessions"):
            self.sessions.observe(
                delta.visit_token.tolist(),
                table[delta.visit_item].tolist(),
                delta.visit_time.tolist(),
            )
        if delta.taste_source.size and settings.part_on("taste"):
            sources = table[delta.taste_source]
            targets = table[delta.taste_target]
            negatives = table[delta.taste_negative]
            keep = (sources >= 0) & (targets >= 0) & (negatives >= 0)
            self.taste.learn_pairs(
                sources[keep], targets[keep], negatives[keep], delta.taste_weight[keep]
            )
        count_delta(delta.positions, self.contributed)
        self.totals.add(delta)

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
            if previous >= 0 and previous != row:  # both directions are learned from it
                sources.append(previous)
                targets.append(row)
                weights.append(weight)
                times.append(at)

    def _sample_negatives(self, n: int) -> IntArray:
        """Negatives drawn from the popular pool: hard negatives, as in BPR practice."""
        pool = self.trending.top()
        if pool.size == 0:
            pool = np.arange(max(len(self.index), 1), dtype=np.int64)
        return pool[self.rng.integers(0, pool.size, size=n)]

    def _ranker_lessons(self, users: Mapping[str, _UserBatch]) -> list[npt.NDArray[np.float32]]:
        """What each user taught the ranker by what they did after their previous list.

        The features are those the candidates had when the list was made (kept for the
        last ``ranker_memory_users`` users; recomputed in one batch after a restart). A
        chosen item that was among the candidates is a positive; negatives come from
        :meth:`_negatives`. A chosen item outside the candidates teaches the ranker
        nothing: no ordering of the candidates would have shown it.
        """
        learned: list[npt.NDArray[np.float32]] = []
        if not self.settings.part_on("ranker"):
            return learned
        lessons: list[tuple[_UserBatch, set[str | None]]] = []
        missing: list[_UserBatch] = []
        for user_id, user in users.items():
            chosen = {
                e.event.item_id
                for e, shared in zip(user.fresh, user.shared, strict=True)
                if shared and event_weight(e.event) > 0
            }
            if not chosen:
                continue
            lessons.append((user, chosen))
            if user_id not in self._shown and user.state.last_list:
                missing.append(user)
        groups: dict[str, list[_UserBatch]] = {}
        for user in missing:  # each with the candidates its variant's lists were made of
            groups.setdefault(self.variant_of(user.state.user_id), []).append(user)
        for name, group in groups.items():
            contexts = [UserContext.of(user.fresh[0].event) for user in group]
            batch = gather_candidates(
                self.model_context(self.variants.settings[name]),
                [user.state for user in group],
                contexts,
            )
            for slot, user in enumerate(group):
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
            learned.append(pairwise_differences(shown.features[positive], shown.features[negative]))
        return learned

    # -- recommending ---------------------------------------------------------------------------

    def recommend(
        self,
        states: Sequence[UserState],
        contexts: Sequence[UserContext],
        settings: Settings | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[list[Item]]:
        """Each user's top-K as (item id, score, reasons), best first, in one batch.

        ``settings`` are a variant's (default: the worker's). A list made with a random
        generator of its own (``rng``: a shadow's) is never shown, so the ranker does not
        remember its candidates to learn from.
        """
        return self.recommend_lists(states, contexts, settings, rng).items

    def recommend_lists(
        self,
        states: Sequence[UserState],
        contexts: Sequence[UserContext],
        settings: Settings | None = None,
        rng: np.random.Generator | None = None,
    ) -> Lists:
        """:meth:`recommend` with each listed item's source and row (for live quality)."""
        if not states:
            return Lists([], [], [])
        models = self.model_context(settings, rng)
        batch, scores = self._rank(models, states, contexts, remember=rng is None)
        return finish_lists(models, states, contexts, batch, scores)

    def _rank(
        self,
        models: ModelContext,
        states: Sequence[UserState],
        contexts: Sequence[UserContext],
        *,
        remember: bool,
    ) -> tuple[CandidateBatch, FloatArray]:
        """Every user's candidates and their ranker scores; ``remember`` the best of them
        for the ranker's next lesson when the lists will be shown."""
        batch = gather_candidates(models, states, contexts)
        scores = self.ranker.score(batch.features)
        if remember:
            remembered = batch.best(scores, _REMEMBERED_CANDIDATES)
            for state, candidates in zip(states, remembered, strict=True):
                self._remember_shown(state.user_id, candidates)
        return batch, scores

    def model_context(
        self, settings: Settings | None = None, rng: np.random.Generator | None = None
    ) -> ModelContext:
        """The models as candidate gathering and list assembly see them, for one batch,
        with a variant's ``settings`` (default: the worker's)."""
        return ModelContext(
            settings=settings or self.settings,
            index=self.index,
            catalog=self.catalog,
            trending=self.trending,
            covis=self.covis,
            content=self.content,
            sessions=self.sessions,
            taste=self.taste,
            ranker=self.ranker,
            rng=self.rng if rng is None else rng,
            deny_categories=self.deny_categories,
            category_top=self.category_top,
            sentences=self._sentences,
        )

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
