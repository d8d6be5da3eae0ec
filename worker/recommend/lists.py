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
_EXPLORE_DRAWS = 8


def finish_lists(
    rec: Recommender,
    states: Sequence[UserState],
    contexts: Sequence[UserContext],
    batch: CandidateBatch,
    scores: FloatArray,
) -> list[list[Item]]:
    """Each user's top-K after business filters, a per-category cap and exploration."""
    k = rec.settings.top_k
    scores = np.where(batch.valid & _allowed(rec, states, batch), scores, -np.inf)
    categories = rec.catalog.categories_of(np.where(batch.valid, batch.rows, 0).ravel())
    categories = categories.reshape(batch.rows.shape)
    cap = rec.settings.max_per_category
    depth = min(scores.shape[1], k * 3 if cap else k)
    if depth == 0:
        return [[] for _ in states]
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
    explore = (rec.settings.explore_share * k + rec.rng.random(len(states))).astype(np.int64)

    lists: list[list[Item]] = []
    picked_all: list[list[int]] = []
    for slot, order in enumerate(top.tolist()):
        row_scores = scores[slot]
        picked: list[int] = []
        per_category: dict[int, int] = {}
        room = k - int(explore[slot])
        for position in order:
            if len(picked) >= room or row_scores[position] == -np.inf:
                break
            if cap:
                category = int(categories[slot, position])
                if category >= 0:
                    if per_category.get(category, 0) >= cap:
                        continue
                    per_category[category] = per_category.get(category, 0) + 1
            picked.append(position)
        picked_all.append(picked)

    reasons = _reasons(rec, contexts, batch, picked_all)
    item_id = rec.index.item_id
    for slot, picked in enumerate(picked_all):
        rows = batch.rows[slot]
        items: list[Item] = [
            (item_id(int(rows[p])), float(scores[slot, p]), reasons[slot][n])
            for n, p in enumerate(picked)
        ]
        floor = items[-1][1] if items else 0.0
        taken = {int(rows[p]) for p in picked} | {int(r) for r in batch.recent[slot] if r >= 0}
        for row in _explore(rec, taken, k - len(items)):
            items.append((item_id(row), floor, ["something new to discover"]))
        lists.append(items)
    return lists


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


def _explore(rec: Recommender, taken: set[int], slots: int) -> list[int]:
    """Fill the last slots with items the user has not seen, drawn across the catalog.

    Cold items (known to the catalog, rarely touched) get exposure this way, which is how
    the models ever learn about them.
    """
    if slots <= 0 or len(rec.index) == 0:
        return []
    draws = rec.rng.integers(0, len(rec.index), size=_EXPLORE_DRAWS * slots)
    available = _recommendable(rec, draws)
    picked: list[int] = []
    for row, ok in zip(draws.tolist(), available.tolist(), strict=True):
        if ok and row not in taken:
            picked.append(row)
            taken.add(row)
            if len(picked) == slots:
                break
    return picked


def _reasons(
    rec: Recommender,
    contexts: Sequence[UserContext],
    batch: CandidateBatch,
    picked: list[list[int]],
) -> list[list[list[str]]]:
    """For each picked candidate, the two sources that added most to its score, in words."""
    weights = rec.ranker.weights
    out: list[list[list[str]]] = []
    for slot, positions in enumerate(picked):
        if not positions:
            out.append([])
            continue
        contributions = batch.features[slot, positions] * weights
        strongest = np.argsort(-contributions, axis=1)[:, :2]
        texts = _ReasonTexts(rec, contexts[slot], batch, slot)
        user_reasons: list[list[str]] = []
        for n, position in enumerate(positions):
            reasons: list[str] = []
            for feature in strongest[n].tolist():
                if contributions[n, feature] < _MIN_CONTRIBUTION:
                    break
                text = texts.say(position, feature)
                if text and text not in reasons:
                    reasons.append(text)
            user_reasons.append(reasons or ["popular right now"])
        out.append(user_reasons)
    return out


class _ReasonTexts:
    """Reason sentences for one user's list, the way a user would say them."""

    def __init__(
        self, rec: Recommender, context: UserContext, batch: CandidateBatch, slot: int
    ) -> None:
        self.rec, self.batch, self.slot = rec, batch, slot
        if context.country:
            self.segment = f"trending in your country ({context.country})"
        elif context.device:
            self.segment = f"popular on {context.device}"
        else:
            self.segment = "trending now"

    def say(self, position: int, feature: int) -> str | None:
        rec = self.rec
        row = int(self.batch.rows[self.slot, position])
        if feature == 0:
            anchor = int(self.batch.anchors[self.slot, position])
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
