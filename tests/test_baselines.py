"""Baselines of the evaluation harness, on small logs whose right answer is known."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from worker.contract import Event, EventType
from worker.evaluate.baselines import (
    BASELINE_NAMES,
    DEFAULT_PARAMS,
    PARAM_GRIDS,
    Baseline,
    make_baseline,
    make_baselines,
)
from worker.evaluate.baselines import cooccurrence as cooccurrence_module
from worker.evaluate.baselines.als import RetrainedAls
from worker.evaluate.baselines.common import BaselineBase, ItemScores
from worker.evaluate.baselines.cooccurrence import SparseRows
from worker.evaluate.baselines.vstan import Vstan

_START = datetime(2024, 1, 1, tzinfo=UTC)


class _Log:
    """Builds events with increasing ids; times are seconds after a fixed start."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(
        self,
        user: str,
        item: str | None,
        at: float,
        session: str | None = None,
        kind: EventType = EventType.PURCHASE,
    ) -> Event:
        event = Event(
            event_id=f"e{len(self.events)}",
            user_id=user,
            item_id=item,
            type=kind,
            timestamp=_START + timedelta(seconds=at),
            session_id=session,
        )
        self.events.append(event)
        return event

    def basket(self, user: str, items: Sequence[str], at: float, session: str) -> None:
        for item in items:
            self.add(user, item, at, session)


def _probe(user: str, at: float = 10**6) -> Event:
    """A recommend request for ``user`` (the harness passes the user's latest event)."""
    return Event(
        event_id=f"probe-{user}",
        user_id=user,
        item_id="nothing",
        type=EventType.VIEW,
        timestamp=_START + timedelta(seconds=at),
    )


def _replay(model: Baseline, events: Sequence[Event]) -> None:
    """One event per batch, as the harness does when consecutive rows are one user's."""
    for event in events:
        model.learn([event])


def _popularity_log() -> _Log:
    log = _Log()
    for n, item in enumerate(["A", "A", "A", "B", "B", "C"]):
        log.add(f"u{n}", item, n)
    return log


def test_popular_lists_the_most_bought_first() -> None:
    model = make_baseline("popular")
    _replay(model, _popularity_log().events)
    assert model.recommend([_probe("stranger")], 3) == [["A", "B", "C"]]
    assert model.recommend([_probe("stranger")], 2) == [["A", "B"]]


def test_popular_hides_the_current_session_when_told() -> None:
    log = _popularity_log()
    log.add("shopper", "A", 10, session="s1")
    hiding = make_baseline("popular", {"hide_session": True})
    showing = make_baseline("popular", {"hide_session": False})
    for model in (hiding, showing):
        _replay(model, log.events)
    assert hiding.recommend([_probe("shopper")], 2) == [["B", "C"]]
    assert showing.recommend([_probe("shopper")], 2) == [["A", "B"]]


def test_negative_and_neutral_events_teach_nothing() -> None:
    log = _popularity_log()
    for n in range(5):
        log.add(f"hater{n}", "C", 10 + n, kind=EventType.DISLIKE)
    model = make_baseline("popular")
    _replay(model, log.events)
    assert model.recommend([_probe("stranger")], 3) == [["A", "B", "C"]]


def test_trending_prefers_the_recent_item_over_an_older_more_bought_one() -> None:
    log = _Log()
    for n in range(3):
        log.add(f"old{n}", "OLD", n)
    log.add("new", "NEW", 7200)
    trending = make_baseline("trending", {"half_life_s": 600.0})
    popular = make_baseline("popular")
    for model in (trending, popular):
        _replay(model, log.events)
    assert trending.recommend([_probe("x")], 2) == [["NEW", "OLD"]]
    assert popular.recommend([_probe("x")], 2) == [["OLD", "NEW"]]


def test_decayed_scores_survive_a_long_replay_with_a_short_half_life() -> None:
    """Rescaling before overflow keeps the ranking: 10,000 half-lives would overflow 2**x."""
    scores = ItemScores(half_life_s=1.0)
    scores.add(0, 1.0, 0.0)
    scores.add(1, 1.0, 5_000.0)
    scores.add(0, 1.0, 10_000.0)
    scores.add(1, 1.0, 10_000.5)
    assert np.all(np.isfinite(scores.values))
    assert scores.top(2) == [1, 0]


