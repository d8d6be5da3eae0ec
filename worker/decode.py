"""Bulk decoding and validation: raw Kafka values in, valid events and dead letters out.

Errors are values here, not exceptions (the bytewax pattern): a bad message becomes a
:class:`DeadLetter` carrying a reason from a small fixed set, so it can be a metric label,
and the field that was wrong. Nothing here raises for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from worker.contract import CatalogItem, Event

__all__ = ["DeadLetter", "DeadLetterReason", "Decoded", "decode_catalog_item", "decode_event"]


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
    UNKNOWN_TYPE = "unknown_type"


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
    now: datetime | None = None,
) -> Decoded:
    """Validate one event; the result says why when it is not an event."""
    early = _check_size(raw, max_bytes)
    if early is not None:
        return Decoded(dead_letter=early)
    context = {"now": now or datetime.now(UTC), "max_future_skew": max_future_skew}
    try:
        return Decoded(event=Event.model_validate_json(raw or b"", context=context))
    except ValidationError as error:
        return Decoded(dead_letter=_explain(error))


def decode_catalog_item(raw: bytes, *, max_bytes: int) -> CatalogItem | DeadLetter:
    early = _check_size(raw, max_bytes)
    if early is not None:
        return early
    try:
        return CatalogItem.model_validate_json(raw)
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
    elif kind == "value_error" and "item_id is required" in detail:
        reason, field = DeadLetterReason.MISSING_FIELD, "item_id"
    else:
        reason = DeadLetterReason.INVALID_FIELD
    return DeadLetter(reason, field, detail)
