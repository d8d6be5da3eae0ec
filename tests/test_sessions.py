"""The similar-sessions model: VSTAN's scores worked by hand, its bounds and forgetting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worker.models.sessions import SessionNeighbours, session_token
from worker.state.user import UserState

A, B, C, D, E, X = range(6)
HOUR = 3600.0


def model(capacity: int = 64, per_item: int = 8, neighbours: int = 100) -> SessionNeighbours:
    return SessionNeighbours(
        capacity=capacity,
        per_item=per_item,
        length=20,
        neighbours=neighbours,
        gap_s=HOUR,
        half_life_s=1e12,  # no decay by age unless a test asks for it
    )


def visit(sessions: SessionNeighbours, session: str, rows: list[int], at: float = 0.0) -> None:
    """Visits of the session named ``session`` (its token is a hash of the name)."""
    token = session_token(session)
    sessions.observe([token] * len(rows), rows, [at + n for n in range(len(rows))])


def scores_of(sessions: SessionNeighbours, session: str, current: list[int]) -> dict[int, float]:
    own = [session_token(session)]
    rows, scores = sessions.recommend(own, np.array([current], dtype=np.int64), n=10)
    return {int(r): float(s) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0}


def test_scores_follow_vstan_worked_by_hand() -> None:
    sessions = model()
    visit(sessions, "u1", [A, B, C])
    visit(sessions, "u2", [A, D])
    visit(sessions, "u3", [E, A])  # u3's own open session is never its own neighbour
    got = scores_of(sessions, "u3", [A, E])  # newest first

    norm = 1.0 + math.exp(-1.0)  # position weights 1 (A, newest) and e^-1/2 (E), squared
    sim1, sim2 = 1 / math.sqrt(norm * 3), 1 / math.sqrt(norm * 2)
    # Both neighbours matched A (the newest: no ipw discount) at their position 0; items
    # further from the match weigh exp(-distance / 4).
    expected = {B: sim1 * math.exp(-0.25), C: sim1 * math.exp(-0.5), D: sim2 * math.exp(-0.25)}
    assert got == pytest.approx(expected)
    assert list(got) == [D, B, C]  # best first


def test_a_gap_longer_than_the_session_gap_starts_a_new_session() -> None:
    user = UserState("u1", np.zeros(2, dtype=np.float32))
    assert user.session_for(0.0, HOUR) is None  # no session yet
    user.open_session(session_token("first"))
    user.visit_at = 0.0
    assert user.session_for(HOUR / 2, HOUR) == session_token("first")
    assert user.session_for(10 * HOUR, HOUR) is None  # a later visit, not the same basket


def test_each_token_is_its_own_session() -> None:
    sessions = model()
    visit(sessions, "s1", [A, B])
    visit(sessions, "s2", [C], at=10 * HOUR)
    visit(sessions, "s3", [A])
    assert set(scores_of(sessions, "s3", [A])) == {B}


def test_neighbours_found_through_an_older_current_item_weigh_less() -> None:
    sessions = model()
    visit(sessions, "u1", [A, B])
    visit(sessions, "u2", [E, C])
    got = scores_of(sessions, "u3", [A, E])  # A newest, E one step older
    # C's neighbour matched E, one position back: its overlap is E's position weight
    # exp(-1/2) instead of 1, and being found through an older item costs another exp(-1/2).
    assert got[C] / got[B] == pytest.approx(math.exp(-1.0))


def test_older_sessions_weigh_less_by_their_half_life() -> None:
    sessions = SessionNeighbours(64, 8, 20, 100, gap_s=HOUR, half_life_s=10 * HOUR)
    visit(sessions, "u1", [A, B], at=0.0)
    visit(sessions, "u2", [A, C], at=10 * HOUR)
    got = scores_of(sessions, "u3", [A])
    assert got[B] / got[C] == pytest.approx(0.5, rel=1e-3)


def test_only_the_k_most_similar_sessions_vote() -> None:
    sessions = model(neighbours=1)
    visit(sessions, "u1", [A, B, C, D])  # matches A only: cosine 1/sqrt(4)
    visit(sessions, "u2", [A, E])  # cosine 1/sqrt(2): the nearest
    assert set(scores_of(sessions, "u3", [A])) == {E}


def test_memory_is_bounded_by_the_ring_and_the_postings_per_item() -> None:
    sessions = model(capacity=4, per_item=2)
    for n in range(10):
        visit(sessions, f"u{n}", [A, 100 + n], at=n * 10 * HOUR)
    assert sessions.items.shape == (4, 20)
    assert sessions.postings.shape[1] == 2
    # Only the two latest sessions holding A are still indexed under it.
    assert set(scores_of(sessions, "new", [A])) == {108, 109}


def test_a_reused_slot_is_not_mistaken_for_the_session_that_held_it() -> None:
    sessions = model(capacity=2, per_item=8)
    visit(sessions, "u1", [A, B])
    visit(sessions, "u2", [C, D], at=10 * HOUR)
    visit(sessions, "u3", [C, E], at=20 * HOUR)  # takes u1's slot; A's posting is stale
    assert scores_of(sessions, "new", [A]) == {}


def test_forget_drops_the_users_sessions() -> None:
    sessions = model()
    visit(sessions, "u1", [A, B])
    visit(sessions, "u2", [A, C])
    sessions.forget([session_token("u1")])
    assert set(scores_of(sessions, "u3", [A])) == {C}


def test_a_checkpoint_round_trip_keeps_every_session() -> None:
    sessions = model()
    visit(sessions, "u1", [A, B, C])
    visit(sessions, "u2", [A, D])
    restored = model()
    restored.load(sessions.arrays())
    assert scores_of(restored, "u3", [A]) == scores_of(sessions, "u3", [A])
    visit(restored, "u1", [E])  # the open session continues where it was
    assert E in scores_of(restored, "u3", [A])