def test_cooccurrence_recommends_what_was_bought_with_the_last_item() -> None:
    log = _Log()
    log.basket("u1", ["A", "B"], 0, "s1")
    log.basket("u2", ["A", "B"], 10, "s2")
    for n in range(5):
        log.add(f"fan{n}", "C", 20 + n, session=f"f{n}")
    log.add("buyer", "A", 100, session="s3")
    model = make_baseline("cooccurrence")
    _replay(model, log.events)
    assert model.recommend([log.events[-1]], 2) == [["B", "C"]]


def test_cooccurrence_in_session_scope_does_not_link_separate_baskets() -> None:
    log = _Log()
    log.add("u1", "A", 0, session="s1")
    log.add("u1", "B", 10, session="s2")
    log.add("fan", "C", 11, session="f")
    log.add("fan2", "C", 12, session="g")
    log.add("buyer", "A", 100, session="s3")
    session_scope = make_baseline("cooccurrence", {"scope": "session"})
    user_scope = make_baseline("cooccurrence", {"scope": "user"})
    for model in (session_scope, user_scope):
        _replay(model, log.events)
    assert session_scope.recommend([log.events[-1]], 1) == [["C"]]
    assert user_scope.recommend([log.events[-1]], 1) == [["B"]]


def test_sparse_rows_read_the_same_before_and_after_merging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cooccurrence_module, "_MIN_MERGE", 7)
    rng = np.random.default_rng(3)
    rows = SparseRows()
    dense = np.zeros((12, 12))
    for _ in range(200):
        row = int(rng.integers(12))
        partners = [int(p) for p in rng.choice(12, size=3, replace=False) if p != row]
        rows.add_pairs(row, partners)
        for partner in partners:
            dense[row, partner] += 1
            dense[partner, row] += 1
    for row in range(12):
        read = np.zeros(12)
        rows.accumulate(row, 2.0, read)
        np.testing.assert_allclose(read, 2.0 * dense[row])


def test_sknn_recommends_the_item_of_the_most_similar_past_session() -> None:
    log = _Log()
    log.basket("u1", ["A", "B", "X"], 0, "s1")
    log.basket("u2", ["C", "D", "Y"], 10, "s2")
    for n in range(4):
        log.add(f"fan{n}", "Y", 20 + n, session=f"f{n}")
    log.basket("me", ["A", "B"], 100, "now")
    model = make_baseline("sknn")
    _replay(model, log.events)
    assert model.recommend([log.events[-1]], 1) == [["X"]]


def test_sknn_never_uses_the_current_session_as_its_own_neighbour() -> None:
    log = _Log()
    for n in range(3):
        log.add(f"fan{n}", "P", n, session=f"f{n}")
    log.basket("me", ["A", "B"], 100, "now")
    model = make_baseline("sknn", {"hide_session": False})
    _replay(model, log.events)
    # with only its own session sharing A and B, the list is the popular fallback
    assert model.recommend([log.events[-1]], 3) == [["P", "A", "B"]]


def test_sknn_cuts_sessions_at_a_time_gap_without_session_ids() -> None:
    log = _Log()
    log.add("u1", "A", 0)
    log.add("u1", "X", 60)  # same visit as A
    log.add("u1", "B", 60 + 7200)  # a later visit
    for n in range(3):
        log.add(f"fan{n}", "P", 9000 + n)
    log.add("me", "A", 10_000)
    model = make_baseline("sknn", {"session_gap_s": 1800.0})
    _replay(model, log.events)
    assert model.recommend([log.events[-1]], 1) == [["X"]]


