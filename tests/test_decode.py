"""Decoding: every dead-letter reason from a representative input, and never an exception.

Why: the worker decodes untrusted bytes from every frontend; one message that raises
instead of becoming a dead letter stops its partition (the loop crashes and replays it
forever). The reason is a Prometheus label and a DLQ header, so it must be the right one.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.contract import EventType
from worker.decode import DeadLetterReason, Decoded, decode_catalog_item, decode_event

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=10)
MAX_BYTES = 4096


def _decode(raw: bytes | None, max_bytes: int = MAX_BYTES) -> Decoded:
    return decode_event(raw, max_bytes=max_bytes, max_future_skew=SKEW, now=NOW)


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "e-1",
        "user_id": "u-1",
        "item_id": "i-1",
        "type": "click",
        "timestamp": "2026-11-25T11:59:00Z",
        "context": {"device": "mobile", "country": "NL"},
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def _raw(**changes: Any) -> bytes:
    return json.dumps(_body(**changes)).encode()


def _letter(raw: bytes | None, max_bytes: int = MAX_BYTES) -> tuple[DeadLetterReason, str]:
    decoded = _decode(raw, max_bytes)
    assert decoded.event is None
    assert decoded.dead_letter is not None
    assert decoded.dead_letter.detail
    return decoded.dead_letter.reason, decoded.dead_letter.field


def test_valid_event_decodes() -> None:
    decoded = _decode(_raw())
    assert decoded.dead_letter is None
    assert decoded.event is not None
    assert decoded.event.type is EventType.CLICK
    assert decoded.event.item_id == "i-1"
    assert decoded.event.context.country == "NL"


def test_valid_forget_decodes_without_item() -> None:
    decoded = _decode(_raw(type="forget", item_id=None))
    assert decoded.event is not None
    assert decoded.event.type is EventType.FORGET


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (None, DeadLetterReason.EMPTY, ""),
        (b"", DeadLetterReason.EMPTY, ""),
        (b"{" + b" " * MAX_BYTES + b"}", DeadLetterReason.OVERSIZE, ""),
        (b"{not json", DeadLetterReason.NOT_JSON, ""),
        (b"\xff\xfe\x00garbage", DeadLetterReason.NOT_JSON, ""),
        (b'{"event_id": "e-1",', DeadLetterReason.NOT_JSON, ""),
        (b"[1, 2, 3]", DeadLetterReason.NOT_AN_OBJECT, ""),
        (b"42", DeadLetterReason.NOT_AN_OBJECT, ""),
        (b'"an event"', DeadLetterReason.NOT_AN_OBJECT, ""),
        (b"null", DeadLetterReason.NOT_AN_OBJECT, ""),
        (_raw(user_id=None), DeadLetterReason.MISSING_FIELD, "user_id"),
        (_raw(timestamp=None), DeadLetterReason.MISSING_FIELD, "timestamp"),
        (_raw(item_id=None), DeadLetterReason.MISSING_FIELD, "item_id"),
        (_raw(type="purchase", item_id=None), DeadLetterReason.MISSING_FIELD, "item_id"),
        (_raw(user_id="u" * 129), DeadLetterReason.INVALID_FIELD, "user_id"),
        (_raw(event_id=17), DeadLetterReason.INVALID_FIELD, "event_id"),
        (_raw(value="lots"), DeadLetterReason.INVALID_FIELD, "value"),
        (_raw(value=1e12), DeadLetterReason.INVALID_FIELD, "value"),
        (_raw(timestamp="yesterday"), DeadLetterReason.INVALID_FIELD, "timestamp"),
        (_raw(timestamp="2026-11-25T11:59:00"), DeadLetterReason.INVALID_FIELD, "timestamp"),
        (_raw(context={"device": "x" * 300}), DeadLetterReason.INVALID_FIELD, "context.device"),
        (_raw(schema_version=2), DeadLetterReason.UNSUPPORTED_VERSION, "schema_version"),
        (_raw(schema_version="1"), DeadLetterReason.UNSUPPORTED_VERSION, "schema_version"),
        (_raw(timestamp="2026-11-25T13:00:00Z"), DeadLetterReason.FUTURE_TIMESTAMP, "timestamp"),
        (
            _raw(timestamp=int((NOW + timedelta(days=1)).timestamp() * 1000)),
            DeadLetterReason.FUTURE_TIMESTAMP,
            "timestamp",
        ),
        (_raw(type="teleport"), DeadLetterReason.UNKNOWN_TYPE, "type"),
        (_raw(type="CLICK"), DeadLetterReason.UNKNOWN_TYPE, "type"),
    ],
)
def test_dead_letter_reason(raw: bytes | None, reason: DeadLetterReason, field: str) -> None:
    assert _letter(raw) == (reason, field)


def test_every_reason_is_covered_above() -> None:
    """Adding a reason without a representative input here should fail loudly."""
    covered = {
        DeadLetterReason.EMPTY,
        DeadLetterReason.OVERSIZE,
        DeadLetterReason.NOT_JSON,
        DeadLetterReason.NOT_AN_OBJECT,
        DeadLetterReason.MISSING_FIELD,
        DeadLetterReason.INVALID_FIELD,
        DeadLetterReason.UNSUPPORTED_VERSION,
        DeadLetterReason.FUTURE_TIMESTAMP,
        DeadLetterReason.UNKNOWN_TYPE,
    }
    assert set(DeadLetterReason) == covered


def test_oversize_is_judged_before_parsing() -> None:
    raw = _raw()
    assert _decode(raw, max_bytes=len(raw)).event is not None
    assert _letter(raw, max_bytes=len(raw) - 1) == (DeadLetterReason.OVERSIZE, "")


def test_missing_item_detail_names_the_type() -> None:
    decoded = _decode(_raw(type="add_to_cart", item_id=None))
    assert decoded.dead_letter is not None
    assert "add_to_cart" in decoded.dead_letter.detail


def test_catalog_item_decodes_or_dead_letters() -> None:
    item = decode_catalog_item(b'{"item_id": "i-1", "title": "Mug"}', max_bytes=MAX_BYTES)
    assert not hasattr(item, "reason")
    assert getattr(item, "item_id", None) == "i-1"
    letter = decode_catalog_item(b'{"title": "Mug"}', max_bytes=MAX_BYTES)
    assert getattr(letter, "reason", None) is DeadLetterReason.MISSING_FIELD
    assert getattr(letter, "field", None) == "item_id"


# -- never raises -----------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
_SMALL = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=4,
)
_TEXTISH = st.text(max_size=140) | st.sampled_from(["u-1", "i-1", "", " ", "x" * 129])
_EVENT_TYPES = st.sampled_from([t.value for t in EventType])

# Epoch milliseconds that datetime can represent (years 1..9999): the range in which
# datetime can hold; out-of-range values are tested separately below.
_REPRESENTABLE_MS = st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999)
_SAFE_TIMESTAMPS = (
    _REPRESENTABLE_MS
    | st.floats(min_value=-6.2e13, max_value=2.5e14)
    | st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat())
    | _SMALL.filter(lambda v: not isinstance(v, int | float))
)
_ANY_TIMESTAMPS = st.integers() | st.floats() | _SMALL


def _mutated_events(timestamps: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid event with up to two fields made hostile, one dropped, junk added.

    Starting from a valid event lets validation get past the first field, so every
    validator (and the ones after it) meets bad input; about a third stay valid.
    """
    hostile: dict[str, st.SearchStrategy[Any]] = {
        "schema_version": st.sampled_from([2, "1", 0, 1.0]) | _SCALARS,
        "event_id": _TEXTISH | _SCALARS,
        "user_id": _TEXTISH | _SCALARS,
        "item_id": _TEXTISH | _SCALARS,
        "type": _EVENT_TYPES | _SCALARS,
        "value": st.floats(allow_nan=True, allow_infinity=True) | _SCALARS,
        "timestamp": timestamps,
        "session_id": _TEXTISH | _SCALARS,
        "context": st.dictionaries(
            st.sampled_from(["device", "country", "locale", "page", "x"]), _TEXTISH | _SCALARS
        )
        | _SMALL,
        "junk": _SMALL,
    }
    changes = st.sets(st.sampled_from(sorted(hostile)), max_size=2).flatmap(
        lambda keys: st.fixed_dictionaries({key: hostile[key] for key in sorted(keys)})
    )
    drops = st.sets(st.sampled_from(sorted(_body())), max_size=1)

    def build(change: dict[str, Any], drop: set[str]) -> dict[str, Any]:
        body = {**_body(), **change}
        for key in drop:
            body.pop(key, None)
        return body

    return st.builds(build, changes, drops)


