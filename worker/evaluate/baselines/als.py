"""Implicit ALS retrained from scratch on a fixed schedule, as a batch team would run it."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from threadpoolctl import threadpool_limits

from worker.contract import Event
from worker.evaluate.baselines.common import BaselineBase, GrowingArray, ItemScores, Session

__all__ = ["RetrainedAls"]


def _one_blas_thread() -> AbstractContextManager[object]:
    """implicit asks for single-threaded BLAS (its own threads do the parallel work)."""
    limits: AbstractContextManager[object] = threadpool_limits(1, "blas")
    return limits


class RetrainedAls(BaselineBase):
    """``implicit`` ALS (Hu, Koren & Volinsky 2008), refitted from scratch every span.

    Every ``retrain_every_s`` of event time (one day by default: a nightly job) a new model
    is fitted on every positive interaction seen so far, as a user x item matrix of summed
    :func:`event_weight` scaled by ``alpha`` (the confidence of Hu et al.). Between two
    retrains the lists come from that model, exactly what a nightly batch would publish:
    the user's factors do not move, so a user's list is computed once per model and cached
    (still dropping the current session's items when ``hide_session``). Users the model
    has not seen, and everyone before the first retrain, get the popular items as of the
    last retrain (before the first one: live popular); ``forget`` drops the user's rows
    from the next fit and their list at once.
    """

    name = "als"

    def __init__(
        self,
        *,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 5,
        alpha: float = 1.0,
        filter_liked: bool = False,
        retrain_every_s: float = 86400.0,
        threads: int = 1,
        hide_session: bool = True,
        session_gap_s: float = 1800.0,
        seed: int = 7,
    ) -> None:
        if retrain_every_s <= 0 or factors < 1 or iterations < 1 or alpha <= 0:
            raise ValueError("retrain_every_s, factors, iterations and alpha must be positive")
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.factors, self.regularization, self.iterations = factors, regularization, iterations
        self.alpha, self.filter_liked, self.threads = alpha, filter_liked, threads
        self.retrain_every_s, self.seed = retrain_every_s, seed
        self.retrains = 0
        self._users: dict[str, int] = {}
        self._alive = GrowingArray(np.bool_)
        self._pairs_user = GrowingArray(np.int64)
        self._pairs_item = GrowingArray(np.int64)
        self._pairs_weight = GrowingArray(np.float64)
        self._next_retrain: float | None = None
        self._model: Any = None
        self._matrix: csr_matrix | None = None
        self.popular_at_retrain: ItemScores | None = None  # the fallback, frozen at each fit
        self._lists: dict[int, tuple[int, list[int]]] = {}  # user -> (N asked, rows)

    def _tick(self, at: float) -> None:
        if self._next_retrain is None:
            self._next_retrain = at + self.retrain_every_s
        elif at >= self._next_retrain:
            while at >= self._next_retrain:
                self._next_retrain += self.retrain_every_s
            self._retrain()

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        user = self._users.get(event.user_id)
        if user is None:
            user = self._users[event.user_id] = self._alive.size
            self._alive.append(True)
        self._pairs_user.append(user)
        self._pairs_item.append(row)
        self._pairs_weight.append(weight)

    def _retrain(self) -> None:
        from implicit.als import AlternatingLeastSquares

        shape = (self._alive.size, len(self.items))
        users = self._pairs_user.view()
        keep = self._alive.view()[users]
        matrix = csr_matrix(
            coo_matrix(
                (
                    self._pairs_weight.view()[keep],
                    (users[keep], self._pairs_item.view()[keep]),
                ),
                shape=shape,
            )
        )
        matrix.sum_duplicates()
        with _one_blas_thread():  # also around the constructor, which checks the BLAS setup
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                calculate_training_loss=False,
                num_threads=self.threads,
                random_state=self.seed,
            )
            model.fit(matrix, show_progress=False)
        self._model, self._matrix = model, matrix
        self.popular_at_retrain = self.popular.copy()
        self._lists.clear()
        self.retrains += 1

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        user = self._users.get(user_id)
        if self._model is None or self._matrix is None or user is None:
            return ()
        if (
            user >= self._matrix.shape[0]
            or self._matrix.indptr[user + 1] == self._matrix.indptr[user]
        ):
            return ()  # unknown to the last fit: its factors are noise
        items = self._matrix.shape[1]
        asked, cached = self._lists.get(user, (0, []))
        if asked >= min(n, items):
            return cached[:n]
        wanted = min(max(n, 50), items)
        ids, scores = self._model.recommend(
            user,
            self._matrix[user],
            N=wanted,
            filter_already_liked_items=self.filter_liked,
        )
        rows: list[int] = np.asarray(ids)[np.isfinite(scores)].tolist()
        self._lists[user] = (wanted, rows)
        return rows[:n]

    def _fallback(self, n: int) -> Sequence[int]:
        return (self.popular_at_retrain or self.popular).top(n)

    def _forget(self, user_id: str) -> None:
        user = self._users.pop(user_id, None)
        if user is not None:
            self._alive.view()[user] = False
            self._lists.pop(user, None)