def _taste_log(epochs: int) -> _Log:
    """Two taste groups; "twin" shares group one's taste but has not bought D yet."""
    log = _Log()
    at = 0.0
    for epoch in range(epochs):
        for n in range(8):
            for item in "ABCD":
                log.add(f"g1-{n}", item, at, session=f"g1-{n}-{epoch}")
                at += 1
            for item in "EFGH":
                log.add(f"g2-{n}", item, at, session=f"g2-{n}-{epoch}")
                at += 1
        for item in "ABC":
            log.add("twin", item, at, session=f"twin-{epoch}")
            at += 1
    return log


def test_river_mf_ranks_what_the_taste_twins_bought_above_an_unrelated_item() -> None:
    log = _taste_log(epochs=30)
    model = make_baseline("river-mf", {"hide_session": False, "factors": 4}, seed=3)
    _replay(model, log.events)
    [ranked] = model.recommend([log.events[-1]], 8)
    assert set(ranked) == set("ABCDEFGH")
    assert ranked.index("D") < min(ranked.index(item) for item in "EFGH")


def test_als_lists_popular_until_the_first_retrain_then_the_model() -> None:
    log = _taste_log(epochs=3)
    for n in range(12):  # group two's items are the popular ones
        log.add(f"extra{n}", "EFGH"[n % 4], 100 + n)
    params = {"retrain_every_s": 3600.0, "filter_liked": True, "factors": 8, "iterations": 10}
    model = make_baseline("als", params)
    assert isinstance(model, RetrainedAls)
    _replay(model, log.events)
    twin = _probe("twin", at=200)
    [before] = model.recommend([twin], 1)
    assert model.retrains == 0
    assert before[0] in "EFGH"
    model.learn([log.add("someone", "E", 3700)])  # the span has passed: retrain
    assert model.retrains == 1
    [after] = model.recommend([twin], 1)
    assert after == ["D"]


def test_als_keeps_its_model_between_retrains_and_falls_back_for_new_users() -> None:
    log = _taste_log(epochs=3)
    model = make_baseline("als", {"retrain_every_s": 60.0, "filter_liked": True, "factors": 8})
    assert isinstance(model, RetrainedAls)
    _replay(model, log.events)
    retrains = model.retrains
    newcomer = log.add("newcomer", "A", log.events[-1].epoch_seconds - _START.timestamp() + 1)
    model.learn([newcomer])
    assert model.retrains == retrains  # one second later: no retrain
    assert model.popular_at_retrain is not None
    frozen = [model.items.ids[row] for row in model.popular_at_retrain.top(5)]
    assert model.recommend([newcomer], 4) == [[item for item in frozen if item != "A"][:4]]


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_forget_drops_the_users_history(name: str) -> None:
    log = _taste_log(epochs=3)
    model = make_baseline(name, {"retrain_every_s": 60.0} if name == "als" else None)
    _replay(model, log.events)
    if name == "als":
        assert isinstance(model, RetrainedAls)
        assert model.retrains > 0
    stranger = model.recommend([_probe("stranger")], 5)
    assert model.recommend([log.events[-1]], 5) != stranger or name in {"popular", "trending"}
    model.learn([log.add("twin", None, 10**5, kind=EventType.FORGET)])
    assert model.recommend([log.events[-1]], 5) == stranger


@pytest.mark.parametrize("name", [n for n in BASELINE_NAMES if n != "trending"])
def test_an_unknown_user_gets_the_popular_items(name: str) -> None:
    log = _taste_log(epochs=2)
    for n in range(6):
        log.add(f"extra{n}", "H", 10**4 + n)
    model = make_baseline(name, {"retrain_every_s": 10**6} if name == "als" else None)
    popular = make_baseline("popular")
    for each in (model, popular):
        _replay(each, log.events)
    expected = popular.recommend([_probe("stranger")], 4)
    assert expected[0][0] == "H"
    assert model.recommend([_probe("stranger")], 4) == expected


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_the_same_seed_gives_the_same_lists(name: str) -> None:
    log = _taste_log(epochs=2)
    params: dict[str, object] = {"retrain_every_s": 20.0} if name == "als" else {}
    runs: list[list[list[str]]] = []
    for _ in range(2):
        model = make_baseline(name, params, seed=11)
        lists: list[list[str]] = []
        for event in log.events:
            model.learn([event])
            lists += model.recommend([event], 5)
        runs.append(lists)
    assert runs[0] == runs[1]
    assert all(len(items) >= 4 for items in runs[0][10:])  # 8 items, at most 4 hidden


