"""Experiments: variant settings, stable assignment, and what the core does with variants.

Why: a user must see one variant for as long as the experiment runs (in every worker,
after every restart, in ``tailor evaluate --variants``), the shares must hold, a bad
variant must stop the worker at start-up, and an experiment must not disturb what it does
not touch: without variants the worker publishes exactly what it did before, and a
shadow variant never changes a published list nor teaches the ranker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.test_core import CATEGORIES, World, _item
from worker.config import CONTROL_VARIANT, ConfigError, Settings, load_settings
from worker.contract import Recommendation
from worker.recommend import BatchResult, Envelope
from worker.recommend.variants import Variants, unit_hash
from worker.state.user import SHADOW_FIELD, encode_user

ROOT = Path(__file__).resolve().parent.parent
USERS = [f"user-{n}" for n in range(100_000)]


def _settings(variants: dict[str, Any], **changes: Any) -> Settings:
    return Settings().with_overrides(variants=variants, **changes)


# -- assignment --------------------------------------------------------------------------


def test_the_hash_is_the_same_in_another_process() -> None:
    """Not Python's per-process salted ``hash``: another worker assigns alike."""
    ids = USERS[:50]
    code = (
        "import json, sys; from worker.recommend.variants import unit_hash; "
        f"print(json.dumps([unit_hash(u, 'pepper') for u in {ids!r}]))"
    )
    environment = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, env=environment, text=True
    ).stdout
    assert json.loads(output) == [unit_hash(user, "pepper") for user in ids]
    assert all(0.0 <= value < 1.0 for value in json.loads(output))


def test_assignment_is_stable_and_shares_hold_on_100k_users() -> None:
    settings = _settings({"a": {"share": 0.2}, "b": {"share": 0.3}})
    first, again = Variants(settings), Variants(settings.with_overrides())
    assigned = [first.assign(user) for user in USERS]
    assert assigned == [again.assign(user) for user in USERS]
    counts = Counter(assigned)
    assert set(counts) == {"a", "b", CONTROL_VARIANT}
    for name, share in (("a", 0.2), ("b", 0.3), (CONTROL_VARIANT, 0.5)):
        assert abs(counts[name] / len(USERS) - share) < 0.01, (name, counts)


def test_a_new_salt_reshuffles_the_users() -> None:
    variants = {"a": {"share": 0.5}}
    before = Variants(_settings(variants))
    after = Variants(_settings(variants, variant_salt="another experiment"))
    changed = sum(before.assign(user) != after.assign(user) for user in USERS) / len(USERS)
    assert 0.45 < changed < 0.55  # as two independent halvings would differ


def test_without_variants_everyone_is_control() -> None:
    variants = Variants(Settings())
    assert not variants.enabled
    assert {variants.assign(user) for user in USERS[:1000]} == {CONTROL_VARIANT}
    assert variants.published == [CONTROL_VARIANT]


def test_a_shadow_samples_its_share_apart_from_the_published_split() -> None:
    settings = _settings({"a": {"share": 0.5}, "s": {"share": 0.25, "shadow": True}})
    variants = Variants(settings)
    assert variants.published == ["a", CONTROL_VARIANT]
    shadowed = {user for user in USERS if variants.shadows_of(user) == ["s"]}
    assert abs(len(shadowed) / len(USERS) - 0.25) < 0.01
    in_a = [user for user in USERS if variants.assign(user) == "a"]
    within_a = sum(user in shadowed for user in in_a) / len(in_a)
    assert abs(within_a - 0.25) < 0.015  # independent of the published split
    whole = Variants(_settings({"s": {"share": 1.0, "shadow": True}}))
    assert all(whole.shadows_of(user) == ["s"] for user in USERS[:1000])
    assert {whole.assign(user) for user in USERS[:1000]} == {CONTROL_VARIANT}


