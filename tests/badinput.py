"""Generators of bad (and oddly good) messages, each with the dead-letter reason it must get.

Why one module: the pure decoder property tests (tests/test_decode.py) and the fuzz run
against the real worker (tests/test_badinput_worker.py) must mean the same thing by
"an oversize event" or "a control character in an id". Every generator takes a
``random.Random``: Hypothesis seeds it (deterministic in CI, a failure names its seed),
and the worker fuzz seeds its own.

A generator starts from a valid event and breaks exactly one thing, so the reason and the
field it expects are unambiguous.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from worker.contract import EventType
from worker.contract.events import DEFAULT_MIN_EVENT_TIME
from worker.contract.types import MAX_ID_LENGTH
from worker.decode import DeadLetterReason

__all__ = [
    "CATALOG_CATEGORIES",
    "EVENT_CATEGORIES",
    "Bad",
    "Limits",
    "odd_unicode_event",
    "valid_catalog_item",
    "valid_event",
]

R = DeadLetterReason

# Not control characters, yet unusual: direction overrides, zero-width, combining marks,
# a byte-order mark, line separators, astral-plane letters, replacement and private use.
ODD_CHARACTERS = (
    "\u202e\u202d\u200b\u200d\u0301\u0308\ufeff\u2028\u2029\u00a0\u3000"
    "ßİıǅ中文日本語한국어עבריתالعربية😀👩‍👩‍👧\U0001d518\U0001d54f\U0010fffd\ufffd\ue000"
)
# C0 controls, DEL and C1 controls: refused in ids (and C0/DEL in context texts).
CONTROL_CHARACTERS = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
ID_FIELDS = ("event_id", "user_id", "item_id", "session_id")
CONTEXT_FIELDS = ("device", "country", "locale", "page", "referrer")
_KNOWN_TYPES = [t.value for t in EventType]
_ITEM_TYPES = [t for t in _KNOWN_TYPES if t != EventType.FORGET.value]
_YEAR_1_MS = -62_135_596_800_000
_YEAR_9999_END_MS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class Limits:
    """The decoder's settings the generators must stay inside (or just outside of)."""

    max_bytes: int
    max_id_length: int = MAX_ID_LENGTH
    now: datetime = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    max_future_skew: timedelta = timedelta(minutes=10)
    min_event_time: datetime = DEFAULT_MIN_EVENT_TIME


class Bad(NamedTuple):
    raw: bytes | None
    reason: DeadLetterReason
    field: str


def _plain_id(rng: random.Random, prefix: str) -> str:
    return prefix + "".join(rng.choices(string.ascii_letters + string.digits + "-_.:", k=12))


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def valid_event(rng: random.Random, limits: Limits, user: str | None = None) -> dict[str, Any]:
    """An event the decoder accepts, of any kind but ``forget``."""
    moment = limits.now - timedelta(seconds=rng.uniform(0, 3600))
    body: dict[str, Any] = {
        "schema_version": 1,
        "event_id": _plain_id(rng, "e-"),
        "user_id": user or _plain_id(rng, "u-"),
        "item_id": _plain_id(rng, "i-"),
        "type": rng.choice(_ITEM_TYPES),
        "timestamp": _epoch_ms(moment) if rng.random() < 0.5 else moment.isoformat(),
        "context": {"device": rng.choice(["web", "ios"]), "country": rng.choice(["NL", "DE"])},
    }
    if rng.random() < 0.3:
        body["session_id"] = _plain_id(rng, "s-")
    if body["type"] == "rate":
        body["value"] = rng.uniform(1, 5)
    return body


