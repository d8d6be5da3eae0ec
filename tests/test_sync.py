"""Shared models across workers and restarts: frames, deltas, counting once, checkpoints.

Why: every worker learns the shared models from one stream of deltas and rebuilds them
after a restart from a checkpoint plus the deltas after it (docs/models.md). If a delta
counted twice, a frame were half-read, or a bad checkpoint crashed a start, the copies
would drift apart silently or the worker would not come up. Pure in-process logic: the
in-memory log and checkpoint store of :mod:`worker.testing` run the production code.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest

from tests.test_core import _stored  # a copy through the real Redis hash encoding
from worker.config import Settings
from worker.contract import Context, Event, EventType
from worker.evaluate.harness import TailorModel, replay
from worker.evaluate.partitioning import user_partition, worker_of_partition
from worker.metrics import Metrics
from worker.models.delta import ModelDelta, decode_delta, encode_delta
from worker.models.frames import FORMAT_VERSION, FrameError, pack, unpack
from worker.recommend.candidates import UserContext
from worker.recommend.core import BatchResult, Envelope, Recommender
from worker.state.user import UserState
from worker.sync.checkpoint import CHECKPOINT_KIND, decode_checkpoint, encode_checkpoint
from worker.sync.model_sync import ModelSync
from worker.testing import MemoryCheckpoints, MemoryModelLog

T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)
USERS = [f"user-secret-{n:04d}" for n in range(200)]  # distinctive: scanned for in bytes
ITEMS = [f"item-{n:02d}" for n in range(50)]
HUB = "item-00"  # in about half of all sessions: heavily co-visited
PARTITIONS = 6
KINDS = [EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE]
SETTINGS = Settings().with_overrides(sessions_kept=1024, explore_share=0.0)
REFUSED = "tailor_model_checkpoints_refused_total"
OWNER = worker_of_partition(PARTITIONS, 2)  # two workers: partitions 0-2 and 3-5
STILL = float  # a clock standing at 0.0 (float() == 0.0): no sync lag, no checkpoint due


def _stream(seed: int = 5) -> list[Envelope]:
    """200 users in 5 taste groups, 3 sessions each over two days, in event-time order."""
    rng = np.random.default_rng(seed)
    timed: list[tuple[float, str, str, EventType, str]] = []
    for user in USERS:
        group, country = int(rng.integers(0, 5)), ("NL", "DE", "FR")[int(rng.integers(0, 3))]
        for _ in range(3):
            start, size = float(rng.uniform(0, 48 * 3600)), int(rng.integers(2, 5))
            picks = [ITEMS[10 * group + int(k)] for k in rng.choice(10, size, replace=False)]
            if rng.random() < 0.5:
                picks.insert(int(rng.integers(0, size)), HUB)
            for step, item in enumerate(picks):
                kind = KINDS[int(rng.choice(4, p=[0.4, 0.3, 0.1, 0.2]))]
                timed.append((start + 60 * step, user, item, kind, country))
    offsets, stream = [0] * PARTITIONS, []
    for n, (at, user, item, kind, country) in enumerate(sorted(timed)):
        where, when = Context(country=country, device="web"), T0 + timedelta(seconds=at)
        fields = {"event_id": f"ev-{n}", "user_id": user, "item_id": item, "type": kind}
        event = Event.model_validate({**fields, "timestamp": when, "context": where})
        partition = user_partition(user, PARTITIONS)
        stream.append(Envelope(event, partition, offsets[partition]))
        offsets[partition] += 1
    return stream


STREAM = _stream()
BATCHES = [STREAM[at : at + 100] for at in range(0, len(STREAM), 100)]


class _Store:
    """User states as Redis holds them: copies in and out, since ``process`` mutates the
    states it is given and a state that was not written must not change behind our back."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}

    def read(self, batch: list[Envelope]) -> dict[str, UserState | None]:
        users = {envelope.event.user_id for envelope in batch}
        return {u: _stored(self.states[u]) if u in self.states else None for u in users}

    def write(self, result: BatchResult) -> None:
        for write in result.writes:
            self.states[write.state.user_id] = _stored(write.state)