def test_each_variant_gets_its_settings_once_and_control_the_worker_s() -> None:
    settings = _settings(
        {"short": {"share": 0.5, "settings": {"top_k": 5, "parts_off": ["covis"]}}},
        top_k=10,
    )
    variants = Variants(settings)
    assert variants.settings[CONTROL_VARIANT] is settings
    short = variants.settings["short"]
    assert (short.top_k, short.parts_off, short.explore_share) == (5, ["covis"], 0.02)
    assert (settings.top_k, settings.parts_off) == (10, [])


# -- configuration -----------------------------------------------------------------------


@pytest.fixture
def _no_tailor_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TAILOR_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("_no_tailor_environment")
def test_variants_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TAILOR_VARIANTS",
        '{"wide": {"share": 0.1, "settings": {"max_per_category": "3"}},'
        ' "quiet": {"share": 1, "shadow": true, "settings": {"explore_share": 0}}}',
    )
    monkeypatch.setenv("TAILOR_VARIANT_SALT", "spring")
    settings = load_settings()
    assert list(settings.variants) == ["wide", "quiet"]
    assert settings.variants["quiet"].shadow
    assert Variants(settings).settings["wide"].max_per_category == 3
    assert settings.variant_salt == "spring"
    assert Settings.model_validate(settings.model_dump()).variants == settings.variants


@pytest.mark.usefixtures("_no_tailor_environment")
@pytest.mark.parametrize(
    ("variants", "named"),
    [
        ({"v1": {"share": 0.1, "settings": {"seed": 3}}}, ["'v1'", "seed"]),
        ({"v1": {"share": 0.1, "settings": {"top_k": 0}}}, ["'v1'", "top_k"]),
        ({"v1": {"share": 0.1, "settings": {"explore_share": "lots"}}}, ["'v1'", "explore_share"]),
        ({"v1": {"share": 0.1, "settings": {"parts_off": ["wings"]}}}, ["'v1'", "parts_off"]),
        ({"v1": {"share": 0.1, "settings": {"parts_off": ["ranker"]}}}, ["'v1'", "ranker"]),
        ({"v1": {"share": 0.1, "settings": {"taste_pool": 5000}}}, ["'v1'", "taste_pool"]),
        ({"v1": {"share": 1.5}}, ["variants.v1.share"]),
        ({"v1": {"share": 0.1, "weight": 2}}, ["variants.v1.weight"]),
        ({"v1": {"share": 0.6}, "v2": {"share": 0.6}}, ["add up to 1.2"]),
        ({"control": {"share": 0.1}}, ["'control'"]),
        ({"Not A Label": {"share": 0.1}}, ["Not A Label"]),
    ],
)
def test_a_bad_variant_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, variants: dict[str, Any], named: list[str]
) -> None:
    monkeypatch.setenv("TAILOR_VARIANTS", json.dumps(variants))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "TAILOR_VARIANTS" in message
    for word in named:
        assert word in message


def test_shadows_do_not_count_towards_the_shares() -> None:
    settings = _settings({"a": {"share": 1.0}, "s": {"share": 1.0, "shadow": True}})
    assert {Variants(settings).assign(user) for user in USERS[:1000]} == {"a"}


# -- the core ----------------------------------------------------------------------------


def _clicks(world: World, batches: int, users: int = 24, seed: int = 5) -> list[list[Envelope]]:
    """Batches of clicks of ``users`` users, each mostly in one category."""
    rng = np.random.default_rng(seed)
    made: list[list[Envelope]] = []
    for step in range(batches):
        batch = []
        for number in range(users):
            home = CATEGORIES[number % len(CATEGORIES)]
            category = home if rng.random() < 0.8 else str(rng.choice(CATEGORIES))
            item = _item(category, int(rng.integers(0, 12)))
            batch.append(world.envelope(f"u{number}", item, minutes=10.0 * step + number / 10))
        made.append(batch)
    return made


def _run(settings: Settings, batches: int = 6) -> tuple[World, list[BatchResult]]:
    world = World(settings)
    world.background()
    return world, [world.process(batch) for batch in _clicks(world, batches)]