def test_river_mf_depends_on_its_seed() -> None:
    log = _taste_log(epochs=2)
    lists = []
    for seed in (1, 2):
        model = make_baseline("river-mf", {"hide_session": False}, seed=seed)
        _replay(model, log.events)
        lists.append(model.recommend([log.events[-1]], 8))
    assert lists[0] != lists[1]


def test_make_baselines_builds_every_name_and_refuses_bad_params() -> None:
    models = make_baselines(BASELINE_NAMES, {"trending": {"half_life_s": 60}})
    assert [model.name for model in models] == list(BASELINE_NAMES)
    assert set(DEFAULT_PARAMS) == set(PARAM_GRIDS) == set(BASELINE_NAMES)
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baselines(["nope"])
    with pytest.raises(ValueError, match="unknown parameter"):
        make_baseline("popular", {"half_life_s": 3.0})
    with pytest.raises(ValueError, match="must be int"):
        make_baseline("sknn", {"k_neighbours": True})
    with pytest.raises(ValueError, match="must be float"):
        make_baseline("trending", {"half_life_s": "1d"})
    with pytest.raises(ValueError, match="scope"):
        make_baseline("cooccurrence", {"scope": "galaxy"})


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_every_grid_point_builds_and_the_defaults_are_on_the_grid(name: str) -> None:
    grid = PARAM_GRIDS[name]
    assert grid, f"{name} has no grid to tune over"
    distinct = {tuple(sorted((k, repr(v)) for k, v in p.items())) for p in grid}
    assert len(distinct) == len(grid), f"{name}: a grid point is repeated"
    for point in grid:
        make_baseline(name, point)
    defaults = DEFAULT_PARAMS[name]
    assert any(all(defaults.get(key) == value for key, value in p.items()) for p in grid)


def _effective(name: str, point: dict[str, object]) -> tuple[bool, bool]:
    """The (hide_session, hide_seen) a grid point really runs with, defaults included."""
    model = make_baseline(name, point)
    assert isinstance(model, BaselineBase)
    return model.hide_session, model.hide_seen


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_every_grid_tries_showing_and_hiding_the_session_and_the_seen_items(name: str) -> None:
    """A baseline crippled by a filter that suits one kind of log only is a strawman."""
    tried = [_effective(name, point) for point in PARAM_GRIDS[name]]
    assert {hide_session for hide_session, hide_seen in tried if not hide_seen} == {True, False}
    assert {hide_seen for _, hide_seen in tried} == {True, False}
    assert len(PARAM_GRIDS[name]) <= 12, "each grid point replays the first fifth once"


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_hide_seen_never_lists_what_the_user_already_had(name: str) -> None:
    log = _taste_log(epochs=3)
    params: dict[str, object] = {"hide_seen": True}
    if name == "als":
        params["retrain_every_s"] = 60.0
    model = make_baseline(name, params)
    _replay(model, log.events)
    [twins_list] = model.recommend([_probe("twin")], 5)
    assert len(twins_list) == 5
    assert not set(twins_list) & set("ABC")
    [g1_list] = model.recommend([_probe("g1-0")], 4)
    assert sorted(g1_list) == sorted("EFGH")  # all a group-one user has not had


def test_shared_params_are_checked_like_the_others() -> None:
    with pytest.raises(ValueError, match="must be bool"):
        make_baseline("popular", {"hide_seen": 1})
    with pytest.raises(ValueError, match="hide_seen"):
        make_baseline("popular", {"hide_everything": True})  # the message lists it


def _reorder_log() -> _Log:
    log = _Log()
    for n in range(3):
        log.add(f"fan{n}", "P", n, session=f"f{n}")
    log.basket("me", ["A", "B"], 10, "s1")
    log.basket("me", ["A", "C"], 20, "s2")
    return log