def _run(
    rec: Recommender, batches: list[list[Envelope]], store: _Store, sync: ModelSync | None = None
) -> list[ModelDelta]:
    """Batches as the loop runs them: poll, process, publish, then write the users."""
    deltas = []
    for batch in batches:
        if sync is not None:
            sync.poll()
        result = rec.process(batch, store.read(batch), now=T0)
        if sync is not None:
            sync.publish(result.delta)
        store.write(result)
        deltas += [result.delta] if result.delta is not None else []
    return deltas


def _sync(rec: Recommender, log: MemoryModelLog, saved: MemoryCheckpoints, **kw: Any) -> ModelSync:
    return ModelSync(rec, log.reader(STILL), saved, 60.0, clock=STILL, background=False, **kw)


def _trend(rec: Recommender) -> np.ndarray[Any, Any]:
    """Popularity per item id in "now" units (rows and decay origins differ per worker)."""
    rows = [rec.index.lookup(item) for item in ITEMS]
    return rec.trending.scores[rows] / rec.trending.clock.current_scale()


def _neighbours(rec: Recommender, item: str) -> dict[str, float]:
    rows, weights = rec.covis.neighbours_of(np.array([rec.index.lookup(item)]))
    pairs = zip(rows[0].tolist(), weights[0].tolist(), strict=True)
    return {rec.index.item_id(r): w for r, w in pairs if r >= 0}


def _frame(entries: list[dict[str, Any]], body: bytes, **header: Any) -> bytes:
    """A frame with a valid checksum around any header: what a hostile writer can make."""
    fields = {"kind": "k", "version": FORMAT_VERSION, "compressed": False, "meta": {}}
    raw = orjson.dumps({**fields, "size": len(body), "arrays": entries, **header})
    framed = b"TLRF" + struct.pack("<I", len(raw)) + raw + body
    return framed + struct.pack("<I", zlib.crc32(framed))


@pytest.mark.parametrize("compress", [False, True])
def test_frame_round_trip_keeps_dtypes_shapes_and_meta(compress: bool) -> None:
    """Every whitelisted dtype, any byte order, empty and 2-D arrays come back bit-exact."""
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "i4": np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
        "i8": np.arange(12, dtype=np.int64).reshape(3, 4) * 2**40,
        "f4": np.array([[1.5, -0.0], [np.inf, 3e-38]], dtype=np.float32),
        "f8": np.array([np.pi, -1e300, np.nan]),
        "u1": np.frombuffer(b"\x00\xff\x10", dtype=np.uint8),
        "b1": np.array([True, False, True]),
        "big_endian": np.array([1, 256, -7], dtype=">i8"),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    meta = {"origin": "w1", "positions": {"3": [4, 9]}, "items": ["a", "é"], "x": None}
    found_meta, found = unpack(pack("test.kind", meta, arrays, compress=compress), "test.kind")
    assert found_meta == meta
    assert list(found) == list(arrays)
    for name, array in arrays.items():
        assert found[name].shape == array.shape, name
        assert found[name].dtype == array.dtype.newbyteorder("<"), name
        np.testing.assert_array_equal(found[name], array)


def test_damaged_and_foreign_frames_are_refused() -> None:
    """Any single damaged byte or cut, another kind or version: refused whole, not half-read."""
    data = pack("k", {"n": 1}, {"a": np.arange(6, dtype=np.int32)})
    for at in range(len(data)):
        flipped = bytearray(data)
        flipped[at] ^= 0x40
        with pytest.raises(FrameError):
            unpack(bytes(flipped), "k")
        with pytest.raises(FrameError):
            unpack(data[:at], "k")
    with pytest.raises(FrameError, match="expected"):
        unpack(pack("tailor.model.delta", {}, {}), CHECKPOINT_KIND)
    with pytest.raises(FrameError, match="version"):
        unpack(_frame([], b"", version=FORMAT_VERSION + 1), "k")