def test_without_variants_messages_carry_no_variant_and_states_no_shadows() -> None:
    world, results = _run(Settings().with_overrides(top_k=10), batches=2)
    for published in results[-1].published:
        assert "variant" not in orjson.loads(published.to_json())
    assert {world.rec.variant_of(p.user_id) for p in results[-1].published} == {CONTROL_VARIANT}
    assert results[-1].shadow_lists == {}
    assert all(SHADOW_FIELD not in encode_user(state) for state in world.states.values())


def test_a_shadow_changes_no_published_list_and_teaches_the_ranker_nothing() -> None:
    base = Settings().with_overrides(top_k=10)
    shadowed = base.with_overrides(
        variants={
            "tight": {"share": 1.0, "shadow": True, "settings": {"top_k": 4, "explore_share": 0.3}},
            "nobody": {"share": 0.0},
        }
    )
    plain_world, plain = _run(base)
    shadow_world, shadow = _run(shadowed)
    for without, with_shadow in zip(plain, shadow, strict=True):
        assert [p.items for p in without.published] == [p.items for p in with_shadow.published]
        assert {p.variant for p in with_shadow.published} == {CONTROL_VARIANT}
    assert shadow_world.rec.totals.lessons > 0  # the ranker did learn, from the same lists
    assert np.array_equal(plain_world.rec.ranker.weights, shadow_world.rec.ranker.weights)
    differ = 0
    for user, state in shadow_world.states.items():
        assert state.shadow_lists is not None, user
        assert set(state.shadow_lists) == {"tight"}, user
        assert len(state.shadow_lists["tight"]) == 4
        differ += state.shadow_lists["tight"] != state.last_list[:4]
    assert differ > 0  # the shadow's own settings made its lists


def test_shadow_lists_before_the_batch_are_handed_on_for_scoring() -> None:
    settings = Settings().with_overrides(
        top_k=10, variants={"tight": {"share": 1.0, "shadow": True, "settings": {"top_k": 4}}}
    )
    world = World(settings)
    world.background()
    first, second = _clicks(world, 2)
    world.process(first)
    kept = {user: dict(world.states[user].shadow_lists or {}) for user in world.states}
    result = world.process(second)
    users = {envelope.event.user_id for envelope in second}
    assert set(result.shadow_lists) == users
    assert all(result.shadow_lists[user] == kept[user] for user in users)
    assert all(len(kept[user]["tight"]) == 4 for user in users)


def test_a_shadow_is_scored_live_against_its_own_list_under_its_own_name() -> None:
    settings = Settings().with_overrides(
        top_k=10, variants={"tight": {"share": 1.0, "shadow": True, "settings": {"top_k": 4}}}
    )
    world = World(settings)
    world.background()
    first, second = _clicks(world, 2)
    world.process(first)
    before = {
        user: list((state.shadow_lists or {})["tight"]) for user, state in world.states.items()
    }
    published = {user: list(world.states[user].last_list) for user in world.states}
    # every second event goes for the shadow's top item: hits for it, counted by hand
    planted = [
        Envelope(e.event.model_copy(update={"item_id": before[e.event.user_id][0]}), 0, e.offset)
        if n % 2 == 0
        else e
        for n, e in enumerate(second)
    ]
    result = world.process(planted)
    tallies = result.quality.tallies
    shadow = [t for (variant, _, _), t in tallies.items() if variant == "tight"]
    control = [t for (variant, _, _), t in tallies.items() if variant == CONTROL_VARIANT]
    expected_shadow_hits = sum(e.event.item_id in before[e.event.user_id][:4] for e in planted)
    expected_control_hits = sum(e.event.item_id in published[e.event.user_id] for e in planted)
    assert sum(t.scored for t in shadow) == sum(t.scored for t in control) == len(planted)
    assert sum(t.hits[-1] for t in shadow) == expected_shadow_hits >= len(planted) // 2
    assert sum(t.hits[-1] for t in control) == expected_control_hits
    assert {source for variant, source in result.quality.hit_sources if variant == "tight"} == {
        "unknown"
    }


