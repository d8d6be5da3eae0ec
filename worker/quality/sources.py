"""Where each listed item came from, one character per slot, kept in the user's state.

A hit is worth more to an operator when it says which part of the recommender earned it
(co-visitation, taste, trending, ...). The list assembly records the source of every slot
as one character (the strongest feature's reason, or the cold-start fill, or exploration),
the user's state keeps that string beside the list's item ids (K bytes), and the live
scoring names the hit item's source from it. The names are the bounded label values of
``tailor_live_hits_by_reason_total``.
"""

from __future__ import annotations

__all__ = [
    "EXPLORE",
    "FILL",
    "REASON_SOURCES",
    "SOURCE_NAMES",
    "UNEXPLAINED",
    "UNKNOWN",
    "source_char",
    "source_name",
]

#: Label names of :class:`worker.recommend.lists.Reason`, in the order of its codes (a
#: unit test keeps the two in step): code ``n`` is written as the digit ``n``.
REASON_SOURCES: tuple[str, ...] = (
    "covisitation",
    "taste",
    "trending",
    "segment",
    "category",
    "repeat",
    "similar",
    "sessions",
)
#: A ranked item none of whose features was strong enough to be named ("popular right now").
UNEXPLAINED = "p"
#: A slot filled from trending in the user's segments because the candidates ran short.
FILL = "f"
#: An exploration slot ("something new to discover").
EXPLORE = "x"
#: The label of a hit whose source is not known: a state written before sources were kept.
UNKNOWN = "unknown"

SOURCE_NAMES: dict[str, str] = {
    **{str(code): name for code, name in enumerate(REASON_SOURCES)},
    UNEXPLAINED: "unexplained",
    FILL: "fill",
    EXPLORE: "explore",
}


def source_char(reason: int) -> str:
    """The character of a reason code; -1 (no feature strong enough) is :data:`UNEXPLAINED`."""
    return str(reason) if 0 <= reason < len(REASON_SOURCES) else UNEXPLAINED


def source_name(sources: str, rank: int) -> str:
    """The label of the item at 1-based ``rank`` of a list whose sources are ``sources``."""
    if rank > len(sources):
        return UNKNOWN
    return SOURCE_NAMES.get(sources[rank - 1], UNKNOWN)