class _Tripwire:
    """Unpickling this records it: the proof that a payload was (or was not) unpickled."""

    tripped: ClassVar[list[str]] = []

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_Tripwire.tripped.append, ("unpickled!",))


def test_pickles_are_never_read_and_object_arrays_never_packed() -> None:
    """Unpickling runs whatever the bytes name: frames from other processes must not."""
    hostile = np.array([_Tripwire()], dtype=object)
    saved = io.BytesIO()
    np.save(saved, hostile, allow_pickle=True)
    pickled = pickle.dumps(hostile)
    entry = {"name": "a", "dtype": "|O", "shape": [1], "at": 0}  # an object array, pickled
    framed = _frame([entry], pickled)
    for payload in (saved.getvalue(), pickled, framed):
        with pytest.raises(FrameError):
            unpack(payload, "k")
    assert _Tripwire.tripped == []
    for array in (hostile, np.array(["ab"])):  # nor packs a dtype off the whitelist
        with pytest.raises(TypeError, match="not one a frame can hold"):
            pack("k", {}, {"a": array})


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "<f8", "shape": [3], "at": 0},  # 24 bytes in a 16-byte body
        {"dtype": "<f8", "shape": [1], "at": -8},
        {"dtype": {"names": ["x"], "formats": ["<f8"]}, "shape": [2], "at": 0},
        {"dtype": "<f8", "shape": [2**32, 2**32], "at": 0},  # element count overflows
    ],
    ids=["past-body", "negative-offset", "structured-dtype", "overflowing-shape"],
)
def test_crafted_array_entries_raise_frame_error(entry: dict[str, Any]) -> None:
    """Callers catch FrameError (restore) or ValueError (deltas): nothing else may escape."""
    with pytest.raises(FrameError):
        unpack(_frame([{"name": "a", **entry}], bytes(16)), "k")


@dataclass
class TwoWorkers:
    one: Recommender
    workers: list[Recommender]
    deltas: list[ModelDelta]  # the two workers', in the order they were made
    outcomes: list[str]  # of each worker applying the other's


@pytest.fixture(scope="module")
def two() -> TwoWorkers:
    """The stream learned by one worker, and by two exchanging deltas after every batch."""
    one = Recommender(SETTINGS, origin="one")
    _run(one, BATCHES, _Store())
    workers, store = [Recommender(SETTINGS, origin=f"w{n}") for n in range(2)], _Store()
    deltas: list[ModelDelta] = []
    outcomes: list[str] = []
    for batch in BATCHES:
        shares = [[e for e in batch if OWNER[e.partition] == n] for n in range(2)]
        made = [_run(worker, [share], store) for worker, share in zip(workers, shares, strict=True)]
        for n, [delta] in enumerate(made):
            outcomes.append(workers[1 - n].apply_delta(delta))
            deltas.append(delta)
    return TwoWorkers(one, workers, deltas, outcomes)


def test_delta_round_trip(two: TwoWorkers) -> None:
    """Other workers learn from the decoded delta: it must be the one that was made."""
    parts = ("lessons", "pair_source", "visit_token", "taste_source", "segment_key")
    delta = next(d for d in two.deltas if all(getattr(d, part).size for part in parts))
    decoded = decode_delta(encode_delta(delta))
    for field in dataclasses.fields(ModelDelta):
        mine, theirs = getattr(delta, field.name), getattr(decoded, field.name)
        if isinstance(mine, np.ndarray):
            assert (theirs.dtype, theirs.shape) == (mine.dtype, mine.shape), field.name
            np.testing.assert_array_equal(theirs, mine, err_msg=field.name)
        else:
            assert theirs == mine, field.name


