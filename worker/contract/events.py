"""Interaction events: what frontends produce to the events topic (key = user_id)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from worker.contract.types import Identifier, ShortText

__all__ = [
    "DEFAULT_MAX_FUTURE_SKEW",
    "DEFAULT_MIN_EVENT_TIME",
    "SCHEMA_VERSION",
    "Context",
    "Event",
    "EventType",
]

SCHEMA_VERSION = 1
DEFAULT_MAX_FUTURE_SKEW = timedelta(minutes=10)
# Before this an event's clock is broken (unset, or epoch seconds sent as milliseconds,
# which lands in January 1970); the worker's setting TAILOR_MIN_EVENT_TIME overrides it.
DEFAULT_MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)


class EventType(StrEnum):
    """What the user did. ``forget`` is a privacy request: erase everything about the user."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    LIKE = "like"
    DISLIKE = "dislike"
    DISMISS = "dismiss"
    RATE = "rate"
    FORGET = "forget"


def _epoch_ms_or_text(value: Any) -> Any:
    """Accept epoch milliseconds as well as RFC 3339 text, as browsers send either."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be RFC 3339 text or epoch milliseconds")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError) as error:  # NaN, inf, year 10000...
            raise ValueError("timestamp out of range") from error
    return value


Timestamp = Annotated[
    datetime,
    BeforeValidator(_epoch_ms_or_text),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "integer", "description": "epoch milliseconds"},
            ]
        }
    ),
]


class Context(BaseModel):
    """Where and how the interaction happened; only these bounded fields reach state."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    device: ShortText | None = None
    country: ShortText | None = None
    locale: ShortText | None = None
    page: ShortText | None = None
    referrer: ShortText | None = None


class Event(BaseModel):
    """One interaction. Unknown extra fields are dropped so they never reach state."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = 1
    event_id: Identifier
    user_id: Identifier
    item_id: Identifier | None = None
    type: EventType
    value: float | None = Field(default=None, ge=-1e9, le=1e9)
    timestamp: Timestamp
    session_id: Identifier | None = None
    context: Context = Field(default_factory=Context)

    @field_validator("timestamp")
    @classmethod
    def _plausible_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        """Reject clocks far ahead or far behind.

        Far ahead would pin decayed scores and TTLs in the future; far behind (before
        ``min_event_time``) is almost always an unset clock or epoch seconds sent as
        milliseconds, and would weigh as nothing while looking like a real interaction.
        """
        if value.tzinfo is None:
            raise ValueError("timestamp needs a time zone (RFC 3339) or epoch milliseconds")
        options = info.context or {}
        now: datetime = options.get("now") or datetime.now(UTC)
        skew: timedelta = options.get("max_future_skew", DEFAULT_MAX_FUTURE_SKEW)
        oldest: datetime = options.get("min_event_time", DEFAULT_MIN_EVENT_TIME)
        if value > now + skew:
            raise ValueError(f"timestamp is more than {skew} in the future")
        if value < oldest:
            raise ValueError(f"timestamp is in the past, before {oldest.isoformat()}")
        return value

    @model_validator(mode="after")
    def _item_unless_forget(self) -> Event:
        if self.type is EventType.FORGET:
            return self
        if self.item_id is None:
            raise ValueError(f"item_id is required for {self.type.value} events")
        return self

    @property
    def epoch_seconds(self) -> float:
        return self.timestamp.timestamp()
