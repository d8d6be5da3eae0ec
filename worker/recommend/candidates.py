"""Candidate generation and features: where items come from, and what the ranker sees.

Sources (DESIGN.md "Models"): co-visitation with the user's recent items, taste search over
the popular pool, trending overall and in the user's segments, same-category content
neighbours, and the user's own history (repeat purchases are common in retail).
Each source is a few numpy calls per user, never a loop over items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from worker.contract import Event
from worker.models.ranker import FEATURES
from worker.state.user import UserState

if TYPE_CHECKING:
    from worker.recommend.core import Recommender

__all__ = ["Candidates", "UserContext", "UserSignals", "gather_candidates"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_TASTE_CANDIDATES = 50
_CATEGORY_CANDIDATES = 20
_REPEAT_DECAY = 0.9
_EMPTY_ROWS: IntArray = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class UserContext:
    """The context of the user's latest event, reduced to what the models use."""

    country: str | None
    device: str | None
    hour: int
    weekday: int

    @classmethod
    def of(cls, event: Event) -> UserContext:
        return cls(
            country=event.context.country,
            device=event.context.device,
            hour=event.timestamp.hour,
            weekday=event.timestamp.weekday(),
        )

    @property
    def segments(self) -> tuple[str, ...]:
        keys = []
        if self.country:
            keys.append(f"country:{self.country}")
        if self.device:
            keys.append(f"device:{self.device}")
        return tuple(keys)


@dataclass(frozen=True, slots=True)
class Candidates:
    rows: IntArray  # sorted, unique
    features: FloatArray  # [rows, FEATURES]
    anchors: IntArray  # per row: the recent item that pulled it in by co-visitation, or -1


@dataclass(frozen=True, slots=True)
class UserSignals:
    """Per-user inputs to features, computed once per list."""

    recent: IntArray  # recent rows, newest first
    anchors: IntArray  # the recent rows that pull co-visitation neighbours
    neighbours: IntArray  # [anchors, M]
    neighbour_weights: FloatArray  # [anchors, M], recency-weighted
    anchor_categories: IntArray


def user_signals(rec: Recommender, state: UserState) -> UserSignals:
    recent = rec.index.known_rows(i.item_id for i in reversed(state.recent))
    _, first = np.unique(recent, return_index=True)
    anchors = recent[np.sort(first)][: rec.settings.covis_recent]
    neighbours, weights = rec.covis.neighbours_of(anchors)
    weights = weights / (1.0 + np.arange(anchors.size, dtype=np.float64))[:, None]
    categories = rec.catalog.categories_of(anchors)
    return UserSignals(recent, anchors, neighbours, weights, categories[categories >= 0])


def gather_candidates(
    rec: Recommender, state: UserState, context: UserContext, extra: IntArray = _EMPTY_ROWS
) -> Candidates:
    """Union of every source (plus ``extra`` rows), with features for each."""
    signals = user_signals(rec, state)
    pool = rec.trending.top()
    sources = [
        signals.neighbours[signals.neighbours >= 0],
        pool[: rec.settings.trending_pool],
        signals.recent,
        extra,
        _taste_search(rec, state, pool),
    ]
    sources += [rec.trending.segment_top(key)[0] for key in context.segments]
    if signals.anchor_categories.size:
        sources.append(_category_neighbours(rec, signals.anchor_categories))
    rows = np.unique(np.concatenate(sources))
    features, anchors = candidate_features(rec, state, context, signals, rows)
    return Candidates(rows, features, anchors)


def candidate_features(
    rec: Recommender,
    state: UserState,
    context: UserContext,
    signals: UserSignals,
    rows: IntArray,
) -> tuple[FloatArray, IntArray]:
    """``[rows, FEATURES]`` and each row's co-visitation anchor (-1 when none)."""
    features = np.zeros((rows.size, len(FEATURES)))
    anchors = np.full(rows.size, -1, dtype=np.int64)
    if rows.size == 0:
        return features, anchors

    # covis: summed recency-weighted co-visitation from the anchors; remember the strongest.
    flat_rows = signals.neighbours.ravel()
    flat_weights = signals.neighbour_weights.ravel()
    flat_anchor = np.repeat(signals.anchors, signals.neighbours.shape[1])
    valid = flat_rows >= 0
    flat_rows, flat_weights, flat_anchor = flat_rows[valid], flat_weights[valid], flat_anchor[valid]
    position = np.searchsorted(rows, flat_rows)
    inside = (position < rows.size) & (rows[np.minimum(position, rows.size - 1)] == flat_rows)
    covis = np.zeros(rows.size)
    np.add.at(covis, position[inside], flat_weights[inside])
    order = np.argsort(flat_weights[inside], kind="stable")  # strongest written last wins
    anchors[position[inside][order]] = flat_anchor[inside][order]
    features[:, 0] = np.log1p(covis)

    features[:, 1] = rec.taste.scores(state.vector, rows) * 10.0
    popularity = rec.trending.normalised(rows)
    features[:, 2] = popularity
    segment = np.zeros(rows.size)
    for key in context.segments:
        segment = np.maximum(segment, rec.trending.segment_normalised(key, rows))
    features[:, 3] = segment
    if signals.anchor_categories.size:
        features[:, 4] = np.isin(rec.catalog.categories_of(rows), signals.anchor_categories)

    # repeat: recency-weighted count of the row in the user's history.
    if signals.recent.size:
        position = np.searchsorted(rows, signals.recent)
        inside = (position < rows.size) & (
            rows[np.minimum(position, rows.size - 1)] == signals.recent
        )
        repeat = np.zeros(rows.size)
        decay = _REPEAT_DECAY ** np.arange(signals.recent.size, dtype=np.float64)
        np.add.at(repeat, position[inside], decay[inside])
        features[:, 5] = repeat

    features[:, 6] = popularity * (context.hour >= 18)
    features[:, 7] = popularity * (context.weekday >= 5)
    features[:, 8] = segment * (context.device == "mobile")
    return features, anchors


def _taste_search(rec: Recommender, state: UserState, pool: IntArray) -> IntArray:
    """Nearest items to the user's vector among the popular pool (exact, one mat-vec)."""
    limit = rec.settings.taste_pool
    if limit == 0 or pool.size == 0:
        return _EMPTY_ROWS
    scanned = pool[:limit]
    scores = rec.taste.scores(state.vector, scanned)
    n = min(_TASTE_CANDIDATES, scanned.size)
    return scanned[np.argpartition(-scores, n - 1)[:n]]


def _category_neighbours(rec: Recommender, categories: IntArray) -> IntArray:
    """The most popular items of the categories the user just looked at."""
    picked = []
    for category in np.unique(categories)[:3].tolist():
        members = np.asarray(rec.catalog.members.get(category, ()), dtype=np.int64)
        if members.size > _CATEGORY_CANDIDATES:
            popularity = rec.trending.normalised(members)
            members = members[
                np.argpartition(-popularity, _CATEGORY_CANDIDATES - 1)[:_CATEGORY_CANDIDATES]
            ]
        picked.append(members)
    return np.concatenate(picked) if picked else _EMPTY_ROWS
