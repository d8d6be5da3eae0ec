"""The shared online models: item index, co-visitation, trending, decay, taste and ranker.

Why: these hold the worker's memory bounds (max_items, top-M neighbours, segment count)
and the learning directions the recommendations rest on; a sign error or a lost heavy
pair would not crash anything, it would just quietly make every list worse.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.contract import CatalogItem
from worker.models.content import ContentNeighbours, content_tokens
from worker.models.covisitation import CoVisitation
from worker.models.decay import DecayClock
from worker.models.index import ItemIndex
from worker.models.ranker import _PRIOR, FEATURES, Ranker
from worker.models.taste import TasteModel
from worker.models.trending import _MAX_SEGMENTS, Trending

HOUR = 3600.0
I64 = np.int64


def _ints(*values: int) -> npt.NDArray[np.int64]:
    return np.array(values, dtype=I64)


def _floats(*values: float) -> npt.NDArray[np.float64]:
    return np.array(values, dtype=np.float64)


# -- ItemIndex ---------------------------------------------------------------------------


def test_index_assigns_dense_rows_and_is_bounded() -> None:
    index = ItemIndex(max_items=3)
    assert [index.row(item) for item in ("a", "b", "a", "c")] == [0, 1, 0, 2]
    assert index.row("d") == -1
    assert [index.row("e"), index.row("b")] == [-1, 1]
    assert len(index) == 3
    assert "d" not in index
    assert "c" in index
    assert index.item_id(2) == "c"
    assert [index.ids[2], index.ids[0]] == ["c", "a"]
    assert index.lookup("zz") == -1


def test_known_rows_skips_unknown_without_adding() -> None:
    index = ItemIndex(max_items=10)
    for item in ("a", "b", "c"):
        index.row(item)
    assert index.known_rows(["c", "zz", "a", "yy"]).tolist() == [2, 0]
    assert len(index) == 3
    assert "zz" not in index
    assert index.known_rows([]).dtype == I64


# -- CoVisitation ------------------------------------------------------------------------


def _neighbours(covis: CoVisitation, row: int) -> dict[int, float]:
    neighbours, weights = covis.neighbours_of(_ints(row))
    return {
        int(n): float(w)
        for n, w in zip(neighbours[0].tolist(), weights[0].tolist(), strict=True)
        if n >= 0
    }


def test_covisitation_keeps_at_most_m_neighbours() -> None:
    covis = CoVisitation(neighbours=4, half_life_s=HOUR)
    targets = np.arange(1, 51, dtype=I64)
    covis.observe(np.zeros(50, dtype=I64), targets, np.ones(50), np.zeros(50))
    neighbours, weights = covis.neighbours_of(_ints(0, 1, 999, -1))
    assert neighbours.shape == (4, 4)
    assert int((neighbours[0] >= 0).sum()) == 4
    assert set(neighbours[0].tolist()) <= set(targets.tolist())
    assert covis.neighbour.shape[1] == 4
    # unknown and invalid rows read as empty
    assert (neighbours[2:] == -1).all()
    assert (weights[2:] == 0).all()


def test_covisitation_ignores_self_pairs_and_invalid_rows() -> None:
    covis = CoVisitation(neighbours=4, half_life_s=HOUR)
    covis.observe(_ints(0, 0, -1, 2), _ints(0, -1, 3, 5), np.ones(4), np.zeros(4))
    assert _neighbours(covis, 0) == {}
    assert _neighbours(covis, 2) == {5: 1.0}


def test_covisitation_keeps_the_heavy_pair_under_a_flood_of_one_offs() -> None:
    """Space-Saving: a pair with more than 1/M of the traffic is never evicted."""
    m = 4
    covis = CoVisitation(neighbours=m, half_life_s=1e9)
    junk = 100
    for step in range(200):
        # one heavy pair (0 -> 1) per step, and two never-repeated pairs (0 -> junk)
        targets = _ints(1, junk, junk + 1)
        junk += 2
        covis.observe(np.zeros(3, dtype=I64), targets, np.ones(3), np.full(3, float(step)))
    found = _neighbours(covis, 0)
    assert len(found) == m
    heavy = 1
    assert heavy in found
    assert found[heavy] == max(found.values())
    assert found[1] >= 200 * 0.99  # never evicted: it kept every unit of its own weight


def test_covisitation_accumulates_within_and_across_batches() -> None:
    covis = CoVisitation(neighbours=8, half_life_s=1e9)
    covis.observe(_ints(0, 0, 0), _ints(1, 1, 2), _floats(1, 2, 1), np.zeros(3))
    covis.observe(_ints(0), _ints(1), _floats(0.5), np.zeros(1))
    found = _neighbours(covis, 0)
    assert found[1] == 3.5
    assert found[2] == 1.0


def test_covisitation_decay_favours_recent_pairs() -> None:
    covis = CoVisitation(neighbours=8, half_life_s=HOUR)
    covis.observe(_ints(0), _ints(1), _floats(1.0), _floats(0.0))
    covis.observe(_ints(0), _ints(2), _floats(1.0), _floats(2 * HOUR))
    found = _neighbours(covis, 0)
    assert found[2] > found[1]
    # read in 'now' units: the fresh pair is worth 1, the pair two half-lives old 1/4
    assert found[2] == 1.0
    assert abs(found[1] - 0.25) < 1e-6
    neighbours, weights = covis.neighbours_of(_ints(0))
    order = np.argsort(-weights[0])
    assert neighbours[0][order][:2].tolist() == [2, 1]


def test_covisitation_rebase_keeps_weights_and_order() -> None:
    covis = CoVisitation(neighbours=8, half_life_s=1.0)
    covis.observe(_ints(0), _ints(1), _floats(1.0), _floats(0.0))
    covis.observe(_ints(0), _ints(2), _floats(1.0), _floats(5.0))
    before = _neighbours(covis, 0)
    origin = covis.clock.origin
    covis.observe(_ints(7), _ints(8), _floats(1.0), _floats(45.0))  # > 40 half-lives: rebase
    assert covis.clock.origin != origin
    after = _neighbours(covis, 0)
    assert after[2] > after[1] > 0
    assert np.isclose(after[2] / after[1], before[2] / before[1], rtol=1e-4)
    assert np.isfinite(covis.weight).all()


# -- Trending ----------------------------------------------------------------------------


def _observe(
    trending: Trending,
    rows: np.ndarray,
    weights: np.ndarray,
    times: np.ndarray,
    segments: list[tuple[str, ...]],
) -> None:
    """What the core does with a delta: count segments, then add popularity."""
    keys = [key for keyed in segments for key in keyed]
    keyed_rows = np.array(
        [row for row, keyed in zip(rows.tolist(), segments, strict=True) for _ in keyed],
        dtype=I64,
    )
    counts = np.maximum(np.rint(weights), 1).astype(I64)
    keyed_counts = np.array(
        [c for c, keyed in zip(counts.tolist(), segments, strict=True) for _ in keyed],
        dtype=I64,
    )
    trending.count_segments(keys, keyed_rows, keyed_counts)
    trending.observe(rows, weights, times)


def _trending(segment_size: int = 10) -> Trending:
    return Trending(HOUR, top_size=10, segment_size=segment_size, refresh_every=1)


def test_trending_recent_weight_outranks_older_equal_weight() -> None:
    trending = _trending()
    _observe(trending, _ints(0), _floats(1.0), _floats(0.0), [()])
    _observe(trending, _ints(1), _floats(1.0), _floats(HOUR), [()])
    assert trending.top().tolist() == [1, 0]
    popularity = trending.normalised(_ints(0, 1, 500))
    assert popularity[1] > popularity[0] > 0
    assert popularity[2] == 0


def test_trending_more_weight_outranks_less_at_the_same_time() -> None:
    trending = _trending()
    _observe(trending, _ints(0, 1, 1, 2), _floats(1, 1, 1, 0.5), np.zeros(4), [(), (), (), ()])
    assert trending.top().tolist() == [1, 0, 2]


def test_trending_ignores_negative_rows() -> None:
    trending = _trending()
    _observe(trending, _ints(-1, 3), _floats(5.0, 1.0), np.zeros(2), [("country:NL",)] * 2)
    assert trending.top().tolist() == [3]
    assert trending.segment_top("country:NL")[0].tolist() == [3]


def test_trending_segments_are_separate() -> None:
    trending = _trending()
    rows = _ints(0, 0, 1, 2, 2, 2, 3)
    segments = [
        ("country:NL", "device:mobile"),
        ("country:NL",),
        ("country:NL",),
        ("country:DE",),
        ("country:DE", "device:mobile"),
        ("country:DE",),
        ("device:web",),
    ]
    _observe(trending, rows, np.ones(rows.size), np.zeros(rows.size), segments)
    assert trending.segment_top("country:NL")[0].tolist() == [0, 1]
    assert trending.segment_top("country:DE")[0].tolist() == [2]
    assert sorted(trending.segment_top("device:mobile")[0].tolist()) == [0, 2]
    assert trending.segment_top("device:web")[0].tolist() == [3]
    assert trending.segment_top("country:FR")[0].size == 0
    nl = trending.segment_normalised("country:NL", _ints(0, 1, 2))
    assert nl[0] > nl[1] > 0
    assert nl[2] == 0


def test_trending_segment_lists_are_bounded() -> None:
    trending = _trending(segment_size=3)
    rows = np.arange(50, dtype=I64)
    _observe(trending, rows, rows.astype(np.float64) + 1, np.zeros(50), [("country:NL",)] * 50)
    top_rows, top_values = trending.segment_top("country:NL")
    assert top_rows.tolist() == [49, 48, 47]
    assert (np.diff(top_values) <= 0).all()
    # lossy counting keeps far fewer than the 50 distinct rows it saw
    assert len(trending.segments["country:NL"].most_common()) < 50


def test_trending_number_of_segments_is_bounded() -> None:
    trending = Trending(HOUR, top_size=10, segment_size=5, refresh_every=10_000)
    n = _MAX_SEGMENTS + 100
    rows = np.zeros(n, dtype=I64)
    _observe(trending, rows, np.ones(n), np.zeros(n), [(f"country:c{k}",) for k in range(n)])
    assert len(trending.segments) == _MAX_SEGMENTS
    trending.refresh()
    assert trending.segment_top(f"country:c{n - 1}")[0].size == 0
    assert trending.top().tolist() == [0]  # the overall score still counts every event


def test_trending_rebase_keeps_relative_order() -> None:
    trending = _trending()
    _observe(trending, _ints(0), _floats(1.0), _floats(0.0), [("country:NL",)])
    _observe(trending, _ints(1), _floats(1.0), _floats(2 * HOUR), [("country:NL",)])
    before = trending.normalised(_ints(0, 1))
    origin = trending.clock.origin
    far = 50 * HOUR  # beyond 40 half-lives: the clock rebases and scores are rescaled
    _observe(trending, _ints(2), _floats(1e-30), _floats(far), [("country:NL",)])
    assert trending.clock.origin == far != origin
    assert np.isfinite(trending.scores).all()
    assert trending.top().tolist()[:2] == [1, 0]
    after = trending.normalised(_ints(0, 1))
    assert after[1] > after[0] > 0
    assert after[1] / after[0] > 1.0
    assert before[1] > before[0]


# -- DecayClock --------------------------------------------------------------------------


def test_decay_clock_weights() -> None:
    clock = DecayClock(half_life_s=10.0)
    assert clock.advance(100.0) is None
    assert clock.weight(100.0) == 1.0
    assert clock.advance(120.0) is None
    assert clock.weight(120.0) == 4.0
    assert clock.current_scale() == 4.0
    assert clock.weight(110.0) == 2.0
    assert clock.weight(1000.0) == 4.0  # the future is clamped to now
    assert clock.advance(50.0) is None  # never backwards
    assert clock.now == 120.0
    assert np.allclose(clock.weights(_floats(100.0, 110.0, 500.0)), [1.0, 2.0, 4.0])


def test_decay_clock_rebase_keeps_relative_order() -> None:
    clock = DecayClock(half_life_s=1.0)
    clock.advance(0.0)
    old, recent = clock.weight(0.0), clock.weight(0.0)
    clock.advance(10.0)
    recent = clock.weight(10.0)
    assert recent / old == 2.0**10
    factor = clock.advance(100.0)
    assert factor == 2.0**100
    assert clock.origin == 100.0
    old, recent = old / factor, recent / factor
    fresh = clock.weight(100.0)
    assert fresh == 1.0
    assert fresh > recent > old > 0
    assert recent / old == 2.0**10


def test_decay_clock_survives_a_jump_of_decades() -> None:
    """A backfill from 2000 then a live event asked for 2**3000 and crashed the worker."""
    clock = DecayClock(half_life_s=3 * 24 * HOUR)
    clock.advance(946_684_800.0)  # 2000-01-01
    factor = clock.advance(1_764_000_000.0)  # 2025-11
    assert factor is not None
    assert np.isfinite(np.float32(factor))
    assert np.float32(1e6) / np.float32(factor) < 1e-29  # old scores end up worth nothing
    assert clock.weight(1_764_000_000.0) == 1.0


# -- TasteModel --------------------------------------------------------------------------


def test_taste_is_deterministic_by_seed() -> None:
    first, second = TasteModel(8, 0.1, 0.0, seed=3), TasteModel(8, 0.1, 0.0, seed=3)
    first.ensure(5)
    second.ensure(5)
    assert np.array_equal(first.vectors[:5], second.vectors[:5])
    assert np.array_equal(first.new_user("u"), second.new_user("u"))
    assert not np.array_equal(first.new_user("u"), first.new_user("v"))


# -- Ranker ------------------------------------------------------------------------------


def test_ranker_starts_at_the_prior() -> None:
    ranker = Ranker()
    assert np.array_equal(ranker.weights, _PRIOR)
    assert len(_PRIOR) == len(FEATURES)
    features = np.eye(len(FEATURES))
    assert np.array_equal(ranker.score(features), _PRIOR)
    assert ranker.model.weights == dict(zip(FEATURES, _PRIOR.tolist(), strict=True))


def test_ranker_learns_the_feature_that_separates_positives() -> None:
    ranker = Ranker(learning_rate=0.05, sync_every=8)
    rng = np.random.default_rng(0)
    feature = FEATURES.index("evening")  # prior weight 0: learning must raise it
    for _ in range(40):
        positives = rng.random((2, len(FEATURES)))
        negatives = rng.random((2, len(FEATURES)))
        positives[:, feature] = 1.0
        negatives[:, feature] = 0.0
        ranker.learn(positives, negatives)
    assert ranker.updates == 40 * 4
    weights = ranker.weights
    assert weights[feature] > _PRIOR[feature] + 0.1
    others = np.delete(weights - _PRIOR, feature)
    assert weights[feature] - _PRIOR[feature] > np.abs(others).max()


def test_ranker_scores_follow_synced_weights_only() -> None:
    ranker = Ranker(learning_rate=0.5, sync_every=1000)
    positives = np.zeros((1, len(FEATURES)))
    positives[0, 0] = 1.0
    ranker.learn(positives, np.zeros((1, len(FEATURES))))
    assert np.array_equal(ranker.weights, _PRIOR)  # not synced yet
    assert ranker.model.weights["covis"] > _PRIOR[0]


def test_segment_counts_fade_so_new_interest_overtakes_old() -> None:
    trending = Trending(
        HOUR, top_size=10, segment_size=10, refresh_every=1, segment_half_life_events=200
    )
    old = np.zeros(1000, dtype=I64)  # item 0 was the hit of the segment ...
    _observe(trending, old, np.ones(old.size), np.zeros(old.size), [("hour:9",)] * old.size)
    new = np.ones(600, dtype=I64)  # ... then item 1 took over, with fewer events in all
    _observe(trending, new, np.ones(new.size), np.zeros(new.size), [("hour:9",)] * new.size)
    assert trending.segment_top("hour:9")[0].tolist()[:2] == [1, 0]


def _content_item(item_id: str, title: str) -> CatalogItem:
    return CatalogItem(item_id=item_id, title=title)


def _content_model(titles: list[str], m: int = 3) -> ContentNeighbours:
    model = ContentNeighbours(m)
    for row, title in enumerate(titles):
        model.upsert(row, content_tokens(_content_item(f"i{row}", title)))
    return model


RETAIL_TITLES = [
    "WHITE HANGING HEART T-LIGHT HOLDER",
    "RED HANGING HEART T-LIGHT HOLDER",
    "JAM MAKING SET PRINTED",
    "JAM MAKING SET WITH JARS",
    "WHITE METAL LANTERN",
    "SET OF 3 CAKE TINS PANTRY DESIGN",
]


def test_content_neighbours_are_items_whose_text_reads_alike() -> None:
    model = _content_model(RETAIL_TITLES)
    neighbours, similarity = model.neighbours_of(np.array([0, 2, -1]))
    assert neighbours[0, np.argmax(similarity[0])] == 1  # the red heart holder
    assert neighbours[1, np.argmax(similarity[1])] == 3  # the other jam set
    assert (neighbours[2] == -1).all()
    assert 0 not in neighbours[0]  # never its own neighbour
    assert similarity.max() <= 1.0 + 1e-9


def test_content_neighbours_are_bounded_and_cached() -> None:
    colours = ("blue", "green", "red", "black")
    titles = [f"{colours[n % 4]} cotton shirt {colours[n // 10]} collar" for n in range(40)]
    model = _content_model(titles, m=3)
    neighbours, _ = model.neighbours_of(np.arange(40))
    assert neighbours.shape == (40, 3)
    assert (neighbours >= 0).all()
    assert model.neighbour.shape[1] == 3


def test_a_new_item_gets_content_neighbours_once_the_catalog_is_rebuilt() -> None:
    model = _content_model(RETAIL_TITLES)
    row = len(RETAIL_TITLES)
    assert (model.neighbours_of(np.array([row]))[0] == -1).all()  # not in the catalog yet
    for extra in range(row, row + 200):  # enough upserts to trigger a rebuild
        model.upsert(extra, content_tokens(_content_item(f"i{extra}", "PINK HANGING HEART")))
    neighbours, similarity = model.neighbours_of(np.array([row]))
    assert (neighbours[0] >= 0).all()
    assert (similarity[0] > 0).all()


def test_the_background_fill_finds_every_items_neighbours_as_a_batch_would() -> None:
    colours = ("blue", "green", "red", "black", "white")
    titles = [
        f"{colours[n % 5]} cotton shirt {colours[(n // 50) % 5]} collar {n % 7}" for n in range(600)
    ]
    filled = ContentNeighbours(4)
    on_demand = ContentNeighbours(4, background=False)
    for row, title in enumerate(titles):
        tokens = content_tokens(_content_item(f"i{row}", title))
        filled.upsert(row, tokens)
        on_demand.upsert(row, tokens)
    for model in (filled, on_demand):  # the first lookup builds the matrix (and the fill)
        model.neighbours_of(np.array([0]))
    assert filled.wait_filled(timeout_s=60)
    assert not on_demand.filled()  # without the fill, only what is asked for is known
    asked = np.arange(len(titles))
    rng = np.random.default_rng(3)
    rng.shuffle(asked)  # batches ask in any order, a few rows at a time
    for chunk in np.array_split(asked, 40):
        on_demand.neighbours_of(chunk)
    np.testing.assert_array_equal(filled.neighbour, on_demand.neighbour)
    np.testing.assert_array_equal(filled.similarity, on_demand.similarity)


# -- popularity at several time scales ------------------------------------------------------


def test_each_timescale_favours_what_was_popular_over_its_own_half_life() -> None:
    trending = Trending(
        HOUR,
        top_size=10,
        segment_size=5,
        refresh_every=1,
        timescales_s=(HOUR, 30 * 24 * HOUR),
        timescale_top=5,
    )
    # Item 0: ten interactions a week ago. Item 1: two interactions just now.
    week = 7 * 24 * HOUR
    _observe(trending, _ints(*[0] * 10), _floats(*[1.0] * 10), _floats(*[0.0] * 10), [()] * 10)
    _observe(trending, _ints(1, 1), _floats(1.0, 1.0), _floats(week, week), [(), ()])
    hour_scale, month_scale = trending.relative(_ints(0, 1, 2))
    assert hour_scale[1] == 1.0
    assert hour_scale[0] < 0.01
    assert month_scale[0] == 1.0
    assert 0 < month_scale[1] < 1
    assert hour_scale[2] == month_scale[2] == 0.0  # never touched
    assert [int(top[0]) for top in trending.timescale_tops()] == [1, 0]


def test_relative_popularity_does_not_depend_on_the_traffic() -> None:
    quiet, busy = (
        Trending(HOUR, top_size=10, segment_size=5, refresh_every=1, timescales_s=(HOUR,))
        for _ in range(2)
    )
    _observe(quiet, _ints(0, 0, 1), _floats(1.0, 1.0, 1.0), _floats(0.0, 0.0, 0.0), [()] * 3)
    _observe(busy, _ints(0, 0, 1), _floats(50.0, 50.0, 50.0), _floats(0.0, 0.0, 0.0), [()] * 3)
    assert np.allclose(quiet.relative(_ints(0, 1)), busy.relative(_ints(0, 1)))


# -- taste vectors from co-occurrence (item2vec) and users folded from them ----------------


def _cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_item2vec_pulls_items_of_one_history_together_and_pushes_negatives_away() -> None:
    taste = TasteModel(16, learning_rate=0.05, regularization=0.0, seed=1)
    taste.ensure(3)
    before = (
        _cosine(taste.vectors[0], taste.vectors[1]),
        _cosine(taste.vectors[0], taste.vectors[2]),
    )
    for _ in range(200):
        taste.learn_pairs(_ints(0, 1), _ints(1, 0), _ints(2, 2), _floats(1.0, 1.0))
    after = _cosine(taste.vectors[0], taste.vectors[1]), _cosine(taste.vectors[0], taste.vectors[2])
    assert after[0] > before[0]
    assert after[0] > 0.9
    assert after[1] < before[1]
    assert after[1] < 0


def test_a_users_vector_is_a_decayed_sum_of_what_they_touched_in_order() -> None:
    taste = TasteModel(4, learning_rate=0.05, regularization=0.0, seed=1, memory=0.5)
    taste.ensure(3)
    taste.vectors[:3] = np.eye(4, dtype=np.float32)[:3] * 3.0  # norms do not matter
    users = np.zeros((2, 4), dtype=np.float32)
    # user 0 touches item 0 then item 1 then dislikes item 2; user 1 touches item 2
    taste.fold(users, _ints(0, 1, 0, 0), _ints(0, 2, 1, 2), _floats(1.0, 1.0, 1.0, -1.0))
    assert np.allclose(users[0], [0.25, 0.5, -1.0, 0.0])
    assert np.allclose(users[1], [0.0, 0.0, 1.0, 0.0])