def _encode(value: Any) -> bytes:
    """JSON as a sloppy producer would write it: NaN and Infinity literals included."""
    return json.dumps(value, allow_nan=True).encode()


def _assert_one_outcome(decoded: Decoded) -> None:
    assert isinstance(decoded, Decoded)
    assert (decoded.event is None) != (decoded.dead_letter is None)
    if decoded.dead_letter is not None:
        assert decoded.dead_letter.reason in set(DeadLetterReason)
    else:
        assert decoded.event is not None
        assert decoded.event.value is None or math.isfinite(decoded.event.value)


_PROPERTY = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_PROPERTY
@given(raw=st.binary(max_size=600) | st.none(), max_bytes=st.sampled_from([256, 4096]))
def test_arbitrary_bytes_never_raise(raw: bytes | None, max_bytes: int) -> None:
    _assert_one_outcome(_decode(raw, max_bytes))


@_PROPERTY
@given(value=_JSONISH | _mutated_events(_SAFE_TIMESTAMPS))
def test_arbitrary_json_never_raises(value: Any) -> None:
    _assert_one_outcome(_decode(_encode(value)))


@_PROPERTY
@example(value=_body(timestamp=1e20))
@given(value=_JSONISH | _mutated_events(_ANY_TIMESTAMPS))
def test_arbitrary_json_with_any_numeric_timestamp_never_raises(value: Any) -> None:
    _assert_one_outcome(_decode(_encode(value)))


@pytest.mark.parametrize("timestamp", ["1e20", "1e300", "-1e300", "Infinity", "1" + "0" * 25])
def test_out_of_range_epoch_timestamp_is_a_dead_letter(timestamp: str) -> None:
    raw = _raw(timestamp=0).replace(b'"timestamp": 0', f'"timestamp": {timestamp}'.encode())
    assert timestamp.encode() in raw
    assert _letter(raw) == (DeadLetterReason.INVALID_FIELD, "timestamp")
