"""From ranked candidates to the published list: filters, diversity, exploration, reasons."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from worker.contract import EventType
from worker.recommend.candidates import Candidates, UserContext
from worker.state.user import UserState

if TYPE_CHECKING:
    from worker.recommend.core import Recommender

__all__ = ["finish_list"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_EXPLORE_POOL = 1000
_MIN_CONTRIBUTION = 0.05


def finish_list(
    rec: Recommender,
    state: UserState,
    context: UserContext,
    candidates: Candidates,
    scores: FloatArray,
    rng: np.random.Generator,
) -> list[tuple[str, float, list[str]]]:
    """Top-K after business filters, a per-category cap and a share of exploration slots."""
    k = rec.settings.top_k
    allowed = _allowed(rec, state, candidates.rows)
    order = np.flatnonzero(allowed)
    order = order[np.argsort(-scores[order], kind="stable")]

    cap = rec.settings.max_per_category
    categories = rec.catalog.categories_of(candidates.rows)
    explore = int(rec.settings.explore_share * k + rng.random())
    picked: list[int] = []
    per_category: dict[int, int] = {}
    for position in order.tolist():
        if len(picked) >= k - explore:
            break
        category = int(categories[position])
        if cap and category >= 0:
            if per_category.get(category, 0) >= cap:
                continue
            per_category[category] = per_category.get(category, 0) + 1
        picked.append(position)

    reasons = _reasons(rec, context, candidates, np.array(picked, dtype=np.int64))
    items = [
        (rec.index.item_id(int(candidates.rows[p])), float(scores[p]), reason)
        for p, reason in zip(picked, reasons, strict=True)
    ]
    chosen = {int(candidates.rows[p]) for p in picked}
    floor = float(scores[picked[-1]]) if picked else 0.0
    for row in _explore(rec, state, chosen, k - len(items), rng):
        items.append((rec.index.item_id(row), floor, ["something new to discover"]))
    return items


def _allowed(rec: Recommender, state: UserState, rows: IntArray) -> npt.NDArray[np.bool_]:
    """Drop unavailable or deleted items, deny-listed categories and items just bought."""
    allowed = rec.catalog.available_mask(rows)
    if rec.deny_categories:
        denied = rec.catalog.category_ids(sorted(rec.deny_categories))
        allowed &= ~np.isin(rec.catalog.categories_of(rows), denied)
    window = rec.settings.just_bought_window_s
    if window > 0:
        bought = [
            i.item_id
            for i in state.recent
            if i.type == EventType.PURCHASE.value and state.last_seen - i.at <= window
        ]
        allowed &= ~np.isin(rows, rec.index.known_rows(bought))
    disliked = [i.item_id for i in state.recent if i.type in _NEGATIVE_TYPES]
    if disliked:
        allowed &= ~np.isin(rows, rec.index.known_rows(disliked))
    return allowed


_NEGATIVE_TYPES = frozenset({EventType.DISLIKE.value, EventType.DISMISS.value})


def _explore(
    rec: Recommender, state: UserState, chosen: set[int], slots: int, rng: np.random.Generator
) -> list[int]:
    """Fill the last slots with items the user has not seen, from beyond the head.

    Cold items (known to the catalog, rarely touched) get exposure this way, which is how
    the models ever learn about them.
    """
    if slots <= 0 or len(rec.index) == 0:
        return []
    seen = chosen | {int(r) for r in rec.index.known_rows(i.item_id for i in state.recent)}
    draws = rng.integers(0, len(rec.index), size=min(_EXPLORE_POOL, 4 * slots + 8))
    allowed = rec.catalog.available_mask(draws)
    picked: list[int] = []
    for row, ok in zip(draws.tolist(), allowed.tolist(), strict=True):
        if row in seen or not ok:
            continue
        picked.append(row)
        seen.add(row)
        if len(picked) == slots:
            break
    return picked


def _reasons(
    rec: Recommender, context: UserContext, candidates: Candidates, picked: IntArray
) -> list[list[str]]:
    """For each picked candidate, the two sources that added most to its score, in words."""
    if picked.size == 0:
        return []
    contributions = candidates.features[picked] * rec.ranker.weights
    strongest = np.argsort(-contributions, axis=1)[:, :2]
    all_reasons = []
    for slot, position in enumerate(picked.tolist()):
        reasons: list[str] = []
        for feature in strongest[slot].tolist():
            if contributions[slot, feature] < _MIN_CONTRIBUTION:
                break
            text = _reason_text(rec, context, candidates, position, feature)
            if text and text not in reasons:
                reasons.append(text)
        all_reasons.append(reasons or ["popular right now"])
    return all_reasons


def _reason_text(
    rec: Recommender,
    context: UserContext,
    candidates: Candidates,
    position: int,
    feature: int,
) -> str | None:
    row = int(candidates.rows[position])
    category = rec.catalog.category_name(row)
    if feature == 0:
        anchor = int(candidates.anchors[position])
        if anchor < 0:
            return None
        return f"viewed together with {rec.catalog.title(anchor, rec.index.item_id(anchor))}"
    if feature == 1:
        return f"matches your taste in {category}" if category else "matches your taste"
    if feature in (2, 6, 7):
        return "trending now"
    if feature in (3, 8):
        if context.country:
            return f"trending in your country ({context.country})"
        return f"popular on {context.device}" if context.device else "trending now"
    if feature == 4:
        return f"more from {category}" if category else None
    if feature == 5:
        return "you showed interest in this before"
    return None
