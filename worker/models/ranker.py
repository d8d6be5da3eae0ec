"""The learned ranker: a River logistic regression over candidate features and context.

It is trained on every event from what the user did after their previous list (the item
they chose is a positive, shown items they passed over are sampled negatives). Scoring
hundreds of candidates per user through River's dict API would cost ~1 ms, so the linear
weights are copied into a numpy vector every few updates and candidates are scored with
one matrix product. The weights start from a hand-set prior so that day-one rankings are
sensible; from there River moves them with every event.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from river import linear_model, optim, utils

__all__ = [
    "FEATURES",
    "TREND_COLUMNS",
    "TREND_TIMESCALES_S",
    "Feature",
    "Ranker",
    "pairwise_differences",
]

FloatArray = npt.NDArray[np.float64]


class Feature(IntEnum):
    """Candidate features: each member's value is its column in every feature array.

    "Source" features say where a candidate came from; the crosses with the user's own
    history let one linear ranker weigh sources differently for a newcomer and a regular.
    """

    COVIS = 0  # co-visitation with the user's recent items (collaborative, item-item)
    TASTE = 1  # user vector . item vector (collaborative + content)
    POPULARITY = 2  # decayed global popularity
    SEGMENT = 3  # decayed popularity in the user's country/device segment
    CONTENT = 4  # shares a category with the user's recent items
    REPEAT = 5  # the user touched this item before (recency-weighted)
    EVENING = 6  # context: popularity x evening hours
    WEEKEND = 7  # context: popularity x weekend
    MOBILE = 8  # context: segment popularity x mobile device
    SIMILAR = 9  # catalog text reads like one of the user's recent items (content-based)
    COVIS_SHARE = 10  # covis as a share of the user's strongest: the order co-occurrence gives
    COVIS_LAST = 11  # co-visitation with the user's very latest item alone
    TREND_1H = 12  # popularity relative to its own past, per half-life (TREND_TIMESCALES_S)
    TREND_1D = 13
    TREND_7D = 14
    TREND_30D = 15
    COVIS_NOVICE = 16  # covis_share x novice (novice = 5 / (5 + the user's events))
    TREND_NOVICE = 17  # mean of trend_* x novice
    TASTE_DEPTH = 18  # taste x (1 - novice): a long history makes taste telling
    REPEAT_HABIT = 19  # repeat x the share of the user's recent events that were repeats
    SESSIONS = 20  # similar sessions' score, as a share of the user's best (VSTAN-style kNN)
    SESSIONS_RANK = 21  # 1 / (1 + rank) in the similar-sessions order


#: The features' names in column order: River's weight keys, checkpoints, the docs.
FEATURES: tuple[str, ...] = tuple(feature.name.lower() for feature in Feature)
#: The columns of ``trend_*``, one per half-life of :data:`TREND_TIMESCALES_S`.
TREND_COLUMNS = slice(Feature.TREND_1H, Feature.TREND_30D + 1)
#: Half-lives of the relative-popularity features ``trend_*``: the ranker learns which time
#: scale a log's interest follows (an hour on a news site, weeks for films, a season in a
#: shop), so no half-life has to be tuned by hand.
TREND_TIMESCALES_S: tuple[float, ...] = (3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)

#: The hand-set prior the weights start from (features not named start at 0): what a
#: shop would guess on day one. The learned weights must beat it over a whole log.
_PRIOR_WEIGHTS = {
    "covis": 1.0,
    "taste": 0.5,
    "popularity": 0.25,
    "segment": 0.25,
    "content": 0.3,
    "repeat": 0.6,
    "similar": 0.5,
    "covis_share": 1.0,
    "covis_last": 0.5,
    "trend_1d": 0.1,
    "trend_7d": 0.1,
    "sessions": 1.0,
}
_PRIOR = np.array([_PRIOR_WEIGHTS.get(name, 0.0) for name in FEATURES])


_OPTIMIZERS = {"sgd": optim.SGD, "adagrad": optim.AdaGrad, "adam": optim.Adam}
#: Per-weight optimizer state worth keeping across a restart (AdaGrad's g2, Adam's m, v).
_OPTIMIZER_STATE = ("g2", "m", "v")


class Ranker:
    def __init__(
        self,
        learning_rate: float = 0.01,
        l2: float = 1e-4,
        optimizer: str = "sgd",
        sync_every: int = 64,
    ) -> None:
        self.model = linear_model.LogisticRegression(
            optimizer=_OPTIMIZERS[optimizer](learning_rate), l2=l2, intercept_lr=0.0
        )
        # Warm start: River keeps its weights in a VectorDict; start it at the prior.
        self.model._weights = utils.VectorDict(dict(zip(FEATURES, _PRIOR.tolist(), strict=True)))
        self.sync_every = sync_every
        self.updates = 0
        self._weights = _PRIOR.copy()

    @property
    def weights(self) -> FloatArray:
        """River's current weights in :data:`FEATURES` order (as of the last sync)."""
        return self._weights

    def score(self, features: npt.NDArray[np.floating]) -> FloatArray:
        """``[..., len(FEATURES)]`` -> ``[...]`` scores (one matrix product)."""
        scores: FloatArray = (features @ self._weights).astype(np.float64, copy=False)
        return scores

    def learn(
        self, positives: npt.NDArray[np.floating], negatives: npt.NDArray[np.floating]
    ) -> None:
        """Pairwise lessons: each positive should outrank each negative."""
        self.learn_differences(pairwise_differences(positives, negatives))

    def learn_differences(self, differences: npt.NDArray[np.floating]) -> None:
        """One lesson per row ``positive - negative`` (what model deltas carry).

        River learns on feature differences (RankNet-style logistic loss; the intercept is
        frozen at zero, so one order of each pair is enough), which is what a ranker
        needs: pointwise labels would mostly teach it how rare positives are.
        """
        learn_one = self.model.learn_one
        pairs = 0
        differences = differences[np.isfinite(differences).all(axis=1)]  # never learn NaN
        for difference in differences.astype(np.float64).tolist():
            learn_one(dict(zip(FEATURES, difference, strict=True)), True)
            pairs += 1
        self.updates += pairs
        if pairs and self.updates % self.sync_every < pairs:
            self._sync()

    def state(self) -> dict[str, Any]:
        """Weights, optimizer state and counters as plain data (for checkpoints)."""
        optimizer = self.model.optimizer
        return {
            "weights": dict(self.model._weights),
            "updates": self.updates,
            "optimizer_steps": int(getattr(optimizer, "n_iterations", 0)),
            "optimizer_state": {
                name: dict(getattr(optimizer, name))
                for name in _OPTIMIZER_STATE
                if isinstance(getattr(optimizer, name, None), dict | utils.VectorDict)
            },
        }

    def load(self, state: dict[str, Any]) -> None:
        """Install :meth:`state` (checked by the caller: names must be known features)."""
        weights = {str(k): float(v) for k, v in state["weights"].items()}
        unknown = set(weights) - set(FEATURES)
        if unknown:
            raise ValueError(f"ranker weights for unknown features {sorted(unknown)}")
        self.model._weights = utils.VectorDict(weights)
        optimizer = self.model.optimizer
        optimizer.n_iterations = int(state.get("optimizer_steps", 0))
        for name, values in state.get("optimizer_state", {}).items():
            if name in _OPTIMIZER_STATE and hasattr(optimizer, name):
                current = getattr(optimizer, name)
                restored = {str(k): float(v) for k, v in values.items()}
                if isinstance(current, dict):  # AdaGrad's defaultdict keeps its default
                    current.clear()
                    current.update(restored)
                else:  # Adam's VectorDict (None before its first step)
                    setattr(optimizer, name, utils.VectorDict(restored))
        self.updates = int(state["updates"])
        self._sync()

    def _sync(self) -> None:
        learned = self.model.weights
        self._weights = np.array([learned.get(name, 0.0) for name in FEATURES])


def pairwise_differences(
    positives: npt.NDArray[np.floating], negatives: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """Every ``positive - negative`` row: the pairwise lessons of one user's choice."""
    if positives.size == 0 or negatives.size == 0:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    differences = positives[:, None, :] - negatives[None, :, :]
    return differences.reshape(-1, positives.shape[-1]).astype(np.float32)