@pytest.mark.parametrize(
    "name", ["trend_item", "pair_target", "visit_item", "taste_negative", "segment_key"]
)
def test_a_delta_pointing_outside_its_tables_is_refused(two: TwoWorkers, name: str) -> None:
    """An index past its table would learn garbage into some other item (or crash)."""
    delta = two.deltas[3]
    bound = len(delta.segment_keys) if name == "segment_key" else len(delta.items)
    for bad in (bound, -1):
        column = getattr(delta, name).copy()
        column[0] = bad
        with pytest.raises(ValueError, match="outside"):
            decode_delta(encode_delta(dataclasses.replace(delta, **{name: column})))


def test_two_workers_learn_what_one_learns(two: TwoWorkers) -> None:
    """Sharing deltas is only worth it if every copy ends where one worker would."""
    assert set(two.outcomes) == {"applied"}
    assert {OWNER[p] for d in two.deltas for p in d.positions} == {0, 1}
    for worker in two.workers:
        assert worker.totals.events == two.one.totals.events == len(STREAM)
        assert worker.totals.visits == two.one.totals.visits
        assert worker.totals.trend_weight == pytest.approx(two.one.totals.trend_weight)
        np.testing.assert_allclose(_trend(worker), _trend(two.one), rtol=1e-9)
        theirs, ours = _neighbours(worker, HUB), _neighbours(two.one, HUB)
        assert len(ours) >= 40
        assert theirs.keys() == ours.keys()
        assert list(theirs.values()) == pytest.approx([ours[k] for k in theirs], rel=1e-5)


def test_two_workers_count_the_pairs_one_counts(two: TwoWorkers) -> None:
    """docs/models.md: the fault suite compares co-visit pairs with a one-worker replay."""
    for worker in two.workers:
        assert worker.totals.pairs == two.one.totals.pairs


def test_a_delta_counts_once_and_an_overlapping_one_not_at_all(two: TwoWorkers) -> None:
    """A delta read twice, or a redone batch, must not count events twice in any copy."""
    rec, delta = Recommender(SETTINGS), two.deltas[0]
    assert delta.origin == two.deltas[2].origin == "w0"
    assert rec.apply_delta(delta) == "applied"
    learned, totals, contributed = _trend(rec), dataclasses.replace(rec.totals), {**rec.contributed}
    assert (totals.events, totals.deltas) == (delta.events, 1)
    assert rec.apply_delta(delta) == "duplicate"
    # The same partitions' events again plus later ones: a batch redone after a crash.
    share = [e for e in STREAM[:150] if OWNER[e.partition] == 0]
    [redone] = _run(Recommender(SETTINGS), [share], _Store())
    assert rec.apply_delta(redone) == "refused"
    assert (rec.totals, rec.contributed) == (totals, contributed)
    np.testing.assert_array_equal(_trend(rec), learned)
    assert rec.apply_delta(two.deltas[2]) == "applied"  # what starts past it still counts


def test_own_deltas_read_back_are_not_applied_again() -> None:
    """A worker learns its deltas when it makes them; reading them back must not add them."""
    rec, metrics, log = Recommender(SETTINGS, origin="me"), Metrics(), MemoryModelLog()
    sync = _sync(rec, log, MemoryCheckpoints(STILL), metrics=metrics)
    _run(rec, BATCHES[:2], _Store(), sync)
    assert sync.poll() == 0
    assert (len(log.records), sync.position) == (2, 2)
    assert metrics.registry.get_sample_value("tailor_model_deltas_total", {"result": "own"}) == 2
    assert (rec.totals.deltas, rec.totals.events) == (2, len(BATCHES[0]) + len(BATCHES[1]))


