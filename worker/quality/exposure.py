"""Bias and coverage of what is published, per window: where the slots went.

Per variant, a window counts how often each item was shown (one int per item row, so the
memory is bounded by ``max_items``, as every per-item model is) and how many distinct
categories each list held. When the window closes (after ``quality_window_lists`` lists or
``quality_window_s`` seconds) it reports:

- **popular share**: the share of slots that went to the 1 % most popular items (by the
  shared trending model's decayed popularity when the window closes);
- **Gini** of item exposure over the items that could be shown (0: every item shown
  equally often, towards 1: a few items take every slot);
- **coverage**: distinct items shown / items that could be shown;
- **categories per list**: the mean number of distinct catalog categories in a list.

"Items that could be shown" are the indexed items the catalog allows now, plus any shown
in the window (it may have become unavailable since).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt

from worker.models.arrays import grow_rows

__all__ = [
    "POPULAR_SHARE",
    "BatchExposure",
    "ExposureFigures",
    "ExposureWindow",
    "ExposureWindows",
    "batch_exposure",
    "gini",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: The share of the items called "the most popular" in the popular share.
POPULAR_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class BatchExposure:
    """What one batch published for one variant: every slot's item row, and per list the
    number of distinct categories."""

    rows: IntArray
    lists: int
    categories: int  # distinct categories summed over the lists


@dataclass(frozen=True, slots=True)
class ExposureFigures:
    """One closed window's figures (see the module docstring)."""

    lists: int
    popular_share: float
    gini: float
    coverage: float
    categories_per_list: float


def batch_exposure(
    rows: list[list[int]], categories_of: Callable[[IntArray], IntArray]
) -> BatchExposure:
    """Sum up lists given as item rows; ``categories_of`` gives rows' categories (-1: none)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    categories = categories_of(flat)
    which = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    known = categories >= 0
    pairs = which[known] * (int(categories.max(initial=0)) + 1) + categories[known]
    return BatchExposure(flat[flat >= 0], len(rows), int(np.unique(pairs).size))


def gini(counts: IntArray) -> float:
    """Gini coefficient of ``counts`` (0 equal, towards 1 concentrated; 0 when empty)."""
    total = int(counts.sum())
    n = counts.size
    if n == 0 or total == 0:
        return 0.0
    ordered = np.sort(counts).astype(np.float64)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks * ordered).sum() / (n * total) - (n + 1) / n)


class ExposureWindow:
    """One variant's exposure since the window opened."""

    def __init__(self) -> None:
        self.counts: IntArray = np.zeros(0, dtype=np.int64)
        self.lists = 0
        self.categories = 0

    def add(self, batch: BatchExposure) -> None:
        if batch.rows.size:
            self.counts = grow_rows(self.counts, int(batch.rows.max()) + 1)
            np.add.at(self.counts, batch.rows, 1)
        self.lists += batch.lists
        self.categories += batch.categories

    def close(self, popularity: FloatArray, showable: BoolArray) -> ExposureFigures:
        """The window's figures, then an empty window.

        ``popularity`` and ``showable`` are per item row, as the models stand now.
        """
        size = max(self.counts.size, popularity.size, showable.size)
        counts = np.zeros(size, dtype=np.int64)
        counts[: self.counts.size] = self.counts
        universe = np.zeros(size, dtype=bool)
        universe[: showable.size] = showable
        universe |= counts > 0
        slots = int(counts.sum())
        figures = ExposureFigures(
            lists=self.lists,
            popular_share=_popular_share(counts, popularity, universe, slots),
            gini=gini(counts[universe]),
            coverage=float((counts > 0).sum() / universe.sum()) if universe.any() else 0.0,
            categories_per_list=self.categories / self.lists if self.lists else 0.0,
        )
        self.counts = np.zeros(0, dtype=np.int64)
        self.lists = self.categories = 0
        return figures


def _popular_share(
    counts: IntArray, popularity: FloatArray, universe: BoolArray, slots: int
) -> float:
    """Share of ``slots`` that went to the :data:`POPULAR_SHARE` most popular items."""
    candidates = np.flatnonzero(universe)
    if slots == 0 or candidates.size == 0:
        return 0.0
    n = max(1, math.ceil(POPULAR_SHARE * candidates.size))
    scores = np.zeros(candidates.size)
    inside = candidates < popularity.size
    scores[inside] = popularity[candidates[inside]]
    top = candidates[np.argsort(-scores, kind="stable")[:n]]
    return float(counts[top].sum() / slots)


class ExposureWindows:
    """A window per variant, all closed together after ``lists`` lists or ``seconds``.

    The clock is the caller's (monotonic seconds), so the logic stays testable.
    """

    def __init__(self, lists: int, seconds: float, now: float) -> None:
        self.max_lists = lists
        self.seconds = seconds
        self.opened = now
        self.windows: dict[str, ExposureWindow] = {}

    def add(self, exposures: dict[str, BatchExposure]) -> None:
        for variant, batch in exposures.items():
            window = self.windows.get(variant)
            if window is None:
                window = self.windows[variant] = ExposureWindow()
            window.add(batch)

    def due(self, now: float) -> bool:
        """Whether a window should close: enough lists in one, or its time is up."""
        if not any(window.lists for window in self.windows.values()):
            return False
        full = any(window.lists >= self.max_lists for window in self.windows.values())
        return full or now - self.opened >= self.seconds

    def close(
        self, popularity: FloatArray, showable: BoolArray, now: float
    ) -> dict[str, ExposureFigures]:
        """Every variant's figures (variants without lists in the window are left out)."""
        self.opened = now
        return {
            variant: window.close(popularity, showable)
            for variant, window in self.windows.items()
            if window.lists
        }
