"""The report as sentences a product owner can read: no PromQL, no jargon beyond HR@20.

Pure functions of the figures, so what the report says is tested without any server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worker.report.figures import CONTROL, LiveFigures, VariantQuality, compare

__all__ = ["TrendingSection", "describe_window", "live_lines", "trending_lines"]

#: What each hit source means, in the words of the lists' reasons.
SOURCE_NAMES: dict[str, str] = {
    "covisited": "bought or viewed together",
    "similar": "similar catalog text",
    "category": "same category",
    "taste": "the user's taste",
    "trending": "trending",
    "segment": "trending in the user's segment",
    "repeat": "things the user had before",
    "sessions": "visits like theirs",
    "explore": "exploration",
    "fill": "popular fill for new users",
}


@dataclass(frozen=True, slots=True)
class TrendingSection:
    """Top items of one segment ("" = everyone), named by title where one is known."""

    segment: str
    items: Sequence[str]


def describe_window(seconds: float) -> str:
    """``604800`` -> "7 days", ``3600`` -> "1 hour", ``90`` -> "90 seconds"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f} %"


def _change(value: float) -> str:
    return "" if math.isnan(value) else f" ({100 * value:+.1f} %)"


def live_lines(figures: LiveFigures, shadows: frozenset[str] = frozenset()) -> list[str]:
    """Quality, its sources, the experiment and bias, as short plain sentences."""
    window = describe_window(figures.window_s)
    if figures.scored <= 0:
        return [
            f"No list was tested in the last {window}: no user came back after a list was "
            "published (or the workers export no live quality yet)."
        ]
    published = [v for v in figures.variants if v.variant not in shadows]
    seen = _total(published)
    lines = [
        f"Quality: the lists were tested on {seen.scored:,.0f} next interactions; "
        f"{_percent(seen.hit_rate)} of them were among the 20 items shown (HR@20), "
        f"MRR@20 {seen.mrr:.3f}."
    ]
    if seen.before_scored > 0:
        verb = "rose" if seen.change > 0 else "fell" if seen.change < 0 else "held"
        lines.append(
            f"Against the {window} before ({_percent(seen.before_hit_rate)}), HR@20 "
            f"{verb}{_change(seen.change)}."
        )
    total_hits = sum(figures.hit_sources.values())
    if total_hits > 0:
        shares = sorted(figures.hit_sources.items(), key=lambda item: -item[1])
        named = ", ".join(
            f"{SOURCE_NAMES.get(reason, reason)} {100 * hits / total_hits:.0f} %"
            for reason, hits in shares[:4]
        )
        lines.append(f"Hits came from: {named}.")
    lines += _experiment_lines(figures.variants, shadows)
    for bias in figures.bias:
        if bias.variant in shadows or math.isnan(bias.coverage):
            continue
        label = "" if len(figures.bias) == 1 else f" ({bias.variant})"
        lines.append(
            f"Bias{label}: the lists showed {_percent(bias.coverage)} of the catalog"
            f"{_was(bias.before_coverage)}; {_percent(bias.popular_share)} of the slots went "
            f"to the 1 % most popular items{_was(bias.before_popular_share)}; exposure Gini "
            f"{bias.gini:.2f}; {bias.categories:.1f} categories per list."
        )
    return lines


def _was(before: float) -> str:
    return "" if math.isnan(before) else f" (was {_percent(before)})"


def _total(variants: Sequence[VariantQuality]) -> VariantQuality:
    total = VariantQuality("all")
    for variant in variants:
        total.scored += variant.scored
        total.hits += variant.hits
        total.reciprocal_ranks += variant.reciprocal_ranks
        total.before_scored += variant.before_scored
        total.before_hits += variant.before_hits
    return total


def _experiment_lines(variants: Sequence[VariantQuality], shadows: frozenset[str]) -> list[str]:
    control = next((v for v in variants if v.variant == CONTROL), None)
    others = [v for v in variants if v.variant != CONTROL]
    if control is None or not others:
        return []
    lines = [
        f"Experiment: {CONTROL} has HR@20 {_percent(control.hit_rate)} "
        f"over {control.scored:,.0f} interactions."
    ]
    leader: tuple[float, str] | None = None
    for variant in others:
        result = compare(control, variant)
        kind = " (shadow: computed, never shown)" if variant.variant in shadows else ""
        p = "" if math.isnan(result.p_value) else f", p = {result.p_value:.3f}"
        lines.append(
            f"- {variant.variant}{kind}: HR@20 {_percent(variant.hit_rate)} over "
            f"{variant.scored:,.0f}{_change(result.lift)} against {CONTROL}{p}: "
            f"{result.verdict}."
        )
        if result.verdict == "leads" and (leader is None or result.lift > leader[0]):
            leader = (result.lift, variant.variant)
    lines.append(
        f"Leader: {leader[1]}." if leader else f"Leader: none yet; {CONTROL} stays the reference."
    )
    return lines


def trending_lines(sections: Sequence[TrendingSection], titles: Mapping[str, str]) -> list[str]:
    """One line per segment: its top items, by title where the catalog names them."""
    lines = []
    for section in sections:
        where = "everyone" if not section.segment else section.segment.replace(":", " ")
        names = [titles.get(item, item) for item in section.items]
        lines.append(f"Trending for {where}: {'; '.join(names) if names else 'nothing yet'}.")
    return lines
