"""River's online biased matrix factorisation, taught implicit feedback with sampled negatives."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from river import optim, reco

from worker.contract import Event
from worker.evaluate.baselines.common import (
    BaselineBase,
    FloatArray,
    GrowingArray,
    Session,
    top_rows,
)

__all__ = ["RiverMF"]

#: The popular candidate pool is re-read every this many positive events, not every event:
#: it moves slowly and re-ranking all items per request would double the replay time.
_POOL_REFRESH = 64


class RiverMF(BaselineBase):
    """``river.reco.BiasedMF`` learning y=1 per positive event and y=0 per sampled negative.

    BiasedMF regresses a rating, and on implicit feedback every observed pair is a 1, so
    without negatives it learns that everything scores 1; each positive is therefore
    followed by ``negatives`` items drawn uniformly from the items seen so far (the item
    bias then learns popularity, which tuned better) or, with ``sampling="popularity"``,
    from the item distribution of past events (harder negatives, the BPR-style choice).
    Events are learned once, in order, like everything else in the replay. A list ranks
    the candidate items, the ``candidates`` most popular ones plus the user's own past
    items, by ``item bias + user . item`` (the global mean and user bias do not change a
    user's ranking). The item factors are mirrored in a numpy matrix
    after each update so scoring is one matrix-vector product instead of a ``predict_one``
    per candidate.
    """

    name = "river-mf"

    def __init__(
        self,
        *,
        factors: int = 32,
        learning_rate: float = 0.1,
        l2: float = 0.001,
        negatives: int = 4,
        sampling: str = "uniform",
        candidates: int = 300,
        hide_session: bool = True,
        session_gap_s: float = 1800.0,
        seed: int = 7,
    ) -> None:
        if sampling not in {"popularity", "uniform"}:
            raise ValueError("sampling must be 'popularity' or 'uniform'")
        if factors < 1 or negatives < 0 or candidates < 0:
            raise ValueError("factors must be >= 1, negatives and candidates >= 0")
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.negatives, self.sampling, self.candidates = negatives, sampling, candidates
        self.factors = factors
        self.model = reco.BiasedMF(
            n_factors=factors,
            bias_optimizer=optim.SGD(learning_rate),
            latent_optimizer=optim.SGD(learning_rate),
            l2_bias=l2,
            l2_latent=l2,
            seed=seed,
        )
        self._rng = random.Random(seed)
        self._vectors: FloatArray = np.zeros((64, factors), dtype=np.float64)
        self._biases = GrowingArray(np.float64)
        self._positives = GrowingArray(np.int64)  # item of every positive event
        self._own: dict[str, dict[int, None]] = {}
        self._pool: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._pool_version = -1

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        self._positives.append(row)
        self._own.setdefault(event.user_id, {})[row] = None
        self._fit(event.user_id, row, 1.0)
        for _ in range(self.negatives):
            negative = self._sample()
            if negative != row:
                self._fit(event.user_id, negative, 0.0)

    def _sample(self) -> int:
        if self.sampling == "uniform":
            return self._rng.randrange(len(self.items))
        return int(self._positives.view()[self._rng.randrange(self._positives.size)])

    def _fit(self, user_id: str, row: int, target: float) -> None:
        self.model.learn_one(user_id, row, target)  # type: ignore[no-untyped-call]
        if row >= len(self._vectors):
            grown = np.zeros((2 * row + 1, self.factors), dtype=np.float64)
            grown[: len(self._vectors)] = self._vectors
            self._vectors = grown
        self._biases.grow_to(row + 1)
        self._vectors[row] = self.model.i_latents[row]
        self._biases.view()[row] = self.model.i_biases[row]

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        user = self.model.u_latents.get(user_id)
        if user is None:
            return ()
        if self._pool_version != self.popular.version // _POOL_REFRESH:
            self._pool_version = self.popular.version // _POOL_REFRESH
            self._pool = np.array(self.popular.top(self.candidates), dtype=np.int64)
        chosen = np.zeros(len(self.items), dtype=np.bool_)
        chosen[self._pool] = True
        chosen[list(self._own.get(user_id, {}))] = True
        rows = np.flatnonzero(chosen)
        with np.errstate(all="ignore"):  # a diverged model (too high a rate) scores NaN
            scores = self._biases.view()[rows] + self._vectors[rows] @ user
        finite = np.isfinite(scores)
        if not finite.any():
            return ()
        rows, scores = rows[finite], scores[finite]
        # top_rows keeps positive scores only: shift so that every candidate can be listed
        shifted: FloatArray = scores - scores.min() + 1.0
        return top_rows(shifted, n, rows)

    def _forget(self, user_id: str) -> None:
        self.model.u_latents.pop(user_id, None)
        self.model.u_biases.pop(user_id, None)
        self._own.pop(user_id, None)