def test_recent_lists_the_users_own_items_newest_first_then_popular() -> None:
    log = _reorder_log()
    model = make_baseline("recent", {"order": "recency", "hide_session": False})
    _replay(model, log.events)
    assert model.recommend([log.events[-1]], 4) == [["C", "A", "B", "P"]]
    assert model.recommend([_probe("stranger")], 2) == [["P", "A"]]


def test_recent_by_frequency_and_hiding_the_session() -> None:
    log = _reorder_log()
    by_count = make_baseline("recent", {"order": "frequency", "hide_session": False})
    hiding = make_baseline("recent", {"order": "recency", "hide_session": True})
    for model in (by_count, hiding):
        _replay(model, log.events)
    assert by_count.recommend([log.events[-1]], 4) == [["A", "C", "B", "P"]]  # A twice
    assert hiding.recommend([log.events[-1]], 2) == [["B", "P"]]  # s2 holds A and C


_ALL_OFF: dict[str, object] = {
    "hide_session": True,
    "lambda_spw": 0.0,
    "lambda_snh": 0.0,
    "lambda_inh": 0.0,
    "lambda_ipw": 0.0,
    "lambda_idf": 0.0,
}
_DAY = 86400.0


def _vstan_lists(log: _Log, k: int, **changes: object) -> list[str]:
    """The list of the log's last user under VSTAN with every weighting off but ``changes``."""
    model = make_baseline("vstan", {**_ALL_OFF, **changes})
    _replay(model, log.events)
    [ranked] = model.recommend([log.events[-1]], k)
    return ranked


def test_vstan_weighs_the_later_items_of_the_current_session_more() -> None:
    """Two neighbours match one current item each; each holds one more item.

    Current session A, B: weights e^-1 for A, 1 for B (lambda_spw = 1); the neighbour
    holding B is the more similar (1/sqrt2 against e^-1/sqrt2), so its Y comes first.
    Without the weighting the two tie and X, the older row, leads.
    """
    log = _Log()
    log.basket("u1", ["A", "X"], 0, "s1")
    log.basket("u2", ["B", "Y"], 0, "s2")
    log.basket("me", ["A", "B"], 100, "now")
    assert _vstan_lists(log, 2, lambda_spw=1.0) == ["Y", "X"]
    assert _vstan_lists(log, 2) == ["X", "Y"]
    # lambda_ipw alone gives the same order: the neighbour found through B, the latest item
    assert _vstan_lists(log, 2, lambda_ipw=1.0) == ["Y", "X"]


def test_vstan_prefers_recent_neighbour_sessions_and_samples_the_most_recent() -> None:
    log = _Log()
    log.basket("u1", ["A", "X"], 0, "old")
    log.basket("u2", ["A", "Y"], 10 * _DAY, "new")
    log.add("me", "A", 10 * _DAY + 60, session="now")
    assert _vstan_lists(log, 2) == ["X", "Y"]  # a tie: the older row first
    assert _vstan_lists(log, 2, lambda_snh=1.0) == ["Y", "X"]  # e^-10 against e^0
    # a sample of one keeps the most recently active candidate only: X comes as popular
    assert _vstan_lists(log, 2, sample_size=1) == ["Y", "X"]


def test_vstan_prefers_items_next_to_the_match_in_the_neighbour() -> None:
    log = _Log()
    log.basket("u1", ["Z", "Y", "A"], 0, "s1")  # Y is next to A, Z two steps away
    log.add("me", "A", 100, session="now")
    assert _vstan_lists(log, 2) == ["Z", "Y"]  # a tie: the older row first
    assert _vstan_lists(log, 2, lambda_inh=1.0) == ["Y", "Z"]


def test_vstan_idf_prefers_the_rarer_of_two_equally_supported_items() -> None:
    log = _Log()
    log.basket("u1", ["A", "P"], 0, "s1")
    log.basket("u2", ["A", "R"], 1, "s2")
    for n in range(3):  # P is in four of six sessions, R in one
        log.add(f"fan{n}", "P", 2 + n, session=f"f{n}")
    log.add("me", "A", 100, session="now")
    assert _vstan_lists(log, 2) == ["P", "R"]
    assert _vstan_lists(log, 2, lambda_idf=1.0) == ["R", "P"]


