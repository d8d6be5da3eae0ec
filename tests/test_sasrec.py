"""The neural sequence baseline (SASRec retrained daily), on small logs with a known answer.

Every test that trains uses one small network shape, so JAX compiles it once for the
file. Tests that need no JAX (the packing, the registry without the extra) run anyway.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from worker.contract import Event, EventType
from worker.evaluate.baselines import DEFAULT_PARAMS, PARAM_GRIDS, installed, make_baseline
from worker.evaluate.baselines.sasrec import (
    Sasrec,
    _initial,
    _network,
    _pack,
    _Segments,
    _segments,
    _serve_last,
)
from worker.evaluate.command import _baseline_names
from worker.evaluate.logs import LogError


@pytest.fixture
def jax() -> None:
    """Skips the test without the ``neural`` extra (``make test`` installs it)."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")


@pytest.fixture
def no_jax(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the extra were missing: ``import jax`` fails and ``find_spec`` finds nothing."""
    for name in ("jax", "optax"):
        monkeypatch.setitem(sys.modules, name, None)


needs_jax = pytest.mark.usefixtures("jax")

_START = datetime(2024, 1, 1, tzinfo=UTC)  # a midnight: day boundaries are whole days
_T0 = _START.timestamp()
_DAY = 86400.0
_CHAIN = "ABCDEF"
#: Small enough to train in a second, big enough to learn a cycle of six items.
_SMALL: dict[str, object] = {
    "factors": 16,
    "layers": 1,
    "max_length": 8,
    "epochs": 40,
    "learning_rate": 0.01,
    "batch_size": 8,
    "negatives": 16,
    "dropout": 0.1,
    "hide_session": False,
}


def _event(user: str, item: str | None, at: float, kind: EventType = EventType.PURCHASE) -> Event:
    return Event(
        event_id=f"{user}-{item}-{at}",
        user_id=user,
        item_id=item,
        type=kind,
        timestamp=_START + timedelta(seconds=at),
    )


def _probe(user: str) -> Event:
    """A recommend request for ``user`` (the harness passes the user's latest event)."""
    return _event(user, "nothing", 0, kind=EventType.VIEW)


def _model(**changes: object) -> Sasrec:
    return Sasrec(**{**_SMALL, **changes})  # type: ignore[arg-type]


def _chain_log(users: int = 60, at: float = 0.0) -> list[Event]:
    """Each user walks the cycle A -> B -> ... -> F -> A from a random item, 5 steps."""
    rng = np.random.default_rng(1)
    events = []
    for user in range(users):
        start = int(rng.integers(len(_CHAIN)))
        for step in range(5):
            item = _CHAIN[(start + step) % len(_CHAIN)]
            events.append(_event(f"u{user}", item, at + user * 60 + step))
    return sorted(events, key=lambda event: event.timestamp)


def _learn_each(model: Sasrec, events: list[Event]) -> None:
    for event in events:
        model.learn([event])


@needs_jax
def test_after_a_retrain_the_next_item_of_the_cycle_comes_first() -> None:
    model = _model()
    _learn_each(model, _chain_log())
    assert model.retrains == 0
    model.learn([_event("new", "A", 1.5 * _DAY)])  # past the first day boundary: fit
    assert model.retrains == 1
    model.learn([_event("other", "C", 1.5 * _DAY + 1)])
    lists = model.recommend([_probe("new"), _probe("other")], 3)
    assert [items[0] for items in lists] == ["B", "D"]
    model.learn([_event("new", "B", 1.5 * _DAY + 2)])  # no retrain: the frozen model reads on
    assert model.retrains == 1
    assert model.recommend([_probe("new")], 1) == [["C"]]


@needs_jax
def test_hide_seen_drops_everything_the_user_had() -> None:
    model = make_baseline("sasrec", {**_SMALL, "hide_seen": True})  # as --tune builds it
    assert isinstance(model, Sasrec)
    _learn_each(model, _chain_log())
    model.learn([_event("new", "A", 1.5 * _DAY)])
    model.learn([_event("new", "B", 1.5 * _DAY + 7200)])  # a later visit: not in the session
    [ranked] = model.recommend([_probe("new")], 4)
    assert ranked[0] == "C"
    assert len(ranked) == 4
    assert not set(ranked) & set("AB")


@needs_jax
def test_hide_session_drops_the_visit_and_nothing_else() -> None:
    model = _model(hide_session=True)
    _learn_each(model, _chain_log())
    model.learn([_event("new", "A", 1.5 * _DAY)])
    model.learn([_event("new", "B", 1.5 * _DAY + 7200)])  # a new session (30 min gap)
    [ranked] = model.recommend([_probe("new")], 6)
    assert ranked[0] == "C"
    assert "B" not in ranked
    assert "A" in ranked  # from the earlier visit: only hide_seen drops it


@needs_jax
def test_items_unknown_to_the_model_are_skipped_and_never_listed() -> None:
    model = _model()
    _learn_each(model, _chain_log())
    model.learn([_event("new", "A", 1.5 * _DAY)])
    model.learn([_event("new", "NEWITEM", 1.5 * _DAY + 1)])  # after the fit
    [ranked] = model.recommend([_probe("new")], 7)
    assert ranked[0] == "B"  # the sequence is still [A]
    assert ranked[:6] == [item for item in ranked if item != "NEWITEM"][:6]
    assert "NEWITEM" in ranked  # only as the popular fallback's last pick


@needs_jax
def test_fits_run_at_midnight_of_event_time_on_the_events_before_it_only() -> None:
    model = _model(epochs=1)
    popular = make_baseline("popular", {"hide_session": False})
    events = _chain_log(users=20, at=_DAY - 3600)  # from 23:00 on the first day
    for event in events:
        model.learn([event])
        popular.learn([event])
    probe = _probe("u3")
    assert model.retrains == 0  # still before the first midnight: popular items only
    assert model.recommend([probe], 4) == popular.recommend([probe], 4)
    model.learn([_event("late", "Z", _DAY + 60)])  # 00:01: the nightly fit, without Z
    newest = max(event.epoch_seconds for event in events)
    assert model.fits == [(_T0 + _DAY, newest)]
    fitted = model._fitted
    assert fitted is not None
    assert model.items.row("Z") not in fitted.rows.tolist()  # the trigger is not trained on
    for day in (2, 3):
        for at in (day * _DAY + 10, day * _DAY + 3600, (day + 1) * _DAY - 1):
            model.learn([_event("late", "B", at)])
        assert model.retrains == day  # one fit a day, at its first event
    model.learn([_event("late", "C", 10 * _DAY + 5)])  # a week without events: one fit
    assert model.fits[1:] == [
        (_T0 + 2 * _DAY, _T0 + _DAY + 60),
        (_T0 + 3 * _DAY, _T0 + 3 * _DAY - 1),
        (_T0 + 10 * _DAY, _T0 + 4 * _DAY - 1),
    ]
    assert model.train_seconds > 0


@needs_jax
def test_the_training_window_is_the_newest_events_only() -> None:
    model = _model(epochs=1, max_train_events=30)
    _learn_each(model, _chain_log(users=20))  # 100 events, 5 per user
    model.learn([_event("new", "A", 1.5 * _DAY)])
    assert model.retrains == 1
    fitted = model._fitted
    assert fitted is not None
    assert model.train_steps == 1  # 30 events of 6 users: 24 pairs, one batch of rows


@needs_jax
def test_a_forgotten_user_gets_the_fallback_and_leaves_the_next_fit() -> None:
    model = _model(epochs=1)
    _learn_each(model, _chain_log(users=20))
    model.learn([_event("new", "A", 1.5 * _DAY)])
    stranger = model.recommend([_probe("stranger")], 4)
    assert model.recommend([_probe("new")], 4) != stranger
    model.learn([_event("new", None, 1.5 * _DAY + 1, kind=EventType.FORGET)])
    assert model.recommend([_probe("new")], 4) == stranger
    users_before = len(model._users)
    model.learn([_event("u0", "A", 3 * _DAY)])  # the next fit skips the forgotten events
    assert model.retrains == 2
    assert len(model._users) == users_before


@needs_jax
def test_the_same_seed_gives_the_same_lists() -> None:
    runs = []
    for _ in range(2):
        model = _model(epochs=2, seed=3)
        _learn_each(model, _chain_log(users=20))
        model.learn([_event("new", "A", 1.5 * _DAY)])
        runs.append(model.recommend([_probe(f"u{n}") for n in range(20)], 5))
    assert runs[0] == runs[1]


def test_chunks_are_cut_from_the_newest_pair_and_packed_without_overlap() -> None:
    users = np.array([0, 1, 0, 0, 0, 0], dtype=np.int64)  # user 0: items 1,3,4,5,6
    items = np.array([1, 2, 3, 4, 5, 6], dtype=np.int32)
    segments = _segments(users, items, width=3)
    # user 0 has 4 pairs: newest three form one chunk, the oldest one another; user 1 none
    assert segments.lengths.tolist() == [1, 3]
    assert segments.inputs.tolist() == [1, 3, 4, 5]
    assert segments.targets.tolist() == [3, 4, 5, 6]
    assert segments.positions.tolist() == [0, 2, 1, 0]
    packed = _pack(segments, 3, np.array([1, 0]))
    assert packed["inputs"].tolist() == [[3, 4, 5], [1, 0, 0]]
    assert packed["targets"].tolist() == [[4, 5, 6], [3, 0, 0]]
    assert packed["segments"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert packed["positions"].tolist() == [[2, 1, 0], [0, 0, 0]]
    packed = _pack(segments, 4, np.array([0, 1]), multiple=3)  # longest first, one row
    assert packed["inputs"].tolist() == [[3, 4, 5, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert packed["segments"].tolist() == [[1, 1, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert packed["positions"].tolist() == [[2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_packing_fills_rows_with_the_chunks_that_fit() -> None:
    lengths = np.array([3, 1, 2, 2, 1, 3, 4], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tokens = np.arange(1, int(lengths.sum()) + 1, dtype=np.int32)
    segments = _Segments(tokens, tokens, np.zeros_like(tokens), starts, lengths)
    order = np.random.default_rng(0).permutation(len(lengths))
    packed = _pack(segments, 4, order, shuffle=np.random.default_rng(1))
    assert packed["inputs"].shape == (4, 4)  # 16 tokens in 4 rows: no slot wasted
    assert sorted(packed["inputs"].ravel().tolist()) == tokens.tolist()
    for row, labels in zip(packed["inputs"], packed["segments"], strict=True):
        for label in set(labels.tolist()):  # each chunk whole and in order
            chunk = row[labels == label]
            assert chunk.tolist() == list(range(chunk[0], chunk[0] + len(chunk)))


@needs_jax
def test_a_state_never_depends_on_later_items_or_other_chunks() -> None:
    """The causal, block-diagonal mask: what the loss at a token sees is its own past."""
    shape = _model(layers=2).shape
    params = _initial(shape, 32, np.random.default_rng(2))
    body = {"blocks": params["blocks"], "norm": params["norm"]}
    encode = _network(shape).encode_last
    ids = np.array([[5, 6, 7, 8, 9, 10, 11, 12]], dtype=np.int32)
    segment = np.array([[1, 1, 1, 2, 2, 2, 2, 2]], dtype=np.int32)

    def state(ids: np.ndarray, upto: int) -> np.ndarray:
        hidden = params["items"][ids[:, :upto]] + params["positions"][upto - 1 :: -1][None]
        return np.asarray(encode(body, hidden, segment[:, :upto]))

    changed = ids.copy()
    changed[0, :3] = [20, 21, 22]  # another chunk's items
    np.testing.assert_allclose(state(ids, 6), state(changed, 6), rtol=1e-5, atol=1e-5)
    assert not np.allclose(state(ids, 3), state(changed, 3))


@needs_jax
@pytest.mark.parametrize("heads", [1, 2])
def test_numpy_serving_matches_the_jitted_network(heads: int) -> None:
    """Lists are served by a numpy copy of the network: it must compute the same states."""
    shape = _model(heads=heads, layers=2).shape
    generator = np.random.default_rng(5)
    params = _initial(shape, 32, generator)
    for block in params["blocks"]:  # non-trivial norms and biases
        for name in ("norm1", "norm2"):
            block[name] = (1.0 + generator.standard_normal(16).astype(np.float32), block[name][1])
        block["up_bias"] = generator.standard_normal(16).astype(np.float32)
    ids = np.array([[0, 0, 0, 0, 0, 3, 7, 2], [4, 5, 6, 7, 8, 9, 10, 11]], dtype=np.int32)
    hidden = params["items"][ids] * 30 + params["positions"][::-1][None] * 30
    body = {"blocks": params["blocks"], "norm": params["norm"]}
    expected = np.asarray(_network(shape).encode_last(body, hidden, (ids > 0).astype(np.int32)))
    served = _serve_last(body, hidden, ids > 0, heads)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)


@needs_jax
def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        _model(factors=10, heads=3)
    with pytest.raises(ValueError, match="dropout"):
        _model(dropout=1.0)
    with pytest.raises(ValueError, match=">= 1"):
        _model(epochs=0)


def test_the_class_defaults_are_the_tuned_defaults() -> None:
    signature = inspect.signature(Sasrec.__init__)
    for name, value in DEFAULT_PARAMS["sasrec"].items():
        assert signature.parameters[name].default == value, name
    assert DEFAULT_PARAMS["sasrec"] in PARAM_GRIDS["sasrec"]


@pytest.mark.usefixtures("no_jax")
def test_without_jax_building_it_says_what_to_install() -> None:
    assert not installed("sasrec")
    with pytest.raises(ImportError, match=r"pip install tailor-worker\[neural\]"):
        make_baseline("sasrec")
    with pytest.raises(LogError, match=r"pip install tailor-worker\[neural\]"):
        _baseline_names("popular,sasrec")  # named: an error, never a silent drop


@pytest.mark.usefixtures("no_jax")
def test_without_jax_the_default_baselines_skip_it_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tailor.evaluate"):
        names = _baseline_names(None)
    assert "sasrec" not in names
    assert "als" in names
    assert "tailor-worker[neural]" in caplog.text


@needs_jax
def test_with_jax_the_default_baselines_include_it() -> None:
    assert installed("sasrec")
    assert "sasrec" in _baseline_names(None)


def test_the_registry_and_the_other_baselines_never_import_jax() -> None:
    code = (
        "import sys; from worker.evaluate.baselines import make_baselines; "
        "make_baselines(['popular', 'als', 'vstan']); "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
