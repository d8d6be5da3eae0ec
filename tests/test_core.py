"""The I/O-free recommender core: ``Recommender.process`` on micro-batches of envelopes.

Why: this is the one code path that ``run``, ``demo`` and evaluation share. These tests
pin what users and operators rely on: lists follow what a user does, replays change
nothing (exactly once), forget erases, filters and the diversity cap hold, and the same
seed and input give the same output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from worker.config import Settings
from worker.contract import CatalogItem, Context, Event, EventType, Recommendation
from worker.models.ranker import FEATURES
from worker.recommend import BatchResult, Envelope, Published, Recommender
from worker.recommend.candidates import UserContext, gather_candidates
from worker.state.user import UserState, decode_user, encode_user

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday morning
CATEGORIES = ("A", "B", "C", "D", "E")
PER_CATEGORY = 30
EXPLORE_REASON = "something new to discover"


def _item(category: str, number: int) -> str:
    return f"{category}{number:02d}"


def _category(item_id: str) -> str:
    return item_id[0]


def _stored(state: UserState) -> UserState:
    """What a later read from Redis returns: a copy through the real hash encoding."""
    fields = {key.encode(): value for key, value in encode_user(state).items()}
    fields.update({f"o:{p}".encode(): str(o).encode() for p, o in state.offsets.items()})
    copy = decode_user(state.user_id, fields, state.vector.size)
    assert copy is not None
    return copy


@dataclass
class World:
    """A recommender, a catalog, a partitioned event log and the stored user states."""

    settings: Settings
    rec: Recommender = field(init=False)
    states: dict[str, UserState] = field(default_factory=dict)
    offsets: Counter[int] = field(default_factory=Counter)
    serial: int = 0

    def __post_init__(self) -> None:
        self.rec = Recommender(self.settings)
        for category in CATEGORIES:
            for number in range(PER_CATEGORY):
                item_id = _item(category, number)
                self.rec.apply_catalog(
                    item_id,
                    CatalogItem(
                        item_id=item_id,
                        title=f"{category} thing {number}",
                        category=["shop", category],
                        tags=[category.lower()],
                        price=1.0 + number,
                    ),
                )

    def envelope(
        self,
        user: str,
        item: str | None,
        kind: EventType = EventType.CLICK,
        minutes: float = 0.0,
        partition: int = 0,
    ) -> Envelope:
        self.serial += 1
        event = Event(
            event_id=f"ev-{self.serial}",
            user_id=user,
            item_id=item,
            type=kind,
            timestamp=T0 + timedelta(minutes=minutes),
            context=Context(country="NL", device="mobile"),
        )
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        return Envelope(event, partition, offset)

    def process(self, batch: Sequence[Envelope], topic_id: str = "") -> BatchResult:
        """Read states, process, and store the writes and erasures as the loop would."""
        users = {envelope.event.user_id for envelope in batch}
        read: dict[str, UserState | None] = {
            user: _stored(self.states[user]) if user in self.states else None for user in users
        }
        result = self.rec.process(batch, read, now=T0 + timedelta(days=1), topic_id=topic_id)
        for user in result.erased:
            self.states.pop(user, None)
        for write in result.writes:
            self.states[write.state.user_id] = _stored(write.state)
        return result

    def background(self, users_per_category: int = 6, minutes: float = 0.0) -> None:
        """Other users, each co-clicking items of one category (popular within it)."""
        batch = []
        rng = np.random.default_rng(11)
        for category in CATEGORIES:
            for n in range(users_per_category):
                user = f"bg-{category}-{n}"
                for step, number in enumerate(rng.choice(12, size=5, replace=False).tolist()):
                    batch.append(
                        self.envelope(user, _item(category, number), minutes=minutes + step)
                    )
        self.process(batch)


def _world(**overrides: object) -> World:
    return World(Settings().with_overrides(top_k=10, **overrides))


def _list_of(result: BatchResult, user: str) -> Published:
    found = [p for p in result.published if p.user_id == user]
    assert len(found) == 1, f"expected one list for {user}, got {len(found)}"
    return found[0]


def _ids(published: Published) -> list[str]:
    return [item for item, _, _ in published.items]


def _ranked_ids(published: Published) -> list[str]:
    """The list without its exploration slots."""
    return [item for item, _, reasons in published.items if reasons != [EXPLORE_REASON]]


def _clicks(world: World, user: str, items: Iterable[str], start: float = 100.0) -> list[Envelope]:
    return [world.envelope(user, item, minutes=start + k) for k, item in enumerate(items)]


# -- (a) lists follow what the user does ------------------------------------------------


@pytest.mark.parametrize("category", ["A", "C"])
def test_clicked_category_dominates_the_list(category: str) -> None:
    world = _world()
    world.background()
    user = f"fan-of-{category}"
    result = world.process(_clicks(world, user, [_item(category, n) for n in range(5)]))
    published = _list_of(result, user)
    counts = Counter(_category(item) for item in _ids(published))
    k = world.settings.top_k
    assert counts[category] >= 0.6 * k, counts
    assert counts[category] > sum(counts.values()) - counts[category], counts


def test_list_changes_after_a_new_interest() -> None:
    world = _world()
    world.background()
    first = _list_of(world.process(_clicks(world, "u", ["A00", "A01", "A02"])), "u")
    later = world.process(_clicks(world, "u", ["D00", "D01", "D02", "D03"], start=200.0))
    counts = Counter(_category(item) for item in _ranked_ids(_list_of(later, "u")))
    assert counts["D"] >= 3, counts
    assert Counter(_category(item) for item in _ids(first))["D"] < counts["D"]


def test_cold_user_gets_a_full_list() -> None:
    world = _world()
    world.background()
    # An item nobody has touched: the user has no history to go on.
    result = world.process([world.envelope("newbie", "E29", kind=EventType.VIEW, minutes=100)])
    published = _list_of(result, "newbie")
    assert len(published.items) == world.settings.top_k


def test_new_user_with_a_new_item_gets_trending_in_their_country() -> None:
    """Cold start with nothing to go on (an item outside the catalog that nobody touched):
    trending in the user's country fills the list, not random picks, even with the trending,
    segment and taste candidates switched off."""
    world = _world(parts_off=["trending", "segment", "taste"])
    world.background()
    result = world.process([world.envelope("newbie", "brand-new", minutes=100)])
    published = _list_of(result, "newbie")
    assert len(published.items) == world.settings.top_k
    trending = [
        item for item, _, reasons in published.items if reasons == ["trending in your country (NL)"]
    ]
    assert len(trending) >= world.settings.top_k - 1  # one slot may explore
    assert set(trending) <= {f"{c}{n:02d}" for c in CATEGORIES for n in range(12)}  # touched


# -- (b) exactly once -------------------------------------------------------------------


def test_replayed_batch_changes_nothing() -> None:
    world = _world()
    world.background()
    batch = _clicks(world, "u1", ["A00", "A01", "A02"]) + _clicks(world, "u2", ["B00", "B01"])
    first = world.process(batch)
    assert first.applied == 5
    assert first.replayed == 0
    before = {user: _stored(world.states[user]) for user in ("u1", "u2")}
    assert before["u1"].events == 3

    again = world.process(batch)
    assert again.replayed == len(batch)
    assert again.applied == 0
    assert again.writes == []
    for user, state in before.items():
        after = world.states[user]
        assert after.events == state.events
        assert after.offsets == state.offsets
        assert after.recent == state.recent
        assert np.array_equal(after.vector, state.vector)


def test_partially_replayed_batch_applies_only_the_new_events() -> None:
    world = _world()
    world.background()
    old = _clicks(world, "u1", ["A00", "A01"])
    world.process(old)
    new = _clicks(world, "u1", ["A02"], start=150.0)
    result = world.process(old + new)
    assert result.replayed == 2
    assert result.applied == 1
    assert len(result.writes) == 1
    state = world.states["u1"]
    assert state.events == 3
    assert [i.item_id for i in state.recent] == ["A00", "A01", "A02"]
    assert state.offsets == {0: new[0].offset}


def test_offsets_are_tracked_per_partition() -> None:
    world = _world()
    world.offsets[1] = 0
    world.offsets[0] = 100  # partition 0 is far ahead of partition 1
    first = world.envelope("u", "A00", partition=0)
    world.process([first])
    other = world.envelope("u", "A01", minutes=1, partition=1)  # offset 0 < 100
    result = world.process([other])
    assert result.applied == 1
    assert world.states["u"].offsets == {0: 100, 1: 0}
    assert world.states["u"].events == 2
    assert world.process([first, other]).replayed == 2


def test_a_recreated_topic_voids_the_old_offsets_and_applies_every_new_event() -> None:
    world = _world()
    old = _clicks(world, "u", ["A00", "A01", "A02", "A03", "A04"])
    assert world.process(old, topic_id="topic-1").applied == 5
    assert world.states["u"].topic_id == "topic-1"
    world.offsets.clear()  # the topic deleted and created again: offsets restart at 0
    new = _clicks(world, "u", ["B00", "B01", "B02"], start=200.0)
    result = world.process(new, topic_id="topic-2")
    assert (result.applied, result.replayed, result.voided) == (3, 0, 1)
    state = world.states["u"]
    assert state.topic_id == "topic-2"
    assert state.offsets == {0: 2}
    assert state.events == 8  # history kept: only the offsets were void
    assert [i.item_id for i in state.recent][-3:] == ["B00", "B01", "B02"]
    again = world.process(new, topic_id="topic-2")  # and the new offsets guard replays
    assert (again.applied, again.replayed, again.voided) == (0, 3, 0)


@pytest.mark.parametrize(
    ("stored", "batch"), [("topic-1", "topic-1"), ("", "topic-2"), ("topic-1", "")]
)
def test_offsets_of_the_same_or_an_unknown_topic_id_still_guard(stored: str, batch: str) -> None:
    world = _world()
    events = _clicks(world, "u", ["A00", "A01", "A02"])
    world.process(events, topic_id=stored)
    result = world.process(events, topic_id=batch)
    assert (result.applied, result.replayed, result.voided) == (0, 3, 0)
    assert world.states["u"].topic_id == stored


# -- (c) forget -------------------------------------------------------------------------


def test_events_years_apart_in_two_batches_do_not_crash_the_models() -> None:
    """Event time may jump by decades between batches (a backfill, then live traffic)."""
    world = _world()
    old = world.envelope("backfill", _item(CATEGORIES[0], 1), minutes=-20 * 365 * 24 * 60)
    world.process([old, world.envelope("backfill", _item(CATEGORIES[0], 2), minutes=-1e7)])
    result = world.process(_clicks(world, "backfill", [_item(CATEGORIES[0], 3)]))
    assert _ids(_list_of(result, "backfill"))


def test_forget_erases_the_user() -> None:
    world = _world()
    world.process(_clicks(world, "gone", ["A00", "A01"]) + _clicks(world, "stays", ["B00"]))
    assert "gone" in world.states
    result = world.process(
        [
            world.envelope("gone", None, EventType.FORGET, minutes=200),
            *_clicks(world, "stays", ["B01"], start=201),
        ]
    )
    assert result.erased == ["gone"]
    assert all(w.state.user_id != "gone" for w in result.writes)
    assert all(p.user_id != "gone" for p in result.published)
    assert "gone" not in world.states
    assert world.states["stays"].events == 2


def test_events_after_forget_start_a_fresh_state() -> None:
    world = _world()
    world.process(_clicks(world, "u", ["A00", "A01", "A02"]))
    batch = [
        world.envelope("u", "B00", minutes=200),
        world.envelope("u", None, EventType.FORGET, minutes=201),
        world.envelope("u", "C00", minutes=202),
        world.envelope("u", "C01", minutes=203),
    ]
    result = world.process(batch)
    assert "u" not in result.erased
    writes = [w for w in result.writes if w.state.user_id == "u"]
    assert len(writes) == 1
    assert writes[0].erase_first is True
    state = writes[0].state
    assert state.events == 2
    assert [i.item_id for i in state.recent] == ["C00", "C01"]
    assert state.offsets == {0: batch[-1].offset}
    assert _list_of(result, "u").covered_event_ids == [e.event.event_id for e in batch[2:]]


def test_forget_of_unknown_user_is_harmless() -> None:
    world = _world()
    result = world.process([world.envelope("never-seen", None, EventType.FORGET)])
    assert result.erased == ["never-seen"]
    assert result.writes == []
    assert result.published == []


# -- (d) list shape ---------------------------------------------------------------------


def test_lists_are_full_unique_and_explained() -> None:
    world = _world(explore_share=0.2)
    world.background()
    batch = []
    for n, category in enumerate(CATEGORIES):
        batch += _clicks(world, f"user-{n}", [_item(category, k) for k in range(3)])
    result = world.process(batch)
    assert len(result.published) == len(CATEGORIES)
    for published in result.published:
        ids = _ids(published)
        assert len(ids) == world.settings.top_k
        assert len(set(ids)) == len(ids)
        for _, score, reasons in published.items:
            assert reasons
            assert all(isinstance(r, str) and r.strip() for r in reasons)
            assert np.isfinite(score)
        ranked_scores = [s for _, s, r in published.items if r != [EXPLORE_REASON]]
        assert ranked_scores == sorted(ranked_scores, reverse=True)


def test_reasons_speak_of_where_items_came_from() -> None:
    world = _world()
    world.background()
    published = _list_of(world.process(_clicks(world, "u", ["A00", "A01", "A02"])), "u")
    reasons = {reason for _, _, rs in published.items for reason in rs}
    assert any(r.startswith("viewed together with A thing") for r in reasons), reasons


# -- (e) filters ------------------------------------------------------------------------


@pytest.mark.parametrize("explore_share", [0.0, 0.9])  # the ranked path, then exploration
def test_unavailable_and_deleted_items_never_appear(explore_share: float) -> None:
    world = _world(explore_share=explore_share)
    world.background()
    hidden = {_item("A", n) for n in range(6)}
    for n, item in enumerate(sorted(hidden)):
        if n % 2:
            world.rec.apply_catalog(item, None)  # tombstone
        else:
            world.rec.apply_catalog(
                item, CatalogItem(item_id=item, category=["shop", "A"], available=False)
            )
    shown: list[str] = []
    for n in range(25):
        user = f"u{n}"
        result = world.process(_clicks(world, user, ["A06", "A07", "A08"], start=100 + n))
        shown += _ids(_list_of(result, user))
    assert not hidden & set(shown)
    assert Counter(_category(i) for i in shown)["A"] >= 25  # A items still recommended


def test_item_available_again_can_return() -> None:
    world = _world(explore_share=0.0)
    world.background()
    off = CatalogItem(item_id="A00", category=["shop", "A"], available=False)
    world.rec.apply_catalog("A00", off)
    assert "A00" not in _ids(_list_of(world.process(_clicks(world, "u", ["A01"])), "u"))
    world.rec.apply_catalog("A00", off.model_copy(update={"available": True}))
    result = world.process(_clicks(world, "v", ["A01", "A00"], start=200))
    assert "A00" in _ids(_list_of(result, "v"))


def test_disliked_and_dismissed_items_never_appear() -> None:
    world = _world(explore_share=0.5)
    world.background()
    batch = _clicks(world, "u", ["A00", "A01"])
    batch.append(world.envelope("u", "A02", EventType.DISLIKE, minutes=110))
    batch.append(world.envelope("u", "A03", EventType.DISMISS, minutes=111))
    first = _ids(_list_of(world.process(batch), "u"))
    later = _ids(_list_of(world.process(_clicks(world, "u", ["A04"], start=120)), "u"))
    for ids in (first, later):
        assert "A02" not in ids
        assert "A03" not in ids
        assert Counter(_category(i) for i in ids)["A"] >= 3


def test_recently_bought_items_do_not_appear() -> None:
    world = _world(just_bought_window_s=3600.0, explore_share=0.5)
    world.background()
    batch = _clicks(world, "u", ["A00", "A01"])
    batch.append(world.envelope("u", "A02", EventType.PURCHASE, minutes=105))
    batch.append(world.envelope("u", "A03", EventType.ADD_TO_CART, minutes=106))
    published = _list_of(world.process(batch), "u")
    assert "A02" not in _ids(published)
    later = world.process(_clicks(world, "u", ["A04"], start=130))  # 25 minutes after buying
    assert "A02" not in _ids(_list_of(later, "u"))
    assert "A03" in _ids(published) or "A03" in _ids(_list_of(later, "u"))


def test_deny_listed_category_never_appears_among_ranked_items() -> None:
    world = _world(deny_categories=["C"], explore_share=0.0)
    world.background()
    for n in range(10):
        user = f"c-fan-{n}"
        result = world.process(_clicks(world, user, ["C00", "C01", "A00"], start=100 + n))
        ids = _ids(_list_of(result, user))
        assert ids
        assert not [i for i in ids if _category(i) == "C"]


def test_deny_listed_category_never_appears_even_when_exploring() -> None:
    world = _world(deny_categories=["C"], explore_share=0.5)
    world.background()
    shown: list[str] = []
    for n in range(20):
        user = f"u{n}"
        result = world.process(_clicks(world, user, ["A00"], start=100 + n))
        shown += _ids(_list_of(result, user))
    assert not [i for i in shown if _category(i) == "C"]


# -- (f) diversity ----------------------------------------------------------------------


def _category_counts(world: World, user: str) -> Counter[str]:
    result = world.process(_clicks(world, user, [_item("A", n) for n in range(6)]))
    return Counter(_category(i) for i in _ranked_ids(_list_of(result, user)))


def test_max_per_category_caps_each_category() -> None:
    uncapped = _world(max_per_category=0)
    uncapped.background()
    assert _category_counts(uncapped, "u")["A"] > 2  # the cap below has work to do

    capped = _world(max_per_category=2)
    capped.background()
    counts = _category_counts(capped, "u")
    assert counts, "no ranked items at all"
    assert max(counts.values()) <= 2, counts
    assert counts["A"] == 2
    published = _list_of(capped.process(_clicks(capped, "v", ["B00", "B01"])), "v")
    assert len(published.items) == capped.settings.top_k


# -- (g) determinism --------------------------------------------------------------------


def _replay_log(seed: int) -> list[list[tuple[str, list[tuple[str, float, list[str]]]]]]:
    world = _world(seed=seed, explore_share=0.2)
    world.background()
    outputs = []
    for step in range(4):
        batch = []
        for n, category in enumerate(CATEGORIES[:3]):
            item = _item(category, (step * 3 + n) % PER_CATEGORY)
            batch.append(world.envelope(f"user-{n}", item, minutes=100 + step))
        batch.append(world.envelope("user-0", "B05", EventType.LIKE, minutes=100 + step))
        result = world.process(batch)
        outputs.append([(p.user_id, p.items) for p in result.published])
    return outputs


def test_same_seed_same_input_same_lists() -> None:
    first, second = _replay_log(seed=5), _replay_log(seed=5)
    assert first == second
    assert len(first) == 4
    assert all(len(lists) == 3 for lists in first)


# -- (h) the published message ----------------------------------------------------------


def test_published_json_is_a_valid_recommendation() -> None:
    world = _world()
    world.background()
    batch = [
        world.envelope("u", "A00", minutes=100),
        world.envelope("someone-else", "B00", minutes=100.5),
        world.envelope("u", "A01", kind=EventType.VIEW, minutes=101),
        world.envelope("u", "A02", kind=EventType.ADD_TO_CART, minutes=102),
    ]
    result = world.process(batch)
    published = _list_of(result, "u")
    message = Recommendation.model_validate_json(published.to_json())
    mine = [e.event.event_id for e in batch if e.event.user_id == "u"]
    assert message.user_id == "u"
    assert message.source_event_id == mine[-1]
    assert message.covered_event_ids == mine
    assert message.schema_version == 1
    assert message.model_version == published.model_version
    assert message.generated_at == T0 + timedelta(days=1)
    assert [i.item_id for i in message.items] == _ids(published)
    assert all(i.reasons for i in message.items)
    assert len(result.published) == 2  # one list per user, not per event
    other = Recommendation.model_validate_json(_list_of(result, "someone-else").to_json())
    assert other.covered_event_ids == [batch[1].event.event_id]


def test_reason_keys_pack_and_unpack_losslessly() -> None:
    from worker.recommend.lists import _pack, _unpack

    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 9, size=(500, 2))
    details = rng.integers(-1, 100_000_000, size=(500, 2))
    details[:5] = -1
    packed = _pack(codes, details)
    for n, key in enumerate(packed.tolist()):
        assert _unpack(key) == [codes[n, 0], details[n, 0], codes[n, 1], details[n, 1]]


def test_covisitation_features_keep_its_order_and_single_out_the_latest_item() -> None:
    """covis_share rescales each user's co-visitation to its strongest candidate (so the
    ranker sees co-occurrence's own order whatever the counts), covis_last counts only the
    neighbours of the user's newest item."""
    world = _world()
    world.background()
    envelopes = [world.envelope("u", "A03", minutes=100), world.envelope("u", "B04", minutes=101)]
    world.process(envelopes)
    state = world.states["u"]
    batch = gather_candidates(
        world.rec.model_context(), [state], [UserContext.of(envelopes[-1].event)]
    )
    valid = batch.valid[0]
    rows = batch.rows[0][valid]
    features = batch.features[0][valid]
    covis, share, last = (
        features[:, FEATURES.index(n)] for n in ("covis", "covis_share", "covis_last")
    )
    assert covis.max() > 0
    assert share.max() == pytest.approx(1.0)
    assert (share >= 0).all()
    assert (share <= 1.0 + 1e-6).all()
    assert np.array_equal(np.argsort(covis, kind="stable"), np.argsort(share, kind="stable"))
    newest = world.rec.index.lookup("B04")
    neighbours, _ = world.rec.covis.neighbours_of(np.array([newest]))
    pulled_by_newest = np.isin(rows, neighbours[0][neighbours[0] >= 0])
    assert (last[~pulled_by_newest] == 0).all()
    assert (last[pulled_by_newest] > 0).any()
    # The newest item's neighbours count in full; the older anchor's are discounted.
    assert (last <= covis + 1e-6).all()


