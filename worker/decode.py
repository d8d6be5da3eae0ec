"""Bulk decoding and validation: raw Kafka values in, valid events and dead letters out.

Errors are values here, not exceptions (the bytewax pattern): a bad message becomes a
:class:`DeadLetter` carrying a reason from a small fixed set, so it can be a metric label,
and the field that was wrong. Nothing here raises for bad input.

Duplicates: Kafka redelivers a message at the *same* offset after a crash or rebalance,
and the per-user offset guard in Redis makes that harmless. A frontend that retries a
send (or a producer without idempotence) writes the same ``event_id`` again at a *new*
offset, which the guard cannot recognise; :class:`RecentEventIds` remembers the last
``dedup_window`` event ids with where they were read, and a second copy from elsewhere is
a dead letter with reason ``duplicate``. The window is per worker and in memory: a
copy that arrives after the first has left the window, or after a restart, gets through.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from worker.contract import CatalogItem, Event
from worker.contract.events import DEFAULT_MIN_EVENT_TIME
from worker.contract.types import ID_LENGTH_CONTEXT, MAX_ID_LENGTH

__all__ = [
    "DeadLetter",
    "DeadLetterReason",
    "Decoded",
    "RecentEventIds",
    "decode_catalog_item",
    "decode_event",
]


class DeadLetterReason(StrEnum):
    """Why a message went to the DLQ; a bounded set, safe as a Prometheus label."""

    EMPTY = "empty"
    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNSUPPORTED_VERSION = "unsupported_version"
    FUTURE_TIMESTAMP = "future_timestamp"
    PAST_TIMESTAMP = "past_timestamp"
    UNKNOWN_TYPE = "unknown_type"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: DeadLetterReason
    field: str
    detail: str


@dataclass(frozen=True, slots=True)
class Decoded:
    """One message's outcome: exactly one of ``event`` and ``dead_letter`` is set."""

    event: Event | None = None
    dead_letter: DeadLetter | None = None


def decode_event(
    raw: bytes | None,
    *,
    max_bytes: int,
    max_future_skew: timedelta,
    min_event_time: datetime = DEFAULT_MIN_EVENT_TIME,
    max_id_length: int = MAX_ID_LENGTH,
    now: datetime | None = None,
) -> Decoded:
    """Validate one event; the result says why when it is not an event."""
    early = _check_size(raw, max_bytes)
    if early is not None:
        return Decoded(dead_letter=early)
    context = {
        "now": now or datetime.now(UTC),
        "max_future_skew": max_future_skew,
        "min_event_time": min_event_time,
        ID_LENGTH_CONTEXT: max_id_length,
    }
    try:
        return Decoded(event=Event.model_validate_json(raw or b"", context=context))
    except ValidationError as error:
        return Decoded(dead_letter=_explain(error))


def decode_catalog_item(
    raw: bytes, *, max_bytes: int, max_id_length: int = MAX_ID_LENGTH
) -> CatalogItem | DeadLetter:
    """Validate one catalog record under the same limits as events."""
    early = _check_size(raw, max_bytes)
    if early is not None:
        return early
    try:
        return CatalogItem.model_validate_json(raw, context={ID_LENGTH_CONTEXT: max_id_length})
    except ValidationError as error:
        return _explain(error)


def _check_size(raw: bytes | None, max_bytes: int) -> DeadLetter | None:
    if not raw:
        return DeadLetter(DeadLetterReason.EMPTY, "", "message has no value")
    if len(raw) > max_bytes:
        return DeadLetter(
            DeadLetterReason.OVERSIZE, "", f"{len(raw)} bytes exceeds the limit of {max_bytes}"
        )
    return None


def _explain(error: ValidationError) -> DeadLetter:
    """Turn pydantic's first complaint into a reason, a dotted field path and a short text."""
    first: dict[str, Any] = dict(error.errors(include_url=False)[0])
    kind = first["type"]
    field = ".".join(str(part) for part in first["loc"])
    detail = str(first["msg"]).removeprefix("Value error, ")[:300]
    if kind == "json_invalid":
        reason = DeadLetterReason.NOT_JSON
    elif kind in {"model_type", "model_attributes_type", "dict_type"} and not field:
        reason = DeadLetterReason.NOT_AN_OBJECT
    elif kind == "missing":
        reason = DeadLetterReason.MISSING_FIELD
    elif field == "schema_version":
        reason = DeadLetterReason.UNSUPPORTED_VERSION
    elif field == "type" and kind == "enum":
        reason = DeadLetterReason.UNKNOWN_TYPE
    elif field == "timestamp" and "future" in detail:
        reason = DeadLetterReason.FUTURE_TIMESTAMP
    elif field == "timestamp" and "in the past" in detail:
        reason = DeadLetterReason.PAST_TIMESTAMP
    elif kind == "value_error" and "item_id is required" in detail:
        reason, field = DeadLetterReason.MISSING_FIELD, "item_id"
    else:
        reason = DeadLetterReason.INVALID_FIELD
    return DeadLetter(reason, field, detail)


Where = tuple[str, int, int]  # topic, partition, offset


class RecentEventIds:
    """The last ``capacity`` event ids with the Kafka coordinates they were first read at.

    A bounded LRU (an ``OrderedDict``), so memory stays at ``capacity`` entries however
    many events pass. The same id at the same coordinates is Kafka redelivering one
    message (a replay the offset guard handles), not a duplicate.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, Where] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, event_id: str, where: Where) -> DeadLetter | None:
        """None for a first sighting (now remembered); a ``duplicate`` dead letter else."""
        if self.capacity == 0:
            return None
        first = self._seen.get(event_id)
        if first is None:
            self._seen[event_id] = where
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return None
        self._seen.move_to_end(event_id)
        if first == where:
            return None
        topic, partition, offset = first
        return DeadLetter(
            DeadLetterReason.DUPLICATE,
            "event_id",
            f"event id already read at {topic}[{partition}]@{offset}",
        )
