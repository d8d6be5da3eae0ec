"""Candidate generation and features for a whole micro-batch of users at once.

Sources (DESIGN.md "Models"): co-visitation with each user's recent items, taste search
over the popular pool, trending overall and in the user's segments (country, device),
same-category content neighbours, and the user's own history (reorders are common in
retail). Every source fills a fixed-width slice of one ``[users, slots]`` matrix, so the
whole batch is a handful of numpy calls instead of a loop over users (DESIGN.md "What
things cost here"). The width of that matrix, about 350 candidates with 22 features a
user, is now most of the core's cost (BENCHMARKS.md, "Issue 11: side by side").

Per-user lookups use one trick throughout: each row of the sorted candidate matrix is
offset by ``user * stride``, so the flattened matrix is globally sorted and a single
``searchsorted`` finds any (user, item) pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from worker.config import RecommenderPart
from worker.contract import Event, EventType
from worker.models.ranker import FEATURES, TREND_COLUMNS, TREND_TIMESCALES_S, Feature
from worker.recommend.context import ModelContext
from worker.state.user import UserState

__all__ = ["CandidateBatch", "Candidates", "UserContext", "gather_candidates"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_TASTE_CANDIDATES = 50
_CATEGORY_CANDIDATES = 20
_CATEGORIES_PER_USER = 3
_REPEAT_DECAY = 0.9
_NO_ROW = -1
_NOVICE_EVENTS = 5.0  # a user with this many events is half novice, half regular
#: The features that belong to each part: a part switched off leaves them at zero.
_FEATURES_OF: dict[RecommenderPart, list[Feature]] = {
    "covis": [Feature.COVIS, Feature.COVIS_SHARE, Feature.COVIS_LAST, Feature.COVIS_NOVICE],
    "taste": [Feature.TASTE, Feature.TASTE_DEPTH],
    "trending": [
        Feature.POPULARITY,
        Feature.EVENING,
        Feature.WEEKEND,
        Feature.TREND_1H,
        Feature.TREND_1D,
        Feature.TREND_7D,
        Feature.TREND_30D,
        Feature.TREND_NOVICE,
    ],
    "segment": [Feature.SEGMENT, Feature.MOBILE],
    "content": [Feature.CONTENT, Feature.SIMILAR],
    "repeat": [Feature.REPEAT, Feature.REPEAT_HABIT],
    "sessions": [Feature.SESSIONS, Feature.SESSIONS_RANK],
}
#: Interactions that never make a session's items (what the user turned away from).
_TURNED_AWAY = frozenset({EventType.DISLIKE.value, EventType.DISMISS.value})


@dataclass(frozen=True, slots=True)
class UserContext:
    """The context of the user's latest event, reduced to what the models use."""

    country: str | None
    device: str | None
    hour: int
    weekday: int
    segments: tuple[str, ...]  # most telling first; every event has at least its hour

    @classmethod
    def of(cls, event: Event) -> UserContext:
        country, device, hour = event.context.country, event.context.device, event.timestamp.hour
        segments = [f"hour:{hour}"]
        if country:
            segments.insert(0, f"country:{country}")
        if device:
            segments.append(f"device:{device}")
        return cls(country, device, hour, event.timestamp.weekday(), tuple(segments))


@dataclass(frozen=True, slots=True)
class Candidates:
    """One user's candidates, compact: what the ranker learns from later."""

    rows: IntArray  # sorted, unique
    features: npt.NDArray[np.float32]  # [rows, FEATURES]