def _thing(item_id: str, title: str, category: str) -> CatalogItem:
    return CatalogItem(item_id=item_id, title=title, category=["shop", category])


def test_a_catalog_item_given_twice_in_one_load_starts_from_its_latest_text() -> None:
    twice = Recommender(Settings())
    twice.apply_catalog_many(
        [("x", _thing("x", "red mug", "kitchen")), ("x", _thing("x", "blue bike", "sport"))]
    )
    once = Recommender(Settings())
    once.apply_catalog_many([("x", _thing("x", "blue bike", "sport"))])
    row = twice.index.row("x")
    assert np.array_equal(twice.taste.vectors[row], once.taste.vectors[row])


def test_a_catalog_reload_skips_the_content_of_items_that_already_took_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.recommend.core as core_module

    rec = Recommender(Settings())
    items = [(f"i{n}", _thing(f"i{n}", f"thing number {n}", "shop")) for n in range(6)]
    rec.apply_catalog_many(items[:4])
    before = rec.taste.vectors[: len(rec.index)].copy()
    computed: list[int] = []
    real = core_module.content_vectors  # type: ignore[attr-defined]  # patched where used

    def counting(words: Any, embeddings: Any, dim: int) -> Any:
        computed.append(len(words))
        return real(words, embeddings, dim)

    monkeypatch.setattr(core_module, "content_vectors", counting)
    rec.apply_catalog_many(items)  # a reload (as after a restore) plus two new items
    assert computed == [2]
    assert np.array_equal(rec.taste.vectors[:4], before[:4])
    assert all(rec.taste.content_set[: len(rec.index)])


def test_the_core_limits_blas_to_the_threads_it_is_given() -> None:
    """One worker per core: BLAS threads of its own would spin beside Kafka and Redis."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=None):  # restored afterwards for the other tests
        Recommender(Settings(blas_threads=1))
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas
        assert all(pool["num_threads"] == 1 for pool in blas)
