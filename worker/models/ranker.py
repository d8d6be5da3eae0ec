"""The learned ranker: a River logistic regression over candidate features and context.

It is trained on every event from what the user did after their previous list (the item
they chose is a positive, shown items they passed over are sampled negatives). Scoring
hundreds of candidates per user through River's dict API would cost ~1 ms, so the linear
weights are copied into a numpy vector every few updates and candidates are scored with
one matrix product. The weights start from a hand-set prior so that day-one rankings are
sensible; from there River moves them with every event.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from river import linear_model, optim, utils

__all__ = ["FEATURES", "Ranker"]

FloatArray = npt.NDArray[np.float64]

#: Candidate features, in column order; "source" features say where a candidate came from.
FEATURES: tuple[str, ...] = (
    "covis",  # co-visitation with the user's recent items (collaborative, item-item)
    "taste",  # user vector . item vector (collaborative + content)
    "popularity",  # decayed global popularity
    "segment",  # decayed popularity in the user's country/device segment
    "content",  # shares a category with the user's recent items
    "repeat",  # the user touched this item before (recency-weighted)
    "evening",  # context: popularity x evening hours
    "weekend",  # context: popularity x weekend
    "mobile",  # context: segment popularity x mobile device
    "similar",  # catalog text reads like one of the user's recent items (content-based)
    "covis_share",  # covis as a share of the user's strongest: the order co-occurrence gives
    "covis_last",  # co-visitation with the user's very latest item alone
)

_PRIOR = np.array([1.0, 0.5, 0.25, 0.25, 0.3, 0.6, 0.0, 0.0, 0.0, 0.5, 1.0, 0.5])


class Ranker:
    def __init__(self, learning_rate: float = 0.01, sync_every: int = 64) -> None:
        self.model = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), l2=1e-4, intercept_lr=0.0
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
        """Pairwise lessons: each positive should outrank each negative.

        River learns on feature differences (RankNet-style logistic loss; the intercept is
        frozen at zero, so one order of each pair is enough), which is what a ranker
        needs: pointwise labels would mostly teach it how rare positives are.
        """
        learn_one = self.model.learn_one
        pairs = 0
        for positive in positives.astype(np.float64):
            for negative in negatives.astype(np.float64):
                learn_one(dict(zip(FEATURES, (positive - negative).tolist(), strict=True)), True)
                pairs += 1
        self.updates += pairs
        if pairs and self.updates % self.sync_every < pairs:
            self._sync()

    def _sync(self) -> None:
        learned = self.model.weights
        self._weights = np.array([learned.get(name, 0.0) for name in FEATURES])