@dataclass(frozen=True, slots=True)
class CandidateBatch:
    rows: IntArray  # [users, slots], each row sorted; -1 = empty
    valid: BoolArray  # [users, slots]: a real, first-occurring candidate
    features: npt.NDArray[np.float32]  # [users, slots, FEATURES]; float32 halves the traffic
    anchors: IntArray  # [users, slots]: the recent item that pulled it in, or -1
    similar_to: IntArray  # [users, slots]: the recent item it reads like, or -1
    anchor_categories: IntArray  # [users, _CATEGORIES_PER_USER], -2 = none
    recent: IntArray  # [users, window] newest first, -1 = empty

    def user(self, slot: int) -> Candidates:
        """One user's candidates, all of them, compact."""
        keep = self.valid[slot]
        return Candidates(self.rows[slot, keep], self.features[slot, keep].astype(np.float32))

    def best(self, scores: FloatArray, limit: int) -> list[Candidates]:
        """Every user's ``limit`` best-scored candidates, compact (what is remembered)."""
        users, width = self.rows.shape
        masked = np.where(self.valid, scores, -np.inf)
        if width > limit:
            keep = np.argpartition(-masked, limit - 1, axis=1)[:, :limit]
            keep.sort(axis=1)  # rows stay sorted, which lookups rely on
        else:
            keep = np.broadcast_to(np.arange(width), (users, width))
        rows = np.take_along_axis(self.rows, keep, 1)
        valid = np.take_along_axis(self.valid, keep, 1)
        features = self.features[np.arange(users)[:, None], keep].astype(np.float32)
        return [Candidates(rows[u][valid[u]], features[u][valid[u]]) for u in range(users)]

    def positions(self, users: IntArray, rows: IntArray) -> IntArray:
        """Flat positions of (user, row) pairs in the batch; -1 where absent."""
        return _find(self.rows, users, rows)