def test_crash_after_the_delta_before_the_users_write_counts_once() -> None:
    """docs/models.md's first crash row: users updated once, shared models not again."""
    reference, reference_store = Recommender(SETTINGS), _Store()
    _run(reference, BATCHES, reference_store)
    log, checkpoints, store = MemoryModelLog(), MemoryCheckpoints(STILL), _Store()
    crashed, lost = Recommender(SETTINGS, origin="before"), BATCHES[5]
    before = _sync(crashed, log, checkpoints)
    _run(crashed, BATCHES[:5], store, before)
    before.publish(crashed.process(lost, store.read(lost)).delta)
    # -- killed here: the delta is on the log, the users' states were never written
    rec = Recommender(SETTINGS, origin="after")
    sync = _sync(rec, log, checkpoints)
    assert sync.restore() == "no usable model checkpoint: models start empty"
    assert sync.catch_up() == 6
    old = store.read(lost)
    expected = {u: (s.events if s else 0) for u, s in old.items()}
    for envelope in lost:
        expected[envelope.event.user_id] += 1
    redone = rec.process(lost, old)
    assert redone.applied == len(lost)  # the users learn the batch ...
    assert redone.delta is None  # ... the shared models do not learn it again
    store.write(redone)
    assert {user: store.states[user].events for user in expected} == expected
    _run(rec, BATCHES[6:], store, sync)
    assert rec.totals.events == reference.totals.events == len(STREAM)
    assert rec.totals.visits == reference.totals.visits
    assert rec.totals.pairs == reference.totals.pairs
    assert {u: s.events for u, s in store.states.items()} == {
        u: s.events for u, s in reference_store.states.items()
    }
    np.testing.assert_allclose(_trend(rec), _trend(reference), rtol=1e-9)


def test_checkpoint_round_trip_rebuilds_the_same_models() -> None:
    """A restart must not change what the models know, nor the lists they make."""
    rec, store = Recommender(SETTINGS), _Store()
    _run(rec, BATCHES[:8], store)
    data = encode_checkpoint(rec, 11)
    fresh = Recommender(SETTINGS)
    checkpoint = decode_checkpoint(data, fresh)
    checkpoint.install(fresh)
    assert checkpoint.log_position == 11
    meta, arrays = unpack(data, CHECKPOINT_KIND)
    fresh_meta, fresh_arrays = unpack(encode_checkpoint(fresh, 11), CHECKPOINT_KIND)
    del fresh_meta["origin"], meta["origin"]
    assert fresh_meta == meta
    assert meta["totals"] == dataclasses.asdict(rec.totals)
    assert fresh_arrays.keys() == arrays.keys()
    for name in ("trend_scores", "covis_neighbour", "covis_weight", "taste_vectors"):
        assert arrays[name].size, name
    for name, array in arrays.items():
        np.testing.assert_array_equal(fresh_arrays[name], array, err_msg=name)
    np.testing.assert_array_equal(_trend(fresh), _trend(rec))
    # Installing refreshes trending's cached top lists and peaks; the running copy
    # refreshes them every 1000 events, so bring it level before comparing lists.
    rec.trending.refresh()
    users = [e.event.user_id for e in BATCHES[7][:5]]
    states = [store.states[user] for user in users]
    contexts = [UserContext.of(e.event) for e in BATCHES[7][:5]]
    assert fresh.recommend(states, contexts) == rec.recommend(states, contexts)