def _reference_vstan_scores(
    events: Sequence[Event], user: str, params: dict[str, float]
) -> dict[str, float]:
    """VSTAN's item scores as rn5l/session-rec computes them, written plainly with dicts.

    Sessions are their distinct items (first position), the current one in order of last
    use; every session sharing an item is a candidate and every candidate a neighbour.
    """
    sessions: dict[str, list[str]] = {}
    last_at: dict[str, float] = {}
    current: dict[str, str] = {}
    orders: dict[str, list[str]] = {}
    for event in events:
        assert event.item_id is not None
        assert event.session_id is not None
        key = event.session_id
        if current.get(event.user_id) != key:
            orders[event.user_id] = []
        current[event.user_id] = key
        items = sessions.setdefault(key, [])
        if event.item_id not in items:
            items.append(event.item_id)
        order = orders[event.user_id]
        if event.item_id in order:
            order.remove(event.item_id)
        order.append(event.item_id)
        last_at[key] = event.epoch_seconds
    now = max(last_at.values())
    own, order = current[user], orders[user]
    length = len(order)
    spw = {item: math.exp((p - length) / params["spw"]) for p, item in enumerate(order, 1)}
    norm = math.sqrt(sum(weight * weight for weight in spw.values()))
    frequency: dict[str, int] = {}
    for items in sessions.values():
        for item in items:
            frequency[item] = frequency.get(item, 0) + 1
    scores: dict[str, float] = {}
    for key, items in sessions.items():
        shared = [item for item in items if item in spw]
        if key == own or not shared:
            continue
        similarity = sum(spw[item] for item in shared) / (norm * math.sqrt(len(items)))
        similarity *= math.exp(-(now - last_at[key]) / (params["snh"] * _DAY))
        star = max(q for q, item in enumerate(items, 1) if item in spw)
        latest = max(p for p, item in enumerate(order, 1) if item in items)
        ipw = math.exp((latest - length) / params["ipw"])
        for q, item in enumerate(items, 1):
            idf = math.log(len(sessions) / frequency[item])
            score = similarity * math.exp(-abs(q - star) / params["inh"]) * ipw
            scores[item] = scores.get(item, 0.0) + score * (1 + params["idf"] * idf)
    return scores


def test_vstan_scores_as_the_reference_implementation_does() -> None:
    rng = np.random.default_rng(5)
    log = _Log()
    session_of = {f"u{n}": 0 for n in range(6)}
    at = 0.0
    for _ in range(120):
        user = f"u{int(rng.integers(6))}"
        if rng.random() < 0.25:
            session_of[user] += 1
        at += float(rng.exponential(6 * 3600))
        log.add(user, f"i{int(rng.integers(15))}", at, session=f"{user}-{session_of[user]}")
    lambdas = {"spw": 1.3, "snh": 2.0, "inh": 1.7, "ipw": 0.8, "idf": 0.6}
    params: dict[str, object] = {f"lambda_{name}": value for name, value in lambdas.items()}
    model = make_baseline(
        "vstan", {**params, "k_neighbours": 1000, "sample_size": 1000, "current_items": 50}
    )
    assert isinstance(model, Vstan)
    for n, event in enumerate(log.events):
        model.learn([event])
        if n < 40:
            continue
        expected = _reference_vstan_scores(log.events[: n + 1], event.user_id, lambdas)
        listed = [model.items.ids[row] for row in model._rank(event.user_id, 10)]
        assert len(listed) == min(10, len(expected))
        np.testing.assert_allclose(
            [expected[item] for item in listed], sorted(expected.values(), reverse=True)[:10]
        )


def test_vstan_never_uses_the_current_session_as_its_own_neighbour() -> None:
    log = _Log()
    for n in range(3):
        log.add(f"fan{n}", "P", n, session=f"f{n}")
    log.basket("me", ["A", "B"], 100, "now")
    model = make_baseline("vstan", {"hide_session": False})
    _replay(model, log.events)
    assert model.recommend([log.events[-1]], 3) == [["P", "A", "B"]]
