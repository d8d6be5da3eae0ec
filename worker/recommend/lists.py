"""From ranked candidates to published lists: filters, diversity, exploration, reasons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from worker.contract import EventType
from worker.recommend.candidates import CandidateBatch, UserContext
from worker.state.user import UserState

if TYPE_CHECKING:
    from worker.recommend.core import Recommender

__all__ = ["Item", "finish_lists"]

Item = tuple[str, float, list[str]]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_MIN_CONTRIBUTION = 0.05
_NEGATIVE_TYPES = frozenset({EventType.DISLIKE.value, EventType.DISMISS.value})
_EXPLORE_DRAWS = 16
_EXPLORE_REASON = "something new to discover"


def finish_lists(
    rec: Recommender,
    states: Sequence[UserState],
    contexts: Sequence[UserContext],
    batch: CandidateBatch,
    scores: FloatArray,
) -> list[list[Item]]:
    """Each user's top-K after business filters, a per-category cap and exploration.

    Everything per candidate is numpy over the whole batch; only the final K items of
    each list are touched in Python, to build their ids and reason sentences.
    """
    k = rec.settings.top_k
    users = len(states)
    scores = np.where(batch.valid & _allowed(rec, states, batch), scores, -np.inf)
    cap = rec.settings.max_per_category
    depth = min(scores.shape[1], k * 3 if cap else k)
    if depth == 0:
        return [[] for _ in states]
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
    top_scores = np.take_along_axis(scores, top, 1)
    top_rows = np.take_along_axis(batch.rows, top, 1)
    explore = (rec.settings.explore_share * k + rec.rng.random(users)).astype(np.int64)
    room = k - explore
    if cap:
        keep = _capped(rec, top_rows, np.isfinite(top_scores), room, cap)
    else:
        keep = (np.arange(depth)[None, :] < room[:, None]) & np.isfinite(top_scores)

    contributions = batch.features[np.arange(users)[:, None], top] * rec.ranker.weights
    strongest = np.argsort(-contributions, axis=2)[..., :2]
    strength = np.take_along_axis(contributions, strongest, 2)
    anchors = np.take_along_axis(batch.anchors, top, 1)
    draws = rec.rng.integers(0, max(len(rec.index), 1), size=(users, _EXPLORE_DRAWS))
    drawable = _recommendable(rec, draws.ravel()).reshape(draws.shape) & (len(rec.index) > 0)

    ids = rec.index.ids
    lists: list[list[Item]] = []
    for slot in range(users):
        texts = _ReasonTexts(rec, contexts[slot])
        row_list = top_rows[slot].tolist()
        score_list = top_scores[slot].tolist()
        anchor_list = anchors[slot].tolist()
        feature_list = strongest[slot].tolist()
        strength_list = strength[slot].tolist()
        items: list[Item] = [
            (
                ids[row_list[j]],
                score_list[j],
                texts.reasons(row_list[j], anchor_list[j], feature_list[j], strength_list[j]),
            )
            for j in np.flatnonzero(keep[slot]).tolist()
        ]
        missing = k - len(items)
        if missing > 0:
            floor = items[-1][1] if items else 0.0
            taken = {row_list[j] for j in np.flatnonzero(keep[slot]).tolist()}
            taken.update(batch.recent[slot].tolist())
            for row, ok in zip(draws[slot].tolist(), drawable[slot].tolist(), strict=True):
                if ok and row not in taken:
                    items.append((ids[row], floor, [_EXPLORE_REASON]))
                    taken.add(row)
                    if len(items) == k:
                        break
        lists.append(items)
    return lists


def _capped(
    rec: Recommender, rows: IntArray, usable: npt.NDArray[np.bool_], room: IntArray, cap: int
) -> npt.NDArray[np.bool_]:
    """Greedy per-category cap over each user's ranked rows (diversity)."""
    categories = rec.catalog.categories_of(np.where(usable, rows, 0).ravel()).reshape(rows.shape)
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
    rec: Recommender, states: Sequence[UserState], batch: CandidateBatch
) -> npt.NDArray[np.bool_]:
    """Drop unavailable or deleted items, deny-listed categories, disliked and just-bought."""
    safe = np.where(batch.valid, batch.rows, 0)
    allowed = _recommendable(rec, safe.ravel()).reshape(safe.shape)
    window = rec.settings.just_bought_window_s
    users: list[int] = []
    blocked: list[int] = []
    lookup = rec.index.lookup
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


def _recommendable(rec: Recommender, rows: IntArray) -> npt.NDArray[np.bool_]:
    """Rows any user may be shown: available, not deleted, not in a deny-listed category."""
    allowed = rec.catalog.available_mask(rows)
    if rec.deny_categories:
        denied = rec.catalog.category_ids(sorted(rec.deny_categories))
        allowed &= ~np.isin(rec.catalog.categories_of(rows), denied)
    return allowed


class _ReasonTexts:
    """Reason sentences for one user's list, the way a user would say them."""

    def __init__(self, rec: Recommender, context: UserContext) -> None:
        self.rec = rec
        if context.country:
            self.segment = f"trending in your country ({context.country})"
        else:
            self.segment = "popular at this time of day"

    def reasons(
        self, row: int, anchor: int, features: list[int], strengths: list[float]
    ) -> list[str]:
        """The (up to two) strongest sources of an item's score, in words."""
        said: list[str] = []
        for feature, strength in zip(features, strengths, strict=True):
            if strength < _MIN_CONTRIBUTION:
                break
            text = self.say(row, anchor, feature)
            if text and text not in said:
                said.append(text)
        return said or ["popular right now"]

    def say(self, row: int, anchor: int, feature: int) -> str | None:
        rec = self.rec
        if feature == 0:
            if anchor < 0:
                return None
            return f"viewed together with {rec.catalog.title(anchor, rec.index.item_id(anchor))}"
        if feature == 1:
            category = rec.catalog.category_name(row)
            return f"matches your taste in {category}" if category else "matches your taste"
        if feature in (2, 6, 7):
            return "trending now"
        if feature in (3, 8):
            return self.segment
        if feature == 4:
            category = rec.catalog.category_name(row)
            return f"more from {category}" if category else None
        if feature == 5:
            return "you showed interest in this before"
        return None