def test_each_user_gets_the_lists_of_their_variant() -> None:
    settings = Settings().with_overrides(
        top_k=10, variants={"short": {"share": 0.5, "settings": {"top_k": 4}}}
    )
    variants = Variants(settings)
    world, results = _run(settings, batches=3)
    seen = set()
    for published in results[-1].published:
        name = variants.assign(published.user_id)
        seen.add(name)
        assert published.variant == name == world.rec.variant_of(published.user_id)
        assert len(published.items) == (4 if name == "short" else 10)
        message = Recommendation.model_validate_json(published.to_json())
        assert message.variant == name
    assert seen == {"short", CONTROL_VARIANT}


def test_a_removed_shadow_is_cleared_from_the_state() -> None:
    shadowed = Settings().with_overrides(
        top_k=10, variants={"tight": {"share": 1.0, "shadow": True, "settings": {"top_k": 4}}}
    )
    world = World(shadowed)
    world.background()
    first, second = _clicks(world, 2)
    world.process(first)
    assert world.states["u0"].shadow_lists
    later = World(Settings().with_overrides(top_k=10))  # the worker restarted without it
    later.states = world.states
    later.offsets = world.offsets
    result = later.process(
        [
            Envelope(
                e.event.model_copy(update={"event_id": e.event.event_id + "-2"}), 0, 10_000 + n
            )
            for n, e in enumerate(second)
        ]
    )
    assert result.shadow_lists == {}  # no shadow configured: nothing to score
    assert later.states["u0"].shadow_lists == {}
    assert encode_user(later.states["u0"])[SHADOW_FIELD] == b"{}"


def test_a_variant_may_switch_a_part_off_for_its_users_only() -> None:
    settings = Settings().with_overrides(
        top_k=10,
        variants={"nocovis": {"share": 0.5, "settings": {"parts_off": ["covis", "sessions"]}}},
    )
    world, results = _run(settings, batches=3)
    reasons = {
        name: {
            reason
            for p in results[-1].published
            if p.variant == name
            for _, _, r in p.items
            for reason in r
        }
        for name in ("nocovis", CONTROL_VARIANT)
    }
    assert any(reason.startswith("viewed together") for reason in reasons[CONTROL_VARIANT])
    assert not any(reason.startswith("viewed together") for reason in reasons["nocovis"])
    assert world.rec.settings.parts_off == []  # the shared models still learn co-visits
    assert world.rec.totals.pairs > 0


# -- tailor evaluate --variants ----------------------------------------------------------

SAMPLE = ROOT / "worker" / "sample"
EVENTS, CATALOG = SAMPLE / "events.jsonl.gz", SAMPLE / "catalog.jsonl.gz"
EXPERIMENT = {
    "short": {"share": 0.4, "settings": {"top_k": 10}},
    "wide": {"share": 1.0, "shadow": True, "settings": {"max_per_category": 2}},
}


def _evaluate(tmp_path: Path, name: str, *extra: str) -> dict[str, dict[str, Any]]:
    from worker.cli import main

    out = tmp_path / f"{name}.json"
    argv = ["evaluate", str(EVENTS), "--catalog", str(CATALOG), "--limit", "600"]
    argv += ["--warmup", "0", "--baselines", "none", "--no-progress", "--json", str(out)]
    assert main([*argv, *extra]) == 0
    return {model["name"]: model for model in json.loads(out.read_text())["models"]}


