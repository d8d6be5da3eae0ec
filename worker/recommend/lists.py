"""From ranked candidates to published lists: filters, diversity, exploration, reasons."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from worker.contract import EventType
from worker.models.ranker import Feature
from worker.quality.sources import EXPLORE, FILL, source_char
from worker.recommend.candidates import CandidateBatch, UserContext
from worker.recommend.context import ModelContext
from worker.state.user import UserState

__all__ = ["Item", "Lists", "Reason", "finish_lists", "recommendable"]

Item = tuple[str, float, list[str]]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_MIN_CONTRIBUTION = 0.05
_NEGATIVE_TYPES = frozenset({EventType.DISLIKE.value, EventType.DISMISS.value})
_EXPLORE_DRAWS = 16
_EXPLORE_REASON = "something new to discover"


class Reason(IntEnum):
    """What a listed item's strongest features say about it (codes fit 4 bits: ``_pack``)."""

    COVISITED = 0  # "viewed together with <the anchor>"
    TASTE = 1  # "matches your taste in <category>"
    TRENDING = 2  # "trending now"
    SEGMENT = 3  # "trending in your country (<country>)"
    CATEGORY = 4  # "more from <category>"
    REPEAT = 5  # "you showed interest in this before"
    SIMILAR = 6  # "similar to <the anchor>"
    SESSIONS = 7  # "chosen in visits like yours"


