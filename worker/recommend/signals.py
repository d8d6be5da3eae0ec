"""How much each kind of interaction says about a user's taste."""

from __future__ import annotations

from worker.contract import Event, EventType

__all__ = ["event_weight"]

_WEIGHTS: dict[EventType, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 2.0,
    EventType.ADD_TO_CART: 3.0,
    EventType.PURCHASE: 4.0,
    EventType.LIKE: 3.0,
    EventType.DISLIKE: -2.0,
    EventType.DISMISS: -1.0,
}


def event_weight(event: Event) -> float:
    """Positive = more of this, negative = less; ratings centre on 3 of 5."""
    if event.type is EventType.RATE:
        return max(-2.5, min(2.5, (event.value if event.value is not None else 4.0) - 3.0))
    return _WEIGHTS.get(event.type, 0.0)
