"""The prequential harness: counting, batching, log reading, and parity with the worker."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.config import Settings
from worker.contract import Event
from worker.evaluate.harness import (
    Model,
    TailorModel,
    micro_batches,
    replay,
    replay_in_processes,
)
from worker.evaluate.logs import CsvMapping, LogError, RowFilter, load_log
from worker.testing import MemoryStates

START = datetime(2024, 3, 1, 9, tzinfo=UTC)


def _event(n: int, user: str, item: str, kind: str = "purchase") -> Event:
    return Event.model_validate(
        {
            "event_id": f"e{n}",
            "user_id": user,
            "item_id": item,
            "type": kind,
            "timestamp": START + timedelta(minutes=n),
        }
    )


class FixedLists:
    """A model whose lists are known in advance, so every count can be worked out by hand."""

    name = "fixed"

    def __init__(self, lists: dict[str, list[str]]) -> None:
        self.lists = lists
        self.batches: list[list[str]] = []

    def learn(self, events: Sequence[Event]) -> None:
        self.batches.append([event.user_id for event in events])

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]:
        return [self.lists[event.user_id][:k] for event in events]


HAND_LOG = [
    _event(0, "u1", "a"),  # u1 has no list yet: not scored
    _event(1, "u1", "b"),  # list [b, c]: rank 1
    _event(2, "u2", "c"),  # u2 has no list yet: not scored
    _event(3, "u1", "c"),  # list [b, c]: rank 2
    _event(4, "u2", "a"),  # list [a, z]: rank 1
    _event(5, "u2", "q"),  # list [a, z]: a miss
    _event(6, "u1", "b", kind="dislike"),  # not an interest: never scored
]


def test_hits_ranks_and_coverage_match_a_hand_count() -> None:
    model = FixedLists({"u1": ["b", "c", "x"], "u2": ["a", "z", "y"]})
    [score] = replay(HAND_LOG, [model], k=2)
    assert score.ks == (1, 2)
    assert score.counted == 4
    assert score.hits == {1: 2, 2: 3}
    assert score.hit_rate(1) == pytest.approx(2 / 4)
    assert score.hit_rate(2) == pytest.approx(3 / 4)
    assert score.mrr(2) == pytest.approx((1 + 1 / 2 + 1 + 0) / 4)
    assert score.mrr(1) == pytest.approx((1 + 0 + 1 + 0) / 4)
    # Lists shown at scored events: [b, c] and [a, z]; z is not an item of the log.
    assert score.shown == {"a", "b", "c", "z"}
    assert score.coverage({"a", "b", "c", "q"}) == pytest.approx(3 / 4)
    assert score.events == len(HAND_LOG)


def test_cold_events_are_those_of_users_with_few_earlier_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.evaluate.harness.COLD_EVENTS", 2)
    model = FixedLists({"u1": ["b", "c", "x"], "u2": ["a", "z", "y"]})
    [score] = replay(HAND_LOG, [model], k=2)
    # Scored with fewer than 2 earlier events of the user: event 1 (u1's 2nd, a hit) and
    # event 4 (u2's 2nd, a hit); events 3 and 5 are the users' 3rd.
    assert (score.cold_counted, score.cold_hits) == (2, 2)
    assert score.cold_hit_rate == pytest.approx(1.0)


class EchoLast:
    """Lists the item of the user's latest event, then ``z``: a hit means a repeat."""

    name = "echo"

    def __init__(self) -> None:
        self.last: dict[str, str] = {}

    def learn(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.item_id is None:
                self.last.pop(event.user_id, None)  # forget
            else:
                self.last[event.user_id] = event.item_id

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]:
        return [list(dict.fromkeys([self.last.get(e.user_id, "z"), "z"]))[:k] for e in events]


def _forget(n: int, user: str) -> Event:
    return Event.model_validate(
        {
            "event_id": f"e{n}",
            "user_id": user,
            "type": "forget",
            "timestamp": START + timedelta(minutes=n),
        }
    )