@pytest.mark.usefixtures("_no_tailor_environment")
def test_evaluate_variants_scores_each_variant_on_its_own_users(tmp_path: Path) -> None:
    from worker.contract import EventType
    from worker.evaluate.logs import load_log
    from worker.recommend.signals import event_weight

    experiment = tmp_path / "experiment.json"
    experiment.write_text(json.dumps(EXPERIMENT))
    plain = _evaluate(tmp_path, "plain")["tailor"]
    models = _evaluate(tmp_path, "variants", "--variants", str(experiment))
    assert list(models) == ["tailor short", "tailor control", "tailor wide (shadow)"]

    # By hand: an event is scored when its user already has a list (an earlier event since
    # their last forget) and it shows interest; it counts for the user's variant.
    variants = Variants(Settings().with_overrides(variants=EXPERIMENT))
    expected: Counter[str] = Counter()
    listed: set[str] = set()
    for event in load_log(EVENTS, None, CATALOG, 600, None).events:
        if event.type is EventType.FORGET:
            listed.discard(event.user_id)
            continue
        if event.user_id in listed and event.item_id is not None and event_weight(event) > 0:
            expected[variants.assign(event.user_id)] += 1
        listed.add(event.user_id)
    assert expected["short"] > 0
    assert expected[CONTROL_VARIANT] > 0
    assert models["tailor short"]["counted"] == expected["short"]
    assert models["tailor control"]["counted"] == expected[CONTROL_VARIANT]
    assert sum(expected.values()) == plain["counted"]
    assert models["tailor wide (shadow)"]["counted"] == plain["counted"]  # all users sampled
    for model in models.values():
        assert 0 <= model["HR@10"] <= model["HR@20"] <= 1


@pytest.mark.usefixtures("_no_tailor_environment")
def test_evaluate_refuses_a_bad_variants_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    experiment = tmp_path / "experiment.json"
    experiment.write_text(json.dumps({"v1": {"share": 0.5, "settings": {"seed": 3}}}))
    argv = ["evaluate", str(EVENTS), "--catalog", str(CATALOG), "--limit", "100"]
    assert main([*argv, "--variants", str(experiment)]) == 2
    error = capsys.readouterr().err
    assert "TAILOR_VARIANTS" in error
    assert "'v1'" in error
    assert "seed" in error


def test_a_shadow_s_sample_alone_gets_its_lists() -> None:
    settings = Settings().with_overrides(
        top_k=10, variants={"some": {"share": 0.5, "shadow": True, "settings": {"top_k": 3}}}
    )
    variants = Variants(settings)
    world, _ = _run(settings, batches=2)
    users = [user for user in world.states if user.startswith("u")]
    sampled = {user for user in users if variants.shadows_of(user) == ["some"]}
    assert 0 < len(sampled) < len(users)
    for user in users:
        state = world.states[user]
        if user in sampled:
            assert state.shadow_lists is not None
            assert len(state.shadow_lists["some"]) == 3
        else:  # no field at all in their Redis hash
            assert state.shadow_lists is None
            assert SHADOW_FIELD not in encode_user(state)


def test_a_shadow_finishing_a_variant_s_ranked_candidates_makes_the_lists_it_would_gather(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortcut (no second gathering for a shadow that only finishes differently) is
    a cost saving, never a change of the shadow's lists (without exploration: finishing
    per variant instead of all at once deals the random draws out in another order)."""
    from worker.recommend import core

    settings = Settings().with_overrides(
        top_k=10,
        variants={
            "half": {"share": 0.5, "settings": {"explore_share": 0.1}},
            "tight": {
                "share": 1.0,
                "shadow": True,
                "settings": {"max_per_category": 2, "parts_off": ["explore"]},
            },
        },
    )
    shortcut, _ = _run(settings, batches=3)
    gathered = []
    monkeypatch.setattr(core, "_gathering", lambda _settings: {"never equal": object()})
    gathered_world, _ = _run(settings, batches=3)
    for user, state in shortcut.states.items():
        gathered.append(gathered_world.states[user].shadow_lists)
        assert state.shadow_lists == gathered_world.states[user].shadow_lists, user
        assert state.last_list == gathered_world.states[user].last_list, user
    assert all(lists and len(lists["tight"]) == 10 for lists in gathered)