def _bad_checkpoint(kind: str, good: bytes) -> bytes:
    """A checkpoint restore must refuse: damaged, of other settings, or crafted."""
    if kind == "corrupt":
        return good[:100] + bytes([good[100] ^ 1]) + good[101:]
    if kind == "truncated":
        return good[: len(good) // 2]
    other = Recommender(SETTINGS.with_overrides(vector_dim=16))
    _run(other, BATCHES[:2], _Store())
    if kind == "incompatible":
        return encode_checkpoint(other, 5)
    meta, arrays = unpack(encode_checkpoint(other, 5), CHECKPOINT_KIND)
    if kind == "inconsistent":  # labelled with our settings, item vectors of dimension 16
        meta["shape"] = unpack(good, CHECKPOINT_KIND)[0]["shape"]
        return pack(CHECKPOINT_KIND, meta, arrays, compress=True)
    entry = {"name": "trend_scores", "dtype": "<f8", "shape": [2**32, 2**32], "at": 0}
    return _frame([entry], bytes(8), kind=CHECKPOINT_KIND, meta=meta)


@pytest.mark.parametrize(
    "kind", ["corrupt", "truncated", "incompatible", "inconsistent", "overflowing"]
)
def test_a_bad_checkpoint_is_refused_and_the_older_one_used(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad checkpoint costs a log line and a metric, never the start nor a half-load."""
    older_rec, store = Recommender(SETTINGS), _Store()
    _run(older_rec, BATCHES[:3], store)
    older = encode_checkpoint(older_rec, 3)
    _run(older_rec, BATCHES[3:6], store)
    checkpoints, metrics = MemoryCheckpoints(STILL, keep=3), Metrics()
    checkpoints.save(older)
    checkpoints.save(_bad_checkpoint(kind, encode_checkpoint(older_rec, 6)))
    rec = Recommender(SETTINGS)
    with caplog.at_level(logging.ERROR, logger="tailor.sync"):
        said = _sync(rec, MemoryModelLog(), checkpoints, metrics=metrics).restore()
    assert said.endswith("at model log position 3")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["tailor.sync"]
    assert "refused" in errors[0].getMessage()
    if kind == "incompatible":
        assert "vector_dim" in errors[0].getMessage()
    assert metrics.registry.get_sample_value(REFUSED) == 1
    assert rec.totals.events == sum(len(batch) for batch in BATCHES[:3])


def test_with_no_good_checkpoint_the_models_start_empty(caplog: pytest.LogCaptureFixture) -> None:
    """Starting cold (and reading the whole log) beats not starting at all."""
    good = encode_checkpoint(Recommender(SETTINGS), 0)
    checkpoints, metrics = MemoryCheckpoints(STILL, keep=3), Metrics()
    for kind in ("corrupt", "truncated", "incompatible"):
        checkpoints.save(_bad_checkpoint(kind, good))
    rec, log = Recommender(SETTINGS), MemoryModelLog()
    sync = _sync(rec, log, checkpoints, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="tailor.sync"):
        assert sync.restore() == "no usable model checkpoint: models start empty"
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 3
    assert metrics.registry.get_sample_value(REFUSED) == 3
    assert (len(rec.index), rec.totals.events, sync.position) == (0, 0, log.first)


@dataclass
class Restarted:
    restarted: Recommender
    said: str
    caught_up: int
    log: MemoryModelLog
    checkpoints: MemoryCheckpoints


@pytest.fixture(scope="module")
def restarted() -> Restarted:
    """Checkpoint halfway, go on 4 batches, restart (restore, catch up) and resume."""
    log, checkpoints, store = MemoryModelLog(), MemoryCheckpoints(STILL, keep=3), _Store()
    half = len(BATCHES) // 2
    before = Recommender(SETTINGS, origin="before")
    sync = _sync(before, log, checkpoints)
    _run(before, BATCHES[:half], store, sync)
    sync.poll()  # its own last delta: the checkpoint reflects every record before it
    sync.checkpoint()
    _run(before, BATCHES[half : half + 4], store, sync)
    rec = Recommender(SETTINGS, origin="after")
    sync = _sync(rec, log, checkpoints)
    said, caught_up = sync.restore(), sync.catch_up()
    _run(rec, BATCHES[half + 4 :], store, sync)
    return Restarted(rec, said, caught_up, log, checkpoints)


def test_restore_and_catch_up_equal_an_uninterrupted_run(
    restarted: Restarted, two: TwoWorkers
) -> None:
    """A restart loses nothing and counts nothing twice: checkpoint + log = the models."""
    half = len(BATCHES) // 2
    assert restarted.said.endswith(f"at model log position {half}")
    assert restarted.caught_up == 4
    mine, theirs = restarted.restarted.totals, two.one.totals  # one worker, no restart
    assert (mine.events, mine.pairs, mine.visits) == (theirs.events, theirs.pairs, theirs.visits)
    assert mine.events == len(STREAM)
    assert mine.trend_weight == pytest.approx(theirs.trend_weight)
    np.testing.assert_allclose(_trend(restarted.restarted), _trend(two.one), rtol=1e-9)


def test_no_user_id_in_any_delta_or_checkpoint(two: TwoWorkers, restarted: Restarted) -> None:
    """Deltas and checkpoints leave the process; user ids must stay in the users' states."""
    frames = [encode_delta(delta) for delta in two.deltas]
    frames += [data for data, _, _ in restarted.log.records]
    checkpoints = [*restarted.checkpoints.saved, *(encode_checkpoint(w, 0) for w in two.workers)]
    for data in checkpoints:  # compressed: read what they hold, not only their bytes
        meta, arrays = unpack(data, CHECKPOINT_KIND)
        frames += [data, orjson.dumps(meta), *(array.tobytes() for array in arrays.values())]
    assert len(restarted.checkpoints.saved) == 1
    assert len(frames) > 100
    for data in frames:
        assert b"user-secret" not in data
        assert not [user for user in USERS if user.encode() in data]


@pytest.mark.parametrize("sync", [True, False])
def test_harness_workers_learn_the_whole_stream_only_with_sync(sync: bool) -> None:
    """evaluate --workers must measure shared models, not each worker's slice of the log."""
    events = [envelope.event for envelope in STREAM[:700]]
    model = TailorModel(SETTINGS, {}, workers=3, sync=sync)
    replay(events, [model], k=10, batch_size=64)
    if sync:  # deltas of the last batches are within the simulated lag: let it pass
        model.now += SETTINGS.model_sync_max_lag_s + 1
        for worker in model.workers:
            assert worker.sync is not None
            worker.sync.poll(limit=1_000_000)
    learned = [worker.recommender.totals.events for worker in model.workers]
    if sync:
        assert learned == [len(events)] * 3
    else:
        assert sum(learned) == len(events)
        assert all(0 < n < len(events) for n in learned)


@dataclass
class Zombie:
    zombie: ModelSync  # lost its partitions, published its last batch after the taker's
    taker: ModelSync  # took the partitions over and redid a longer batch first
    reader: Recommender  # read the whole log and nothing else
    log: MemoryModelLog
    checkpoints: MemoryCheckpoints
    metrics: Metrics  # the zombie's


@pytest.fixture
def zombie() -> Zombie:
    """The chaos suite's zombie at the smallest scale (the CI failure of stop 16).

    Both workers learn their own delta at once; the log holds the taker's first. Every
    reader of the log takes the taker's and drops the zombie's as a duplicate, while the
    zombie kept its own and refuses the taker's: its models hold fewer events than the
    log's, and a checkpoint of them would hand that on to every worker starting from it.
    """
    log, checkpoints, metrics = MemoryModelLog(), MemoryCheckpoints(STILL), Metrics()
    share = [e for e in BATCHES[0] + BATCHES[1] if OWNER[e.partition] == 0]
    late = Recommender(SETTINGS, origin="zombie")
    zombie = ModelSync(late, log.reader(STILL), checkpoints, 60.0, clock=STILL,
                       background=False, metrics=metrics)  # fmt: skip
    early = Recommender(SETTINGS, origin="taker")
    taker = ModelSync(early, log.reader(STILL), checkpoints, 60.0, clock=STILL,
                      background=False)  # fmt: skip
    stale = late.process(share[: len(share) // 2], _Store().read(share)).delta
    taker.publish(early.process(share, _Store().read(share)).delta)
    zombie.publish(stale)
    reader = Recommender(SETTINGS, origin="reader")
    ModelSync(reader, log.reader(STILL), checkpoints, 60.0, clock=STILL).catch_up()
    zombie.clock = taker.clock = lambda: 60.0  # a checkpoint interval later: one is due
    return Zombie(zombie, taker, reader, log, checkpoints, metrics)


def test_a_zombie_learning_its_own_delta_first_stops_checkpointing(zombie: Zombie) -> None:
    assert zombie.reader.totals.events == zombie.taker.recommender.totals.events
    zombie.zombie.poll()
    assert zombie.zombie.diverged
    assert zombie.zombie.recommender.totals.events < zombie.reader.totals.events
    assert zombie.metrics.registry.get_sample_value("tailor_model_diverged") == 1
    assert not zombie.zombie.maybe_checkpoint()
    assert zombie.checkpoints.saved == []


def test_the_taker_checkpoints_exactly_what_the_log_holds(zombie: Zombie) -> None:
    """Its own delta is not read back yet: ``maybe_checkpoint`` reads it first, so the
    checkpoint plus the log after it give any starting worker the log's models."""
    assert zombie.taker.unread_own
    assert zombie.taker.maybe_checkpoint()
    assert zombie.taker.consistent
    assert not zombie.taker.diverged
    assert zombie.taker.position == len(zombie.log.records) == 2
    started = Recommender(SETTINGS, origin="started")
    sync = ModelSync(started, zombie.log.reader(STILL), zombie.checkpoints, 60.0, clock=STILL)
    assert sync.restore().endswith("at model log position 2")
    sync.catch_up()
    assert started.totals == zombie.reader.totals
    assert started.contributed == zombie.reader.contributed


def _clicks_on(
    partition: int, offsets: range, user: str = "user-secret-recreated"
) -> list[Envelope]:
    """Clicks of one user at ``offsets`` of ``partition``."""
    return [
        Envelope(
            Event.model_validate(
                {
                    "event_id": f"ev-{partition}-{offset}-{user}",
                    "user_id": user,
                    "item_id": ITEMS[offset % len(ITEMS)],
                    "type": EventType.CLICK,
                    "timestamp": T0 + timedelta(minutes=offset),
                    "context": Context(country="NL", device="web"),
                }
            ),
            partition,
            offset,
        )
        for offset in offsets
    ]


def test_a_recreated_events_topic_voids_what_the_models_count_in_every_copy() -> None:
    """Offsets restart at 0 in a recreated topic: without the topic id the models took
    its events for ones they held (learning nothing) and its deltas for duplicates."""
    maker = Recommender(SETTINGS, origin="maker")
    reader = Recommender(SETTINGS, origin="reader")
    shared, metrics = MemoryModelLog(), Metrics()
    sync = ModelSync(
        reader, shared.reader(STILL), MemoryCheckpoints(STILL), 3600, metrics=metrics, clock=STILL
    )
    old = maker.process(_clicks_on(0, range(5)), {}, topic_id="topic-1")
    new = maker.process(_clicks_on(0, range(3)), {}, topic_id="topic-2")
    assert (old.models_voided, new.models_voided) == ("", "topic-1")
    assert new.delta is not None
    assert old.delta is not None
    assert (new.delta.topic_id, new.delta.positions) == ("topic-2", {0: (0, 2)})
    assert (maker.totals.events, maker.contributed) == (8, {0: 2})
    for delta in (old.delta, new.delta):
        shared.records.append((encode_delta(delta), 0.0, delta.origin))
    assert sync.catch_up() == 2
    assert (reader.totals.events, reader.contributed) == (8, {0: 2})
    assert reader.contributed_topic == "topic-2"
    assert sync.consistent  # the log's own count agrees
    assert metrics.registry.get_sample_value("tailor_model_offsets_voided_total") == 1
    assert reader.apply_delta(new.delta) == "duplicate"  # the new offsets count again
    older = dataclasses.replace(old.delta, topic_id="")  # a delta of a worker without ids
    assert reader.apply_delta(older) == "refused"  # judged against the offsets held
    restored = decode_checkpoint(encode_checkpoint(reader, sync.position), Recommender(SETTINGS))
    assert (restored.contributed_topic, restored.contributed) == ("topic-2", {0: 2})
