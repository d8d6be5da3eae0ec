"""The wire contract: committed JSON Schemas, examples, and the Event/CatalogItem rules.

Why: frontends in other languages validate against ``schemas/``; if the pydantic models
change without regenerating the files, producers and the worker silently disagree. The
Event rules are what keeps hostile or broken messages out of state.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from worker.contract import CatalogItem, Event, EventType
from worker.contract.schemas import MODELS, render_schemas

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
EXAMPLES = SCHEMAS / "examples"

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=10)
CONTEXT: dict[str, Any] = {"now": NOW, "max_future_skew": SKEW}


def _event(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "e-1",
        "user_id": "u-1",
        "item_id": "i-1",
        "type": "click",
        "timestamp": "2026-11-25T09:26:00Z",
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def _validate(body: dict[str, Any]) -> Event:
    return Event.model_validate(body, context=CONTEXT)


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# -- schema files ------------------------------------------------------------------------


def test_committed_schemas_match_the_models() -> None:
    rendered = render_schemas()
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMAS.glob("*.json")}
    assert sorted(rendered) == sorted(committed), "schemas/*.json files differ from MODELS"
    for name, text in rendered.items():
        assert committed[name] == text, f"schemas/{name} drifted: run `tailor schemas`"


def test_every_model_has_an_example() -> None:
    stems = {path.stem for path in EXAMPLES.glob("*.json")}
    assert stems == set(MODELS)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_example_validates_with_model_and_schema(example: Path) -> None:
    text = example.read_text(encoding="utf-8")
    model = MODELS[example.stem]
    # Examples carry real dates; judge them from a later "now" so they never go stale.
    later = {"now": datetime(2100, 1, 1, tzinfo=UTC), "max_future_skew": SKEW}
    model.model_validate_json(text, context=later)
    errors = list(_validator(example.stem).iter_errors(json.loads(text)))
    assert errors == []


def test_schema_rejects_what_the_model_rejects() -> None:
    """The committed schema is a real constraint, not an always-true document."""
    validator = _validator("event")
    missing_user = _event()
    del missing_user["user_id"]
    assert not validator.is_valid(missing_user)
    assert not validator.is_valid(_event(type="teleport"))
    assert not validator.is_valid(_event(user_id="x" * 129))
    assert validator.is_valid(_event())
    assert validator.is_valid(_event(timestamp=1_764_062_760_000))


# -- Event rules -------------------------------------------------------------------------


def test_the_variant_field_is_optional_and_keeps_schema_version_1() -> None:
    """Adding ``variant`` kept version 1 (README "Schema versions"): a message of before
    it is still valid, one with it is valid, and readers of either ignore what they do
    not know (the schema does not forbid unknown fields)."""
    from worker.contract import Recommendation

    with_variant = json.loads((EXAMPLES / "recommendation.json").read_text(encoding="utf-8"))
    assert with_variant["variant"] == "control"
    before = {key: value for key, value in with_variant.items() if key != "variant"}
    later = {**with_variant, "a_field_of_version_1_to_come": [1, 2]}
    validator = _validator("recommendation")
    for message in (with_variant, before, later):
        assert list(validator.iter_errors(message)) == []
        assert Recommendation.model_validate(message).schema_version == 1
    assert Recommendation.model_validate(before).variant is None
    assert "variant" not in json.loads((SCHEMAS / "recommendation.json").read_text())["required"]


def test_epoch_milliseconds_and_rfc3339_are_the_same_instant() -> None:
    text = _validate(_event(timestamp="2026-11-25T09:26:00.250Z"))
    millis = int(datetime(2026, 11, 25, 9, 26, 0, 250_000, tzinfo=UTC).timestamp() * 1000)
    epoch = _validate(_event(timestamp=millis))
    offset = _validate(_event(timestamp="2026-11-25T10:26:00.250+01:00"))
    assert text.timestamp == epoch.timestamp == offset.timestamp
    assert epoch.timestamp.tzinfo is not None
    assert epoch.epoch_seconds == pytest.approx(millis / 1000)


def test_epoch_milliseconds_in_json() -> None:
    millis = int(datetime(2026, 11, 25, 9, 0, tzinfo=UTC).timestamp() * 1000)
    raw = json.dumps(_event(timestamp=millis))
    event = Event.model_validate_json(raw, context=CONTEXT)
    assert event.timestamp == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_naive_timestamp_rejected() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        _validate(_event(timestamp="2026-11-25T09:26:00"))


def test_boolean_timestamp_rejected() -> None:
    with pytest.raises(ValidationError):
        _validate(_event(timestamp=True))


def test_future_timestamp_beyond_skew_rejected() -> None:
    within = NOW + SKEW - timedelta(seconds=1)
    beyond = NOW + SKEW + timedelta(seconds=1)
    assert _validate(_event(timestamp=within.isoformat())).timestamp == within
    with pytest.raises(ValidationError, match="future"):
        _validate(_event(timestamp=beyond.isoformat()))
    with pytest.raises(ValidationError, match="future"):
        _validate(_event(timestamp=int(beyond.timestamp() * 1000)))


def test_future_skew_is_taken_from_the_context() -> None:
    ahead = (NOW + timedelta(hours=2)).isoformat()
    with pytest.raises(ValidationError):
        _validate(_event(timestamp=ahead))
    wide = {"now": NOW, "max_future_skew": timedelta(hours=3)}
    assert Event.model_validate(_event(timestamp=ahead), context=wide).type is EventType.CLICK


def test_forget_needs_no_item() -> None:
    event = _validate(_event(type="forget", item_id=None))
    assert event.type is EventType.FORGET
    assert event.item_id is None


@pytest.mark.parametrize("kind", [t.value for t in EventType if t is not EventType.FORGET])
def test_other_types_need_an_item(kind: str) -> None:
    assert _validate(_event(type=kind)).item_id == "i-1"
    with pytest.raises(ValidationError, match="item_id is required"):
        _validate(_event(type=kind, item_id=None))


def test_unknown_extra_fields_are_dropped() -> None:
    body = _event(secret_token="abc", context={"device": "mobile", "gps": [52.1, 4.3]})
    event = _validate(body)
    dumped = event.model_dump()
    assert "secret_token" not in dumped
    assert "gps" not in dumped["context"]
    assert not hasattr(event, "secret_token")
    assert event.model_extra is None
    assert event.context.device == "mobile"


def test_id_length_bound() -> None:
    assert _validate(_event(user_id="u" * 128)).user_id == "u" * 128
    for field in ("event_id", "user_id", "item_id", "session_id"):
        with pytest.raises(ValidationError):
            _validate(_event(**{field: "x" * 129}))


@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "c1\x85", "a\x00\x00b", "", " "])
def test_ids_with_control_characters_or_blank_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        _validate(_event(user_id=bad))
    with pytest.raises(ValidationError):
        _validate(_event(item_id=bad))


@pytest.mark.parametrize("bad", ["a\x00b", "\x00", "esc\x1b[31mred", "del\x7f", "c1\x9f"])
def test_ids_with_a_single_control_character_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        _validate(_event(user_id=bad))


def test_unicode_ids_accepted() -> None:
    assert _validate(_event(user_id="klant-é-日本")).user_id == "klant-é-日本"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_rejected(bad: float) -> None:
    with pytest.raises(ValidationError):
        _validate(_event(type="rate", value=bad))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_value_rejected_in_json(literal: str) -> None:
    raw = json.dumps(_event(type="rate", value=4.0)).replace("4.0", literal)
    assert literal in raw
    with pytest.raises(ValidationError):
        Event.model_validate_json(raw, context=CONTEXT)


def test_finite_value_accepted() -> None:
    assert _validate(_event(type="rate", value=4.5)).value == 4.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_catalog_embedding_must_be_finite(bad: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        CatalogItem.model_validate({"item_id": "i-1", "embedding": [0.1, bad, 0.3]})


def test_catalog_item_accepts_finite_embedding_and_drops_extras() -> None:
    item = CatalogItem.model_validate(
        {"item_id": "i-1", "category": ["home", "candles"], "embedding": [0.1, -2.0], "x": 1}
    )
    assert item.embedding == [0.1, -2.0]
    assert item.leaf_category == "candles"
    assert "x" not in item.model_dump()


def test_catalog_item_negative_price_rejected() -> None:
    with pytest.raises(ValidationError):
        CatalogItem.model_validate({"item_id": "i-1", "price": -1})