def _dump(body: Any, rng: random.Random) -> bytes:
    """JSON as producers write it: ASCII-escaped or raw UTF-8, NaN literals allowed."""
    return json.dumps(body, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode()


# -- events: one broken thing each -----------------------------------------------------


def _malformed_json(rng: random.Random, limits: Limits) -> Bad:
    raw = _dump(valid_event(rng, limits), rng)
    how = rng.randrange(5)
    if how == 0:  # cut short anywhere (a strict prefix of an object is never JSON)
        broken = raw[: rng.randrange(1, len(raw))]
    elif how == 1:  # a byte that is not UTF-8
        at = rng.randrange(len(raw))
        broken = raw[:at] + bytes([rng.choice([0x80, 0xC0, 0xFE, 0xFF])]) + raw[at:]
    elif how == 2:  # trailing comma
        broken = raw[:-1] + b",}"
    elif how == 3:  # single quotes, as a hand-written producer might
        broken = raw.replace(b'"', b"'")
    else:  # two objects back to back, or text around one
        broken = rng.choice([raw + raw, b"event=" + raw, raw + b" trailing"])
    return Bad(broken, R.NOT_JSON, "")


def _not_an_object(rng: random.Random, limits: Limits) -> Bad:
    value = rng.choice(
        [[valid_event(rng, limits)], rng.randint(-(10**9), 10**9), "click", None, True, 1.5, []]
    )
    return Bad(_dump(value, rng), R.NOT_AN_OBJECT, "")


def _missing_field(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    field = rng.choice(["event_id", "user_id", "item_id", "type", "timestamp"])
    del body[field]
    return Bad(_dump(body, rng), R.MISSING_FIELD, field)


def _wrong_value(rng: random.Random, *kinds: str) -> Any:
    choices: dict[str, Callable[[], Any]] = {
        "int": lambda: rng.randint(-(10**6), 10**6),
        "float": lambda: rng.uniform(-1e6, 1e6),
        "bool": lambda: rng.random() < 0.5,
        "list": lambda: [rng.randint(0, 9)],
        "dict": lambda: {"nested": rng.randint(0, 9)},
        "word": lambda: rng.choice(["yesterday", "soon", "n/a", "five", "1,5"]),
    }
    return choices[rng.choice(kinds)]()


def _wrong_type(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    target = rng.choice(
        [*ID_FIELDS, "timestamp", "value", "context", "context.sub", "schema_version", "type"]
    )
    if target in ID_FIELDS:
        body[target] = _wrong_value(rng, "int", "float", "bool", "list", "dict")
        return Bad(_dump(body, rng), R.INVALID_FIELD, target)
    if target == "timestamp":
        body[target] = _wrong_value(rng, "bool", "list", "dict", "word")
        return Bad(_dump(body, rng), R.INVALID_FIELD, target)
    if target == "value":
        body[target] = _wrong_value(rng, "list", "dict", "word")
        return Bad(_dump(body, rng), R.INVALID_FIELD, target)
    if target == "context":
        body[target] = _wrong_value(rng, "int", "float", "bool", "list", "word")
        return Bad(_dump(body, rng), R.INVALID_FIELD, target)
    if target == "context.sub":
        name = rng.choice(CONTEXT_FIELDS)
        body["context"] = {name: _wrong_value(rng, "int", "float", "bool", "list", "dict")}
        return Bad(_dump(body, rng), R.INVALID_FIELD, f"context.{name}")
    if target == "schema_version":
        body[target] = rng.choice([0, 2, 3, -1, 1.5, "1", "v1", None, [1]])
        return Bad(_dump(body, rng), R.UNSUPPORTED_VERSION, target)
    body[target] = _wrong_value(rng, "int", "float", "bool", "list", "dict")
    return Bad(_dump(body, rng), R.UNKNOWN_TYPE, "type")


def _oversize(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    body["padding"] = "x" * (limits.max_bytes + rng.randrange(1, 4 * limits.max_bytes))
    return Bad(_dump(body, rng), R.OVERSIZE, "")


def _huge_id(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    field = rng.choice(ID_FIELDS)
    length = rng.randint(limits.max_id_length + 1, limits.max_id_length * 3)
    body[field] = "".join(rng.choices(string.ascii_letters + ODD_CHARACTERS, k=length))
    return Bad(_dump(body, rng), R.INVALID_FIELD, field)


def _empty_id(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    field = rng.choice(ID_FIELDS)
    body[field] = "".join(rng.choices(" \u00a0\u3000\u2028", k=rng.randrange(0, 4)))
    return Bad(_dump(body, rng), R.INVALID_FIELD, field)


def _control_characters(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    if rng.random() < 0.75:
        field = rng.choice(ID_FIELDS)
        text = body.get(field) or _plain_id(rng, "x-")
        control = rng.choice(CONTROL_CHARACTERS)
    else:
        name = rng.choice(CONTEXT_FIELDS)
        field, text = f"context.{name}", "Amsterdam"
        control = rng.choice(CONTROL_CHARACTERS[:0x21])  # C0 and DEL: refused in texts
    at = rng.randrange(len(text) + 1)
    broken = text[:at] + control + text[at:]
    if field.startswith("context."):
        body["context"] = {field.removeprefix("context."): broken}
    else:
        body[field] = broken
    return Bad(_dump(body, rng), R.INVALID_FIELD, field)


def _as_timestamp(moment: datetime, rng: random.Random) -> int | str:
    return _epoch_ms(moment) if rng.random() < 0.5 else moment.isoformat()


def _far_future(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    ahead = limits.max_future_skew + timedelta(seconds=rng.uniform(1, 3e9))  # up to ~95 years
    body["timestamp"] = _as_timestamp(limits.now + ahead, rng)
    return Bad(_dump(body, rng), R.FUTURE_TIMESTAMP, "timestamp")


def _far_past(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    oldest = limits.min_event_time - timedelta(seconds=1)
    span = (oldest - datetime(1, 1, 1, tzinfo=UTC)).total_seconds()
    moment = oldest - timedelta(seconds=rng.uniform(0, span) ** rng.choice([1.0, 0.5]))
    body["timestamp"] = rng.choice(
        [_as_timestamp(moment, rng), 0, int(limits.now.timestamp())]  # unset; seconds as ms
    )
    return Bad(_dump(body, rng), R.PAST_TIMESTAMP, "timestamp")


def _out_of_range_timestamp(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    body["timestamp"] = 0
    raw = _dump(body, rng)
    literal = rng.choice(
        [
            str(rng.randint(_YEAR_9999_END_MS + 1, 10**30)),
            str(rng.randint(-(10**30), _YEAR_1_MS - 1)),
            f"{rng.uniform(1, 9):.3f}e{rng.randint(20, 300)}",
            "Infinity",
            "-Infinity",
            "NaN",
        ]
    )
    raw = raw.replace(b'"timestamp": 0', b'"timestamp": ' + literal.encode())
    return Bad(raw, R.INVALID_FIELD, "timestamp")


def _unknown_type(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    known = rng.choice(_KNOWN_TYPES)
    body["type"] = rng.choice(
        [
            known.upper(),
            f" {known}",
            known + "s",
            known.replace("_", "-"),
            "".join(rng.choices(string.ascii_lowercase + ODD_CHARACTERS, k=rng.randint(0, 20))),
        ]
    )
    if body["type"] in _KNOWN_TYPES:  # the random word happened to be a real type
        body["type"] = "teleport"
    return Bad(_dump(body, rng), R.UNKNOWN_TYPE, "type")


def _nan_or_infinity(rng: random.Random, limits: Limits) -> Bad:
    body = valid_event(rng, limits)
    body["value"] = rng.choice([float("nan"), float("inf"), float("-inf"), 1e300, -1e12])
    return Bad(_dump(body, rng), R.INVALID_FIELD, "value")


EVENT_CATEGORIES: dict[str, Callable[[random.Random, Limits], Bad]] = {
    "malformed_json": _malformed_json,
    "not_an_object": _not_an_object,
    "missing_field": _missing_field,
    "wrong_type": _wrong_type,
    "oversize": _oversize,
    "huge_id": _huge_id,
    "empty_id": _empty_id,
    "control_characters": _control_characters,
    "far_future": _far_future,
    "far_past": _far_past,
    "out_of_range_timestamp": _out_of_range_timestamp,
    "unknown_type": _unknown_type,
    "nan_or_infinity": _nan_or_infinity,
}


def odd_unicode_id(rng: random.Random, limits: Limits) -> str:
    """A legal id (one ASCII letter keeps it visible) full of unusual code points."""
    length = rng.randint(1, limits.max_id_length)
    body = rng.choices(ODD_CHARACTERS + string.ascii_letters, k=length - 1)
    body.insert(rng.randrange(length), rng.choice(string.ascii_letters))
    return "".join(body)


def odd_unicode_event(
    rng: random.Random, limits: Limits, user: str | None = None
) -> tuple[bytes, dict[str, Any]]:
    """A *valid* event whose ids are odd unicode: the worker must take it as it is."""
    body = valid_event(rng, limits)
    for field in ("event_id", "item_id", "user_id"):
        body[field] = odd_unicode_id(rng, limits)
    if user is not None:
        body["user_id"] = user
    return _dump(body, rng), body


# -- catalog records -------------------------------------------------------------------


def valid_catalog_item(rng: random.Random, item_id: str | None = None) -> dict[str, Any]:
    return {
        "item_id": item_id or _plain_id(rng, "i-"),
        "title": rng.choice(["Mug", "Lamp", "Tea towel"]),
        "category": ["shop", rng.choice(["kitchen", "garden"])],
        "tags": ["new"],
        "price": round(rng.uniform(1, 100), 2),
        "available": True,
        "embedding": [rng.uniform(-1, 1) for _ in range(4)],
    }


def _catalog_broken(rng: random.Random, limits: Limits) -> Bad:
    """One broken thing in a catalog record, like the event generators above."""
    body = valid_catalog_item(rng)
    how = rng.randrange(10)
    if how == 0:
        raw = _dump(body, rng)
        return Bad(raw[: rng.randrange(1, len(raw))], R.NOT_JSON, "")
    if how == 1:
        return Bad(_dump(rng.choice([[body], 7, "mug", None]), rng), R.NOT_AN_OBJECT, "")
    if how == 2:
        del body["item_id"]
        return Bad(_dump(body, rng), R.MISSING_FIELD, "item_id")
    if how == 3:
        body["padding"] = "x" * (limits.max_bytes + 1)
        return Bad(_dump(body, rng), R.OVERSIZE, "")
    if how == 4:
        body["item_id"] = "i" * rng.randint(limits.max_id_length + 1, limits.max_id_length * 3)
        return Bad(_dump(body, rng), R.INVALID_FIELD, "item_id")
    if how == 5:
        body["item_id"] = "i-" + rng.choice(CONTROL_CHARACTERS)
        return Bad(_dump(body, rng), R.INVALID_FIELD, "item_id")
    if how == 6:
        body["price"] = rng.choice([float("nan"), float("inf"), -1.0, "cheap", [1]])
        return Bad(_dump(body, rng), R.INVALID_FIELD, "price")
    if how == 7:
        body["embedding"] = [0.1, rng.choice([float("nan"), float("inf"), float("-inf")])]
        return Bad(_dump(body, rng), R.INVALID_FIELD, "embedding")
    field, value = rng.choice(
        [
            ("title", rng.choice([7, ["Mug"], "t" * 513])),
            ("category", rng.choice(["kitchen", ["a"] * 9, [1]])),
            ("tags", rng.choice(["new", ["t"] * 65])),
            ("available", rng.choice([[True], {"x": 1}, "maybe"])),
        ]
    )
    body[field] = value
    return Bad(_dump(body, rng), R.INVALID_FIELD, field)


CATALOG_CATEGORIES: dict[str, Callable[[random.Random, Limits], Bad]] = {
    "catalog_broken": _catalog_broken,
}