#: With COLD_EVENTS 2 and LONG_HISTORY 3 (set in the test): "first" < 2 earlier events,
#: "5-50" 2 or 3, "more" > 3. Each comment: earlier events of the user, seen or new, the
#: list the user had (EchoLast: their previous item, then z), and the outcome.
SPLIT_LOG = [
    _event(0, "u1", "a"),  # no list yet: not scored
    _event(1, "u1", "a"),  # 1 first, seen; [a, z]: hit at 1
    _event(2, "u2", "b"),  # no list yet: not scored
    _event(3, "u1", "b"),  # 2 5-50, new; [a, z]: miss
    _event(4, "u2", "z"),  # 1 first, new; [b, z]: hit at 2
    _event(5, "u1", "a"),  # 3 5-50, seen; [b, z]: miss
    _event(6, "u1", "b"),  # 4 more, seen; [a, z]: miss
    _event(7, "u3", "c"),  # no list yet: not scored
    _event(8, "u1", "b"),  # 5 more, seen; [b, z]: hit at 1
    _event(9, "u3", "c", kind="dislike"),  # not scored, but counts as history and as seen
    _event(10, "u3", "c"),  # 2 5-50, seen; [c, z]: hit at 1
    _forget(11, "u2"),  # u2's history, items and list are gone
    _event(12, "u2", "z"),  # no list after the forget: not scored
    _event(13, "u2", "b"),  # 1 first (not 3), new (b was before the forget); [z]: miss
]


def test_splits_by_history_and_seen_items_match_a_hand_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.evaluate.harness.COLD_EVENTS", 2)
    monkeypatch.setattr("worker.evaluate.harness.LONG_HISTORY", 3)
    [score] = replay(SPLIT_LOG, [EchoLast()], k=2)
    # Scored: events 1, 3, 4, 5, 6, 8, 10, 13; hits at 1, 4 (rank 2), 8 and 10.
    assert (score.counted, score.hits) == (8, {1: 3, 2: 4})
    splits = {
        name: (split.counted, split.hits, split.reciprocal_ranks)
        for name, split in score.splits.items()
    }
    assert splits == {
        "first": (3, 2, 1.5),  # events 1 (hit), 4 (rank 2), 13
        "5-50": (3, 1, 1.0),  # events 3, 5, 10 (hit)
        "more": (2, 1, 1.0),  # events 6, 8 (hit)
        "seen": (5, 3, 3.0),  # events 1, 5, 6, 8, 10
        "new": (3, 1, 0.5),  # events 3, 4, 13
    }
    assert score.splits["first"].hit_rate == pytest.approx(2 / 3)
    assert score.splits["new"].mrr == pytest.approx(0.5 / 3)
    # cold@K is the "first" split.
    assert (score.cold_counted, score.cold_hits) == (3, 2)
    assert score.cold_hit_rate == pytest.approx(2 / 3)


def test_history_splits_at_the_default_bounds() -> None:
    """One user, 60 events: scored events 1-4 are first, 5-50 are 5-50, 51-59 more;
    items cycle through 7, so events 1-6 are new and 7-59 seen."""
    log = [_event(n, "u1", f"i{n % 7}") for n in range(60)]
    [score] = replay(log, [EchoLast()], k=2)
    counted = {name: split.counted for name, split in score.splits.items()}
    assert counted == {"first": 4, "5-50": 46, "more": 9, "seen": 53, "new": 6}
    assert score.splits["seen"].hits == score.splits["new"].hits == 0  # never a repeat


def test_warmup_events_teach_but_are_not_scored() -> None:
    model = FixedLists({"u1": ["b", "c"], "u2": ["a", "z"]})
    [score] = replay(HAND_LOG, [model], k=2, warmup=0.5)  # the first 3 events
    assert score.counted == 3  # events 3, 4 and 5
    assert score.hits[2] == 2
    assert sum(len(batch) for batch in model.batches) == len(HAND_LOG)


