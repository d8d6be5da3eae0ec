"""Prequential quality, live: each fresh event scored against its user's last list.

The definition is ``tailor evaluate``'s (``worker/evaluate/harness.py``): an event counts
when it has an item, its weight is positive (it says "more of this") and its user already
has a published list; it is a hit at K when its item is among that list's first K, and
1/rank is summed. The worker applies it to the list it actually published for the user
before this event, so online and offline figures are the same measure. Only events the
user's state does not hold yet are scored: a replay after a crash is not counted twice.

Counts are kept per micro-batch in plain dicts keyed by bounded label values (variant,
event type, segment) and handed to the metrics once per batch, not per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from worker.contract import Event
from worker.quality.sources import UNKNOWN, source_name

__all__ = [
    "KS",
    "NO_SEGMENT",
    "LiveCounts",
    "Segmenter",
    "Tally",
]

#: The cut-offs of the live hit counters (label ``k``); lists shorter than K count as K.
KS: tuple[int, ...] = (5, 10, 20)
#: The segment label when segmenting is off.
NO_SEGMENT = "all"

SegmentBy = Literal["none", "device"]


class Segmenter:
    """The segment label of an event, from a bounded set of values.

    A context value outside ``values`` is ``other`` and a missing one ``unknown``, so a
    frontend sending free text cannot make the series grow without bound.
    """

    def __init__(self, by: SegmentBy, values: Sequence[str]) -> None:
        self.by = by
        self.values = frozenset(values)

    def of(self, event: Event) -> str:
        if self.by == "none":
            return NO_SEGMENT
        value = event.context.device
        if value is None:
            return "unknown"
        return value if value in self.values else "other"


@dataclass(slots=True)
class Tally:
    """Scored events, hits at each of :data:`KS`, and the sum of 1/rank (rank <= max K)."""

    scored: int = 0
    hits: list[int] = field(default_factory=lambda: [0] * len(KS))
    reciprocal_rank: float = 0.0


@dataclass(slots=True)
class LiveCounts:
    """One batch's live quality counts, by label values."""

    #: (variant, event type, segment) -> tally
    tallies: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    #: (variant, source of the hit item) -> hits at the largest K
    hit_sources: dict[tuple[str, str], int] = field(default_factory=dict)

    def score(
        self,
        labels: tuple[str, str, str],
        item_id: str,
        shown: Sequence[str],
        sources: str,
    ) -> int:
        """Count one event whose item is ``item_id`` against the list ``shown``.

        ``sources`` holds one character per listed item (:mod:`worker.quality.sources`);
        returns the hit's rank, or 0 for a miss.
        """
        tally = self.tallies.get(labels)
        if tally is None:
            tally = self.tallies[labels] = Tally()
        tally.scored += 1
        top = KS[-1]
        try:
            rank = shown.index(item_id, 0, top) + 1
        except ValueError:
            return 0
        tally.reciprocal_rank += 1.0 / rank
        for n, k in enumerate(KS):
            if rank <= k:
                tally.hits[n] += 1
        source = source_name(sources, rank) if len(sources) == len(shown) else UNKNOWN
        key = (labels[0], source)
        self.hit_sources[key] = self.hit_sources.get(key, 0) + 1
        return rank

    @property
    def scored(self) -> int:
        return sum(tally.scored for tally in self.tallies.values())

    def hits(self, k: int) -> int:
        n = KS.index(k)
        return sum(tally.hits[n] for tally in self.tallies.values())
