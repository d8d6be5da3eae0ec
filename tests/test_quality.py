"""Live quality and bias: the scoring, the sources of listed items and the exposure math.

Pure logic, no servers. The live counts are checked against ``tailor evaluate``'s own
replay on the bundled sample log, where both must agree exactly; the end-to-end check on
real Kafka and Redis is tests/test_live_quality.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from worker.config import Settings
from worker.contract import CatalogItem, Event
from worker.evaluate.harness import TailorModel, micro_batches, replay
from worker.evaluate.logs import load_log
from worker.quality.exposure import (
    BatchExposure,
    ExposureWindow,
    ExposureWindows,
    batch_exposure,
    gini,
)
from worker.quality.live import KS, LiveCounts, Segmenter
from worker.quality.sources import EXPLORE, FILL, REASON_SOURCES, source_char, source_name
from worker.recommend.core import Envelope, Recommender
from worker.recommend.lists import Reason
from worker.state.user import UserState, decode_user, encode_user
from worker.testing import MemoryStates

SAMPLE = Path(__file__).parents[1] / "worker" / "sample"
LABELS = ("default", "click", "all")


def _event(user: str, item: str, kind: str = "click", device: str | None = None) -> Event:
    context = {"device": device} if device is not None else {}
    return Event.model_validate(
        {
            "event_id": f"{user}-{item}",
            "user_id": user,
            "item_id": item,
            "type": kind,
            "timestamp": datetime(2026, 11, 30, tzinfo=UTC),
            "context": context,
        }
    )


# -- scoring ---------------------------------------------------------------------------


def test_a_hit_counts_at_every_k_it_is_within_with_its_reciprocal_rank() -> None:
    counts = LiveCounts()
    shown = [f"i{n}" for n in range(20)]
    sources = "0" * 6 + "x" * 14
    assert counts.score(LABELS, "i6", shown, sources) == 7  # rank 7: a hit at 10 and 20
    assert counts.score(LABELS, "i0", shown, sources) == 1
    assert counts.score(LABELS, "nowhere", shown, sources) == 0
    tally = counts.tallies[LABELS]
    assert tally.scored == 3
    assert dict(zip(KS, tally.hits, strict=True)) == {5: 1, 10: 2, 20: 2}
    assert tally.reciprocal_rank == pytest.approx(1 + 1 / 7)
    assert counts.hit_sources == {("default", "explore"): 1, ("default", "covisitation"): 1}


def test_only_the_first_twenty_items_count() -> None:
    counts = LiveCounts()
    shown = [f"i{n}" for n in range(30)]
    assert counts.score(LABELS, "i25", shown, "") == 0
    assert counts.hits(20) == 0
    assert counts.scored == 1


def test_a_state_without_sources_names_its_hits_unknown() -> None:
    counts = LiveCounts()
    counts.score(LABELS, "b", ["a", "b"], "")
    counts.score(LABELS, "b", ["a", "b"], "0")  # not one character per item: not trusted
    assert counts.hit_sources == {("default", "unknown"): 2}


def test_source_characters_name_the_reasons_in_their_order() -> None:
    assert tuple(reason.name.lower() for reason in Reason) == (
        "covisited",
        "taste",
        "trending",
        "segment",
        "category",
        "repeat",
        "similar",
        "sessions",
    )
    assert len(REASON_SOURCES) == len(Reason)
    assert source_name(source_char(Reason.COVISITED), 1) == "covisitation"
    assert source_name(source_char(Reason.SESSIONS), 1) == "sessions"
    assert source_name(source_char(-1), 1) == "unexplained"
    assert source_name(FILL + EXPLORE, 2) == "explore"
    assert source_name(FILL, 2) == "unknown"


def test_segments_are_bounded() -> None:
    devices = Segmenter("device", ["mobile", "desktop"])
    assert devices.of(_event("u", "i", device="mobile")) == "mobile"
    assert devices.of(_event("u", "i", device="toaster")) == "other"
    assert devices.of(_event("u", "i")) == "unknown"
    assert Segmenter("none", ["mobile"]).of(_event("u", "i", device="mobile")) == "all"


# -- the core: the same definition as tailor evaluate -----------------------------------


@pytest.fixture(scope="module")
def sample() -> tuple[list[Event], dict[str, CatalogItem]]:
    log = load_log(SAMPLE / "events.jsonl.gz", catalog_path=SAMPLE / "catalog.jsonl.gz")
    return log.events[:600], dict(log.catalog)


@pytest.mark.parametrize("batch_size", [1, 64])
def test_the_core_counts_what_tailor_evaluate_counts(
    sample: tuple[list[Event], dict[str, CatalogItem]], batch_size: int
) -> None:
    """Fed the very batches of ``replay``, the core's live counts equal the harness's
    HR@10, HR@20 and MRR@20 numerators, and HR@5 that of a replay at K=10."""
    events, catalog = sample
    settings = Settings()
    offline = replay(events, [TailorModel(settings, catalog)], k=20, batch_size=batch_size)[0]
    offline5 = replay(events, [TailorModel(settings, catalog)], k=10, batch_size=batch_size)[0]

    recommender = Recommender(settings)
    recommender.apply_catalog_many(list(catalog.items()))
    store = MemoryStates()
    live = LiveCounts()
    offset = 0
    for batch in micro_batches(events, batch_size):
        envelopes = []
        for event in batch:
            envelopes.append(Envelope(event, 0, offset))
            offset += 1
        states = store.read(list(dict.fromkeys(event.user_id for event in batch)))
        result = recommender.process(envelopes, states, now=batch[-1].timestamp)
        store.write(result.writes)
        store.erase(result.erased)
        for labels, tally in result.quality.tallies.items():
            total = live.tallies.setdefault(labels, type(tally)())
            total.scored += tally.scored
            total.hits = [a + b for a, b in zip(total.hits, tally.hits, strict=True)]
            total.reciprocal_rank += tally.reciprocal_rank
        for key, hits in result.quality.hit_sources.items():
            live.hit_sources[key] = live.hit_sources.get(key, 0) + hits

    assert offline.counted > 100  # the sample has returning customers to score
    assert live.scored == offline.counted
    assert live.hits(20) == offline.hits[20]
    assert live.hits(10) == offline.hits[10]
    assert live.hits(5) == offline5.hits[5]
    reciprocal = sum(tally.reciprocal_rank for tally in live.tallies.values())
    assert reciprocal == pytest.approx(offline.reciprocal_ranks[20])
    assert sum(live.hit_sources.values()) == live.hits(20)
    assert {labels[1] for labels in live.tallies} == {"purchase"}
    assert {labels[2] for labels in live.tallies} == {"unknown"}  # the sample has no device


def test_a_replayed_batch_is_not_scored_twice() -> None:
    recommender = Recommender(Settings())
    store = MemoryStates()
    first = [Envelope(_event("u", "a"), 0, 0)]
    store.write(recommender.process(first, store.read(["u"])).writes)
    second = [Envelope(_event("u", "b"), 0, 1)]
    states = store.read(["u"])
    scored = recommender.process(second, states)
    assert scored.quality.scored == 1
    store.write(scored.writes)
    again = recommender.process(second, store.read(["u"]))  # a redone batch: replayed
    assert again.replayed == 1
    assert again.quality.scored == 0


def test_negative_and_unlisted_events_are_not_scored() -> None:
    recommender = Recommender(Settings())
    store = MemoryStates()
    store.write(recommender.process([Envelope(_event("u", "a"), 0, 0)], {}).writes)
    result = recommender.process(
        [Envelope(_event("u", "a", "dislike"), 0, 1), Envelope(_event("new", "a"), 0, 2)],
        store.read(["u", "new"]),
    )
    assert result.quality.scored == 0  # a dislike says "less"; "new" had no list yet


def test_every_listed_item_has_a_source_that_matches_its_reason(
    sample: tuple[list[Event], dict[str, CatalogItem]],
) -> None:
    events, catalog = sample
    recommender = Recommender(Settings())
    recommender.apply_catalog_many(list(catalog.items()))
    store = MemoryStates()
    seen: set[str] = set()
    for offset, batch in enumerate(micro_batches(events, 32)):
        envelopes = [Envelope(event, 0, 1000 * offset + n) for n, event in enumerate(batch)]
        states = store.read(list(dict.fromkeys(event.user_id for event in batch)))
        result = recommender.process(envelopes, states)
        store.write(result.writes)
        for write, published in zip(result.writes, result.published, strict=True):
            sources = write.state.last_sources
            assert len(sources) == len(published.items)
            for char, (_, _, reasons) in zip(sources, published.items, strict=True):
                seen.add(char)
                said = reasons[0]
                if char == EXPLORE:
                    assert reasons == ["something new to discover"]
                elif char == FILL:
                    assert said.startswith(("trending in", "popular"))
                else:
                    assert said != "something new to discover"
                if char == source_char(Reason.TRENDING):
                    assert said == "trending now"
                if char == source_char(Reason.REPEAT):
                    assert said == "you showed interest in this before"
    assert {EXPLORE, source_char(Reason.COVISITED)} <= seen


def test_the_sources_survive_the_state_codec_and_old_states_have_none() -> None:
    state = UserState("u", np.zeros(4, dtype=np.float32), last_list=["a", "b"], last_sources="0x")
    fields = {key.encode(): value for key, value in encode_user(state).items()}
    decoded = decode_user("u", fields, 4)
    assert decoded is not None
    assert decoded.last_sources == "0x"
    del fields[b"q"]
    old = decode_user("u", fields, 4)
    assert old is not None
    assert old.last_sources == ""
    assert old.last_list == ["a", "b"]


# -- exposure ------------------------------------------------------------------------


def test_gini_is_zero_when_even_and_near_one_when_one_item_takes_all() -> None:
    assert gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)  # (n - 1) / n
    assert gini(np.array([1, 2, 3, 4])) == pytest.approx(0.25)
    assert gini(np.zeros(0, dtype=np.int64)) == 0.0


def test_a_batch_is_summed_up_by_slots_and_distinct_categories_per_list() -> None:
    rows = [[0, 1, 2], [3, 4]]
    categories = np.array([7, 7, -1, 1, 2])
    batch = batch_exposure(rows, lambda flat: categories[flat])
    assert batch.rows.tolist() == [0, 1, 2, 3, 4]
    assert batch.lists == 2
    assert batch.categories == 1 + 2


def test_a_window_reports_popular_share_gini_coverage_and_categories() -> None:
    window = ExposureWindow()
    # 200 showable items: the most popular 1 % are rows 10 and 11
    popularity = np.zeros(200)
    popularity[[10, 11]] = [5.0, 4.0]
    showable = np.ones(200, dtype=bool)
    window.add(BatchExposure(np.array([10, 10, 11, 3]), lists=2, categories=3))
    window.add(BatchExposure(np.array([3, 4, 5, 10]), lists=2, categories=2))
    figures = window.close(popularity, showable)
    assert figures.lists == 4
    assert figures.popular_share == pytest.approx(4 / 8)  # rows 10 (3 slots) and 11 (1)
    assert figures.coverage == pytest.approx(5 / 200)
    assert figures.categories_per_list == pytest.approx(5 / 4)
    counts = np.zeros(200, dtype=np.int64)
    np.add.at(counts, [10, 10, 11, 3, 3, 4, 5, 10], 1)
    assert figures.gini == pytest.approx(gini(counts))
    assert window.close(popularity, showable).lists == 0  # closing empties the window


def test_an_item_shown_then_withdrawn_still_counts_as_covered() -> None:
    window = ExposureWindow()
    window.add(BatchExposure(np.array([0, 1]), lists=1, categories=0))
    showable = np.array([True, False, True, True])
    figures = window.close(np.zeros(4), showable)
    assert figures.coverage == pytest.approx(2 / 4)


def test_windows_close_on_lists_or_time_and_only_with_lists() -> None:
    windows = ExposureWindows(lists=3, seconds=60.0, now=0.0)
    assert not windows.due(1000.0)  # nothing shown: nothing to report
    windows.add({"default": BatchExposure(np.array([1]), lists=1, categories=0)})
    assert not windows.due(10.0)
    assert windows.due(61.0)
    windows.add({"b": BatchExposure(np.array([2, 3]), lists=3, categories=0)})
    assert windows.due(10.0)
    figures = windows.close(np.zeros(4), np.ones(4, dtype=bool), now=10.0)
    assert {variant: f.lists for variant, f in figures.items()} == {"default": 1, "b": 3}
    assert not windows.due(11.0)