def test_a_batch_never_holds_two_events_of_one_user() -> None:
    batches = list(micro_batches(HAND_LOG, 10))
    assert [[e.event_id for e in batch] for batch in batches] == [
        ["e0"],
        ["e1", "e2"],
        ["e3", "e4"],
        ["e5", "e6"],
    ]
    assert [len(b) for b in micro_batches(HAND_LOG, 1)] == [1] * len(HAND_LOG)


def test_every_model_sees_the_same_batches() -> None:
    first = FixedLists({"u1": ["a"], "u2": ["a"]})
    second = FixedLists({"u1": ["b"], "u2": ["c"]})
    scores = replay(HAND_LOG, [first, second], k=1, batch_size=3)
    assert first.batches == second.batches
    assert [s.hits.get(1, 0) for s in scores] == [1, 1]  # e4 for the first, e1 for the second


def test_the_curve_has_a_point_per_window_of_scored_events() -> None:
    log = [_event(n, f"u{n % 3}", "a") for n in range(600)]
    [score] = replay(log, [FixedLists({f"u{u}": ["a"] for u in range(3)})], k=1)
    assert 50 <= len(score.curve) <= 101
    assert all(rate == 1.0 for _, rate, _ in score.curve[1:])
    assert score.curve[-1][2] == pytest.approx(score.hit_rate(1))
    assert score.curve[-1][0] == len(log)


RETAIL_CSV = """\
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom
536380,22961,JAM MAKING SET PRINTED,-24,2010-12-01 09:41:00,1.45,17809.0,United Kingdom
536381,22139,RETROSPOT TEA SET CERAMIC 11 PC,1,2010-12-01 09:41:00,4.95,,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,17850.0,France
"""

RETAIL_FILTERS = ("CustomerID!=", "Quantity>0", "InvoiceNo!~^C")


def _retail_mapping() -> CsvMapping:
    return CsvMapping(
        item="StockCode",
        time="InvoiceDate",
        user="CustomerID",
        session="InvoiceNo",
        time_format="%Y-%m-%d %H:%M:%S",
        filters=tuple(RowFilter.parse(text) for text in RETAIL_FILTERS),
        context={"country": "Country"},
        title="Description",
    )


def test_a_retail_csv_is_read_as_published(tmp_path: Path) -> None:
    path = tmp_path / "retail.csv.gz"
    path.write_bytes(gzip.compress(RETAIL_CSV.encode()))
    log = load_log(path, _retail_mapping())
    assert log.rows_read == 6
    assert log.rows_dropped == 3  # the cancellation, the negative quantity, no customer
    assert [(e.user_id, e.item_id, e.session_id) for e in log.events] == [
        ("17850", "85123A", "536365"),
        ("17850", "71053", "536365"),
        ("17850", "22633", "536366"),
    ]
    assert log.events[2].context.country == "France"
    assert log.events[0].timestamp == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    assert log.catalog["71053"].title == "WHITE METAL LANTERN"
    assert "lantern" in log.catalog["71053"].tags


def test_equal_times_keep_file_order_and_sessions_can_be_cut_by_gaps(tmp_path: Path) -> None:
    path = tmp_path / "clicks.tsv"
    rows = ["visitor\tproduct\tts", "v1\tb\t200", "v1\ta\t100", "v1\tc\t200", "v1\td\t5000"]
    path.write_text("\n".join(rows) + "\n")
    mapping = CsvMapping(
        item="product",
        time="ts",
        user="visitor",
        time_format="epoch",
        delimiter="\t",
        session_gap_s=1800,
    )
    log = load_log(path, mapping)
    assert [e.item_id for e in log.events] == ["a", "b", "c", "d"]
    assert [e.session_id for e in log.events] == ["v1#0", "v1#0", "v1#0", "v1#1"]