def gather_candidates(
    models: ModelContext,
    states: Sequence[UserState],
    contexts: Sequence[UserContext],
) -> CandidateBatch:
    """Every user's candidates from every source, with features, in one pass."""
    settings = models.settings
    users = len(states)
    recent, anchors, habit, visit = _recent_and_anchors(models, states)
    events = np.array([state.events for state in states], dtype=np.float64)
    novice = (_NOVICE_EVENTS / (_NOVICE_EVENTS + events))[:, None]
    # A part that is off costs nothing: its candidates and features are not computed.
    taste_on, segment_on = settings.part_on("taste"), settings.part_on("segment")
    vectors = np.stack([state.vector for state in states]).astype(np.float32) if taste_on else None

    neighbours, weights = models.covis.neighbours_of(anchors.ravel())
    neighbours = neighbours.reshape(users, anchors.shape[1], -1)
    weights = weights.reshape(users, anchors.shape[1], -1)
    recency = settings.covis_anchor_decay ** np.arange(anchors.shape[1], dtype=np.float64)
    weights *= recency[None, :, None]
    per_anchor = settings.covis_per_anchor
    if neighbours.shape[2] > per_anchor:
        keep = np.argpartition(-weights, per_anchor - 1, axis=2)[..., :per_anchor]
        neighbours = np.take_along_axis(neighbours, keep, axis=2)
        weights = np.take_along_axis(weights, keep, axis=2)
    covis_anchor = np.broadcast_to(anchors[:, :, None], neighbours.shape).reshape(users, -1)
    latest: FloatArray = np.zeros(neighbours.shape)
    latest[:, 0] = 1.0  # anchor 0 is the user's newest distinct item
    neighbours = neighbours.reshape(users, -1)
    weights = weights.reshape(users, -1)
    latest = latest.reshape(users, -1)

    pool = models.trending.top()
    per_scale = max(1, settings.trending_pool // 4)
    trending_pool = np.concatenate(
        [pool[: settings.trending_pool]]
        + [top[:per_scale] for top in models.trending.timescale_tops()]
    )
    trending = np.broadcast_to(trending_pool, (users, trending_pool.size))
    members: dict[str, list[int]] = {}  # segment -> the users of this batch in it
    for slot, context in enumerate(contexts if segment_on else ()):
        for key in context.segments:
            members.setdefault(key, []).append(slot)
    segment_rows = (
        _segment_candidates(models, contexts, members)
        if segment_on
        else np.zeros((users, 0), dtype=np.int64)
    )
    taste = (
        _taste_search(models, vectors, pool[: settings.taste_pool])
        if vectors is not None
        else np.zeros((users, 0), dtype=np.int64)
    )
    if settings.part_on("sessions"):
        gap = settings.covis_session_gap_s
        own = [state.session_for(state.last_seen, gap) or -1 for state in states]
        visited, visit_scores = models.sessions.recommend(own, visit, settings.session_candidates)
    else:
        visited = np.zeros((users, 0), dtype=np.int64)
        visit_scores = np.zeros((users, 0))
    anchor_categories = _anchor_categories(models, anchors)
    category = _category_candidates(models, anchor_categories)
    similar, similarity = models.content.neighbours_of(anchors.ravel())
    similar_anchor = np.repeat(anchors.ravel(), similar.shape[1]).reshape(users, -1)
    similarity = similarity.reshape(users, anchors.shape[1], -1)
    similarity *= recency[None, :, None]
    similar = similar.reshape(users, -1)
    similarity = similarity.reshape(users, -1)

    sources: dict[RecommenderPart, IntArray] = {
        "covis": neighbours,
        "sessions": visited,
        "trending": trending,
        "segment": segment_rows,
        "taste": taste,
        "content": np.concatenate([category, similar], axis=1),
        "repeat": recent,
    }
    rows = np.concatenate(
        [found for part, found in sources.items() if settings.part_on(part)]
        or [np.full((users, 1), _NO_ROW, dtype=np.int64)],
        axis=1,
    )
    rows, valid = _compact(rows)

    features = np.zeros((users, rows.shape[1], len(FEATURES)), dtype=np.float32)
    found_anchors = np.full(rows.size, _NO_ROW, dtype=np.int64)
    user_of = np.repeat(np.arange(users), neighbours.shape[1])
    position = _find(rows, user_of, neighbours.ravel())
    hit = position >= 0
    summed = np.zeros(rows.size)
    np.add.at(summed, position[hit], weights.ravel()[hit])
    covis_last = np.zeros(rows.size)
    np.add.at(covis_last, position[hit], (weights * latest).ravel()[hit])
    order = np.argsort(weights.ravel()[hit], kind="stable")  # strongest written last wins
    found_anchors[position[hit][order]] = covis_anchor.ravel()[hit][order]
    covis = summed.reshape(rows.shape)
    features[..., Feature.COVIS] = np.log1p(covis)
    strongest = covis.max(axis=1, keepdims=True)
    features[..., Feature.COVIS_SHARE] = covis / np.where(strongest > 0, strongest, 1.0)
    features[..., Feature.COVIS_LAST] = np.log1p(covis_last).reshape(rows.shape)

    safe_rows = np.where(valid, rows, 0)
    if vectors is not None:
        models.taste.ensure(int(rows.max(initial=0)) + 1)
        features[..., Feature.TASTE] = _cosine(models.taste.vectors[safe_rows], vectors)
    popularity = models.trending.normalised(safe_rows.ravel()).reshape(rows.shape)
    features[..., Feature.POPULARITY] = popularity
    features[..., TREND_COLUMNS] = models.trending.relative(safe_rows.ravel()).T.reshape(
        *rows.shape, len(TREND_TIMESCALES_S)
    )
    segment = np.zeros(rows.shape)
    for key, slots in members.items():
        scores = models.trending.segment_normalised(key, safe_rows[slots].ravel())
        segment[slots] = np.maximum(segment[slots], scores.reshape(len(slots), -1))
    features[..., Feature.SEGMENT] = segment
    categories = models.catalog.categories_of(safe_rows.ravel()).reshape(rows.shape)
    same_category = (categories[:, :, None] == anchor_categories[:, None, :]).any(axis=2)
    features[..., Feature.CONTENT] = same_category
    found_similar = _strongest_link(
        rows, similar, similarity, similar_anchor, features[..., Feature.SIMILAR]
    )

    recent_user = np.repeat(np.arange(users), recent.shape[1])
    position = _find(rows, recent_user, recent.ravel())
    hit = position >= 0
    repeat = np.zeros(rows.size)
    decay = np.tile(_REPEAT_DECAY ** np.arange(recent.shape[1], dtype=np.float64), users)
    np.add.at(repeat, position[hit], decay[hit])
    features[..., Feature.REPEAT] = repeat.reshape(rows.shape)
    _visit_features(rows, visited, visit_scores, features)

    evening = np.array([context.hour >= 18 for context in contexts], dtype=np.float64)
    weekend = np.array([context.weekday >= 5 for context in contexts], dtype=np.float64)
    mobile = np.array([context.device == "mobile" for context in contexts], dtype=np.float64)
    features[..., Feature.EVENING] = popularity * evening[:, None]
    features[..., Feature.WEEKEND] = popularity * weekend[:, None]
    features[..., Feature.MOBILE] = segment * mobile[:, None]
    features[..., Feature.COVIS_NOVICE] = features[..., Feature.COVIS_SHARE] * novice
    features[..., Feature.TREND_NOVICE] = features[..., TREND_COLUMNS].mean(axis=2) * novice
    features[..., Feature.TASTE_DEPTH] = features[..., Feature.TASTE] * (1.0 - novice)
    features[..., Feature.REPEAT_HABIT] = features[..., Feature.REPEAT] * habit[:, None]
    features[~valid] = 0.0
    for part, columns in _FEATURES_OF.items():
        if not settings.part_on(part):
            features[..., columns] = 0.0
    return CandidateBatch(
        rows,
        valid,
        features,
        found_anchors.reshape(rows.shape),
        found_similar,
        anchor_categories,
        recent,
    )


def _visit_features(
    rows: IntArray, visited: IntArray, scores: FloatArray, features: npt.NDArray[np.float32]
) -> None:
    """The similar-sessions score as a share of the user's best, and 1 / (1 + its rank).

    Both are bounded whatever the traffic: raw VSTAN scores grow with the number of
    neighbour sessions, so a weight learned on them would drift as the log grows.
    """
    if visited.shape[1] == 0:
        return
    users = rows.shape[0]
    position = _find(rows, np.repeat(np.arange(users), visited.shape[1]), visited.ravel())
    hit = position >= 0
    best = scores[:, :1]
    share = scores / np.where(best > 0, best, 1.0)
    rank = np.broadcast_to(1.0 / (1.0 + np.arange(visited.shape[1])), visited.shape)
    flat = features.reshape(-1, features.shape[-1])
    flat[position[hit], Feature.SESSIONS] = share.ravel()[hit]
    flat[position[hit], Feature.SESSIONS_RANK] = rank.ravel()[hit]


def _cosine(items: npt.NDArray[np.float32], users: npt.NDArray[np.float32]) -> FloatArray:
    """Cosine of each candidate's vector with its user's: bounded, whatever the norms.

    A raw dot product grows with the vectors' norms as training goes on, so its weight in
    the ranker would have to shrink for ever; the cosine keeps one scale all year.
    """
    dots = np.einsum("uld,ud->ul", items, users)
    norms = np.linalg.norm(items, axis=2) * np.linalg.norm(users, axis=1)[:, None]
    cosine: FloatArray = dots / np.maximum(norms, 1e-12)
    return cosine


def _strongest_link(
    rows: IntArray,
    linked: IntArray,
    strength: FloatArray,
    anchor: IntArray,
    out: npt.NDArray[np.float32],
) -> IntArray:
    """Each candidate's strongest ``linked`` strength into ``out``, and the anchor behind it."""
    users = rows.shape[0]
    user_of = np.repeat(np.arange(users), linked.shape[1])
    position = _find(rows, user_of, linked.ravel())
    hit = position >= 0
    best = np.zeros(rows.size)
    np.maximum.at(best, position[hit], strength.ravel()[hit])
    out[...] = best.reshape(rows.shape)
    found = np.full(rows.size, _NO_ROW, dtype=np.int64)
    order = np.argsort(strength.ravel()[hit], kind="stable")  # strongest written last wins
    found[position[hit][order]] = anchor.ravel()[hit][order]
    return found.reshape(rows.shape)


def _compact(rows: IntArray) -> tuple[IntArray, BoolArray]:
    """Sort each row, drop duplicates and empties, and cut the width to the fullest row.

    Dropped slots hold a sentinel above every real row, so each row stays sorted (which
    :func:`_find` relies on); ``valid`` marks the real ones.
    """
    rows = np.sort(rows, axis=1)
    valid = rows >= 0
    valid[:, 1:] &= rows[:, 1:] != rows[:, :-1]
    sentinel = int(rows.max(initial=0)) + 1
    rows = np.sort(np.where(valid, rows, sentinel), axis=1)
    width = max(int(valid.sum(axis=1).max(initial=0)), 1)
    rows = rows[:, :width]
    return rows, rows != sentinel


def _recent_and_anchors(
    models: ModelContext, states: Sequence[UserState]
) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
    """Recent rows newest first, the first few distinct ones as co-visitation anchors,
    each user's repeat habit (the share of their recent events that re-touched an item:
    retail customers reorder, film watchers do not; some people do both), and the current
    session's distinct rows, newest first (what finds similar sessions)."""
    settings = models.settings
    width = max(1, settings.recent_window)
    reach = settings.covis_recent
    recent = np.full((len(states), width), _NO_ROW, dtype=np.int64)
    anchors = np.full((len(states), reach), _NO_ROW, dtype=np.int64)
    visit = np.full((len(states), settings.session_current_items), _NO_ROW, dtype=np.int64)
    habit = np.zeros(len(states))
    lookup = models.index.lookup
    for slot, state in enumerate(states):
        session = _current_session(state, settings.covis_session_gap_s, lookup)
        session = session[: settings.session_current_items]
        visit[slot, : len(session)] = session
        rows = [lookup(interaction.item_id) for interaction in reversed(state.recent)][:width]
        recent[slot, : len(rows)] = rows
        distinct = list(dict.fromkeys(row for row in rows if row >= 0))
        anchors[slot, : min(reach, len(distinct))] = distinct[:reach]
        if len(rows) > 1:
            habit[slot] = (len(rows) - len(set(rows))) / (len(rows) - 1)
    return recent, anchors, habit, visit


def _current_session(state: UserState, gap_s: float, lookup: Callable[[str], int]) -> list[int]:
    """The distinct rows of the user's latest session, newest first (a repeat counts where
    it was last touched, as in VSTAN); a session ends at a gap longer than ``gap_s``."""
    rows: list[int] = []
    later = state.last_seen
    for interaction in reversed(state.recent):
        if later - interaction.at > gap_s:
            break
        later = interaction.at
        if interaction.type not in _TURNED_AWAY:
            rows.append(lookup(interaction.item_id))
    return list(dict.fromkeys(row for row in rows if row >= 0))


def _segment_candidates(
    models: ModelContext, contexts: Sequence[UserContext], keys: Iterable[str]
) -> IntArray:
    """Each user's two most telling segment trending lists side by side."""
    width = models.settings.trending_pool
    out = np.full((len(contexts), 2 * width), _NO_ROW, dtype=np.int64)
    tops = {key: models.trending.segment_top(key)[0][:width] for key in keys}
    for slot, context in enumerate(contexts):
        for part, key in enumerate(context.segments[:2]):
            top = tops[key]
            out[slot, part * width : part * width + top.size] = top
    return out


def _taste_search(
    models: ModelContext, vectors: npt.NDArray[np.float32], pool: IntArray
) -> IntArray:
    """Nearest items to each user's vector among the popular pool (one matrix product)."""
    users = vectors.shape[0]
    if pool.size == 0:
        return np.zeros((users, 0), dtype=np.int64)
    models.taste.ensure(int(pool.max()) + 1)
    scores = vectors @ models.taste.vectors[pool].T
    n = min(_TASTE_CANDIDATES, pool.size)
    best = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    return pool[best]


def _anchor_categories(models: ModelContext, anchors: IntArray) -> IntArray:
    """Up to three categories of each user's anchors; -2 pads (never a category id)."""
    found = models.catalog.categories_of(np.where(anchors >= 0, anchors, 0).ravel())
    found = np.where(anchors.ravel() >= 0, found, -1).reshape(anchors.shape)
    out = np.full((anchors.shape[0], _CATEGORIES_PER_USER), -2, dtype=np.int64)
    per_user = cast(list[list[int]], found.tolist())
    for slot, row in enumerate(per_user):
        distinct = list(dict.fromkeys(c for c in row if c >= 0))[:_CATEGORIES_PER_USER]
        out[slot, : len(distinct)] = distinct
    return out


def _category_candidates(models: ModelContext, categories: IntArray) -> IntArray:
    """The most popular items of each user's recent categories."""
    width = _CATEGORY_CANDIDATES
    out = np.full((categories.shape[0], categories.shape[1] * width), _NO_ROW, dtype=np.int64)
    tops: dict[int, IntArray] = {}
    for slot, row in enumerate(categories.tolist()):
        for part, category in enumerate(row):
            if category < 0:
                continue
            top = tops.get(category)
            if top is None:
                top = tops[category] = models.category_top(category, width)
            out[slot, part * width : part * width + top.size] = top
    return out


def _find(sorted_rows: IntArray, users: IntArray, rows: IntArray) -> IntArray:
    """Flat positions of (user, row) in a matrix whose rows are each sorted; -1 if absent.

    Row u is offset by ``u * stride`` so the flattened matrix is globally sorted.
    """
    stride = int(max(sorted_rows.max(initial=0), rows.max(initial=0))) + 2
    offsets = np.arange(sorted_rows.shape[0], dtype=np.int64)[:, None] * stride
    keys = (sorted_rows + 1 + offsets).ravel()
    wanted = users * stride + rows + 1
    position = np.searchsorted(keys, wanted)
    inside = position < keys.size
    clipped = np.where(inside, position, 0)
    found = inside & (keys[clipped] == wanted) & (rows >= 0)
    return np.where(found, position, -1)