#: The reason each feature speaks through: popularity at any time scale and in any
#: context says "trending now", a cross with the user's history speaks as its source.
_REASON_OF: dict[Feature, Reason] = {
    Feature.COVIS: Reason.COVISITED,
    Feature.TASTE: Reason.TASTE,
    Feature.POPULARITY: Reason.TRENDING,
    Feature.SEGMENT: Reason.SEGMENT,
    Feature.CONTENT: Reason.CATEGORY,
    Feature.REPEAT: Reason.REPEAT,
    Feature.EVENING: Reason.TRENDING,
    Feature.WEEKEND: Reason.TRENDING,
    Feature.MOBILE: Reason.SEGMENT,
    Feature.SIMILAR: Reason.SIMILAR,
    Feature.COVIS_SHARE: Reason.COVISITED,
    Feature.COVIS_LAST: Reason.COVISITED,
    Feature.TREND_1H: Reason.TRENDING,
    Feature.TREND_1D: Reason.TRENDING,
    Feature.TREND_7D: Reason.TRENDING,
    Feature.TREND_30D: Reason.TRENDING,
    Feature.COVIS_NOVICE: Reason.COVISITED,
    Feature.TREND_NOVICE: Reason.TRENDING,
    Feature.TASTE_DEPTH: Reason.TASTE,
    Feature.REPEAT_HABIT: Reason.REPEAT,
    Feature.SESSIONS: Reason.SESSIONS,
    Feature.SESSIONS_RANK: Reason.SESSIONS,
}
_REASON_OF_FEATURE = np.array([_REASON_OF[feature] for feature in Feature], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Lists:
    """A batch's lists, and for live quality where each of their items came from.

    ``sources[n]`` has one character per item of ``items[n]``
    (:mod:`worker.quality.sources`), ``rows[n]`` the items' rows in the item index.
    """

    items: list[list[Item]]
    sources: list[str]
    rows: list[list[int]]


def finish_lists(
    models: ModelContext,
    states: Sequence[UserState],
    contexts: Sequence[UserContext],
    batch: CandidateBatch,
    scores: FloatArray,
) -> Lists:
    """Each user's top-K after business filters, a per-category cap and exploration.

    Everything per candidate is numpy over the whole batch; only the final K items of
    each list are touched in Python, to build their ids and reason sentences.
    """
    k = models.settings.top_k
    users = len(states)
    scores = np.where(batch.valid & _allowed(models, states, batch), scores, -np.inf)
    cap = models.settings.max_per_category
    depth = min(scores.shape[1], k * 3 if cap else k)
    if depth == 0:
        return Lists([[] for _ in states], ["" for _ in states], [[] for _ in states])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
    top_scores = np.take_along_axis(scores, top, 1)
    top_rows = np.take_along_axis(batch.rows, top, 1)
    share = models.settings.explore_share if models.settings.part_on("explore") else 0.0
    explore = (share * k + models.rng.random(users)).astype(np.int64)
    room = k - explore
    if cap:
        keep = _capped(models, top_rows, np.isfinite(top_scores), room, cap)
    else:
        keep = (np.arange(depth)[None, :] < room[:, None]) & np.isfinite(top_scores)

    contributions = batch.features[np.arange(users)[:, None], top] * models.ranker.weights
    strongest = np.argsort(-contributions, axis=2)[..., :2]
    strength = np.take_along_axis(contributions, strongest, 2)
    anchors = np.take_along_axis(batch.anchors, top, 1)
    similar_to = np.take_along_axis(batch.similar_to, top, 1)
    reasons, codes = _reasons(
        models,
        contexts,
        np.nonzero(keep)[0],
        top_rows[keep],
        anchors[keep],
        similar_to[keep],
        strongest[keep],
        strength[keep],
    )
    draws = models.rng.integers(0, max(len(models.index), 1), size=(users, _EXPLORE_DRAWS))
    drawable = recommendable(models, draws.ravel()).reshape(draws.shape) & (len(models.index) > 0)

    ids = models.index.ids
    kept_rows = top_rows[keep].tolist()
    kept_ids = [ids[row] for row in kept_rows]
    kept_scores = top_scores[keep].tolist()
    kept_sources = "".join(source_char(code) for code in codes.tolist())
    ends = np.cumsum(keep.sum(axis=1)).tolist()
    lists: list[list[Item]] = []
    all_sources: list[str] = []
    all_rows: list[list[int]] = []
    start = 0
    for slot, end in enumerate(ends):
        items: list[Item] = list(
            zip(kept_ids[start:end], kept_scores[start:end], reasons[start:end], strict=True)
        )
        sources = kept_sources[start:end]
        rows = kept_rows[start:end]
        if len(items) < k:
            floor = items[-1][1] if items else 0.0
            taken = set(kept_rows[start:end])
            taken.update(batch.recent[slot].tolist())
            short = int(room[slot]) - len(items)
            if short > 0:
                listed = kept_rows[start:end]
                filled = _trending_fill(models, contexts[slot], short, floor, taken, listed)
                items += [item for _, item in filled]
                rows = rows + [row for row, _ in filled]
                sources += FILL * len(filled)
            for row, ok in zip(draws[slot].tolist(), drawable[slot].tolist(), strict=True):
                if len(items) >= k:
                    break
                if ok and row not in taken:
                    items.append((ids[row], floor, [_EXPLORE_REASON]))
                    rows = [*rows, row]
                    sources += EXPLORE
                    taken.add(row)
                    if len(items) == k:
                        break
        lists.append(items)
        all_sources.append(sources)
        all_rows.append(rows)
        start = end
    return Lists(lists, all_sources, all_rows)


def _trending_fill(
    models: ModelContext,
    context: UserContext,
    needed: int,
    score: float,
    taken: set[int],
    listed: list[int],
) -> list[tuple[int, Item]]:
    """Cold start: what is trending in the user's segments, then overall, for a list the
    other sources left short (a new user whose first item nobody else has touched yet).

    Only the shortfall is filled, never the exploration slots, so this costs nothing for
    users with a history and keeps new users' lists context-aware even while the trending
    and segment candidates are off (the default: they add nothing to warm users' lists).
    Each item comes with its row.
    """
    filled: list[tuple[int, Item]] = []
    cap = models.settings.max_per_category
    per_category = Counter(models.catalog.categories_of(np.array(listed, dtype=np.int64)).tolist())
    sources = [(models.trending.segment_top(key)[0], key) for key in context.segments]
    sources.append((models.trending.top(), ""))
    for rows, key in sources:
        usable = rows[recommendable(models, rows)] if rows.size else rows
        categories = models.catalog.categories_of(usable).tolist()
        for row, category in zip(usable.tolist(), categories, strict=True):
            if row in taken or (cap and category >= 0 and per_category[category] >= cap):
                continue
            taken.add(row)
            per_category[category] += 1
            filled.append((row, (models.index.ids[row], score, [_trending_reason(key)])))
            if len(filled) == needed:
                return filled
    return filled


def _trending_reason(segment: str) -> str:
    kind, _, value = segment.partition(":")
    if kind == "country":
        return f"trending in your country ({value})"
    if kind == "hour":
        return "popular at this time of day"
    if kind == "device":
        return f"popular on {value}"
    return "popular right now"


def _reasons(
    models: ModelContext,
    contexts: Sequence[UserContext],
    users: IntArray,
    rows: IntArray,
    anchors: IntArray,
    similar_to: IntArray,
    features: IntArray,
    strengths: FloatArray,
) -> tuple[list[list[str]], IntArray]:
    """Reason sentences for every listed item of the batch, flat, in list order, and
    each item's first reason code (-1: no feature strong enough to be named).

    An item's reasons depend only on its two strongest features and one detail of each
    (the co-visitation anchor, the item's category, the user's country), so each distinct
    combination is put into words once per batch and shared by every item that has it.
    """
    if rows.size == 0:
        return [], np.zeros(0, dtype=np.int64)
    countries = sorted({context.country or "" for context in contexts})
    country_ids = {country: n for n, country in enumerate(countries)}
    user_country = np.array([country_ids[context.country or ""] for context in contexts])
    categories = models.catalog.categories_of(rows)
    used = strengths >= _MIN_CONTRIBUTION
    used[:, 1] &= used[:, 0]
    codes = np.where(used, _REASON_OF_FEATURE[features], -1)
    details = np.zeros(codes.shape, dtype=np.int64)
    for part in range(2):
        feature = codes[:, part]
        details[:, part] = np.select(
            [
                feature == Reason.COVISITED,
                np.isin(feature, (Reason.TASTE, Reason.CATEGORY)),
                feature == Reason.SEGMENT,
                feature == Reason.SIMILAR,
            ],
            [anchors, categories, user_country[users], similar_to],
            0,
        )
    distinct, which = np.unique(_pack(codes, details), return_inverse=True)
    texts = _ReasonTexts(models, countries)
    said = [texts.reasons(_unpack(key)) for key in distinct.tolist()]
    return [said[n] for n in which.tolist()], codes[:, 0]


def _pack(codes: IntArray, details: IntArray) -> IntArray:
    """One int64 per (reason, detail, reason, detail).

    4 bits per reason code (-1..14) and 27 bits per detail (item rows, category or
    country ids: ``max_items`` is at most 100M < 2**27).
    """
    keys = (codes[:, 0] + 1) << 58 | (details[:, 0] + 1) << 31 | (codes[:, 1] + 1) << 27
    packed: IntArray = keys | (details[:, 1] + 1)
    return packed


def _unpack(key: int) -> list[int]:
    """Inverse of the key packing in :func:`_reasons`: (feature, detail, feature, detail)."""
    mask = (1 << 27) - 1
    return [(key >> 58) - 1, ((key >> 31) & mask) - 1, ((key >> 27) & 0xF) - 1, (key & mask) - 1]


def _capped(
    models: ModelContext, rows: IntArray, usable: npt.NDArray[np.bool_], room: IntArray, cap: int
) -> npt.NDArray[np.bool_]:
    """Greedy per-category cap over each user's ranked rows (diversity)."""
    categories = models.catalog.categories_of(np.where(usable, rows, 0).ravel()).reshape(rows.shape)
    keep = np.zeros(rows.shape, dtype=bool)
    for slot in range(rows.shape[0]):
        per_category: dict[int, int] = {}
        taken = 0
        for j, category in enumerate(categories[slot].tolist()):
            if taken >= room[slot] or not usable[slot, j]:
                break
            if category >= 0:
                if per_category.get(category, 0) >= cap:
                    continue
                per_category[category] = per_category.get(category, 0) + 1
            keep[slot, j] = True
            taken += 1
    return keep


def _allowed(
    models: ModelContext, states: Sequence[UserState], batch: CandidateBatch
) -> npt.NDArray[np.bool_]:
    """Drop unavailable or deleted items, deny-listed categories, disliked and just-bought."""
    safe = np.where(batch.valid, batch.rows, 0)
    allowed = recommendable(models, safe.ravel()).reshape(safe.shape)
    window = models.settings.just_bought_window_s
    users: list[int] = []
    blocked: list[int] = []
    lookup = models.index.lookup
    for slot, state in enumerate(states):
        for interaction in state.recent:
            if interaction.type in _NEGATIVE_TYPES or (
                window > 0
                and interaction.type == EventType.PURCHASE.value
                and state.last_seen - interaction.at <= window
            ):
                users.append(slot)
                blocked.append(lookup(interaction.item_id))
    if blocked:
        position = batch.positions(np.array(users), np.array(blocked))
        flat = allowed.reshape(-1)
        flat[position[position >= 0]] = False
    return allowed


def recommendable(models: ModelContext, rows: IntArray) -> npt.NDArray[np.bool_]:
    """Rows any user may be shown: available, not deleted, not in a deny-listed category."""
    allowed = models.catalog.available_mask(rows)
    if models.deny_categories:
        denied = models.catalog.category_ids(sorted(models.deny_categories))
        allowed &= ~np.isin(models.catalog.categories_of(rows), denied)
    return allowed


_SENTENCES_KEPT = 200_000  # ~100 bytes each: a bound, never reached by a catalog's anchors


class _ReasonTexts:
    """Reason sentences, the way a user would say them."""

    def __init__(self, models: ModelContext, countries: list[str]) -> None:
        self.models = models
        self.countries = countries

    def reasons(self, combo: list[int]) -> list[str]:
        """Words for (reason, detail, reason, detail); -1 marks an unused reason."""
        said: list[str] = []
        for reason, detail in ((combo[0], combo[1]), (combo[2], combo[3])):
            if reason < 0:
                break
            text = self.say(reason, detail)
            if text and text not in said:
                said.append(text)
        return said or ["popular right now"]

    def _title(self, row: int) -> str:
        return self.models.catalog.title(row, self.models.index.item_id(row))

    def say(self, reason: int, detail: int) -> str | None:
        """The sentence for one reason; all but the segment one (whose detail is this
        batch's country number) are kept across batches, so a batch words only what is new."""
        if reason == Reason.SEGMENT:
            return self._say(reason, detail)
        sentences = self.models.sentences
        key = (reason, detail)
        if key in sentences:
            return sentences[key]
        if len(sentences) >= _SENTENCES_KEPT:
            sentences.clear()
        said = sentences[key] = self._say(reason, detail)
        return said

    def _say(self, reason: int, detail: int) -> str | None:
        models = self.models
        if reason == Reason.COVISITED:
            if detail < 0:
                return None
            return f"viewed together with {self._title(detail)}"
        if reason in (Reason.TASTE, Reason.CATEGORY):
            category = models.catalog.category_names[detail] if detail >= 0 else None
            if reason == Reason.CATEGORY:
                return f"more from {category}" if category else None
            return f"matches your taste in {category}" if category else "matches your taste"
        if reason == Reason.TRENDING:
            return "trending now"
        if reason == Reason.SEGMENT:
            country = self.countries[detail]
            return (
                f"trending in your country ({country})"
                if country
                else "popular at this time of day"
            )
        if reason == Reason.REPEAT:
            return "you showed interest in this before"
        if reason == Reason.SESSIONS:
            return "chosen in visits like yours"
        if reason == Reason.SIMILAR:
            if detail < 0:
                return None
            return f"similar to {self._title(detail)}"
        return None