def test_mapping_mistakes_name_the_option(tmp_path: Path) -> None:
    path = tmp_path / "retail.csv"
    path.write_text(RETAIL_CSV)
    with pytest.raises(LogError, match="--user: no column 'Customer'"):
        load_log(path, CsvMapping(item="StockCode", time="InvoiceDate", user="Customer"))
    with pytest.raises(LogError, match="--filter 'Quantity'"):
        RowFilter.parse("Quantity")
    with pytest.raises(LogError, match="bad regular expression"):
        RowFilter.parse("InvoiceNo~[")
    with pytest.raises(LogError, match="no such file"):
        load_log(tmp_path / "absent.jsonl")


def test_unreadable_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = {"event_id": "1", "user_id": "u", "item_id": "i", "type": "click", "timestamp": 1}
    path.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({**good, "type": "x"}) + "\n")
    log = load_log(path)
    assert len(log.events) == 1
    assert log.rows_invalid == 2
    assert log.first_error is not None
    assert log.first_error.startswith("line 2")


def test_row_filters() -> None:
    row = {"Quantity": "6", "InvoiceNo": "C536379", "CustomerID": ""}
    assert RowFilter.parse("Quantity>0").keeps(row)
    assert not RowFilter.parse("Quantity<=5").keeps(row)
    assert not RowFilter.parse("InvoiceNo!~^C").keeps(row)
    assert RowFilter.parse("InvoiceNo~379$").keeps(row)
    assert not RowFilter.parse("CustomerID!=").keeps(row)
    assert not RowFilter.parse("InvoiceNo>3").keeps(row)  # not a number: not kept


def test_tailor_in_the_harness_learns_from_the_sample() -> None:
    """The worker's core, replayed over the bundled slice, finds reorders and neighbours."""
    sample = Path(__file__).parents[1] / "worker" / "sample"
    log = load_log(sample / "events.jsonl.gz", catalog_path=sample / "catalog.jsonl.gz")
    events = log.events[:1500]
    model = TailorModel(Settings(), log.catalog, MemoryStates())
    [score] = replay(events, [model], k=20, warmup=0.2)
    assert score.counted > 800
    assert score.hit_rate(20) > 0.1
    assert score.mrr(20) > 0.02
    assert score.hit_rate(10) <= score.hit_rate(20)


def test_a_forget_event_erases_the_user_in_the_harness() -> None:
    store = MemoryStates()
    model = TailorModel(Settings(), {}, store)
    forget = Event.model_validate(
        {"event_id": "f", "user_id": "u1", "type": "forget", "timestamp": START}
    )
    replay([_event(0, "u1", "a"), _event(1, "u2", "b"), forget], [model], k=5)
    assert set(store.states) == {"u2"}


def test_models_shared_over_processes_score_exactly_as_in_one() -> None:
    """``--jobs``: each process replays its share of the models; the figures must not move."""
    sample = Path(__file__).parents[1] / "worker" / "sample"
    log = load_log(sample / "events.jsonl.gz", catalog_path=sample / "catalog.jsonl.gz")
    events = log.events[:600]

    def models() -> list[Model]:
        return [
            TailorModel(Settings(), log.catalog, MemoryStates()),
            FixedLists({e.user_id: ["a", "b"] for e in events}),
            TailorModel(Settings(parts_off=["sessions"]), log.catalog, name="no sessions"),
        ]

    alone = replay(events, models(), k=20, warmup=0.2)
    progress: list[int] = []
    shared = replay_in_processes(
        events, models(), jobs=2, k=20, warmup=0.2, on_progress=progress.append
    )
    assert [s.name for s in shared] == ["tailor", "fixed", "no sessions"]
    for one, other in zip(alone, shared, strict=True):
        assert (one.counted, one.hits, one.reciprocal_ranks) == (
            other.counted,
            other.hits,
            other.reciprocal_ranks,
        )
        assert one.curve == other.curve
    assert alone[0].hits != alone[2].hits  # the two Tailors differ: the order is checked
    assert progress
    assert progress[-1] == len(events)
