"""Time-decayed popularity, overall and per context segment (country, device).

Cold users get context-aware trending; everyone gets trending as one candidate source and
as a ranker feature. Segments are bounded in number and in items each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from worker.models.arrays import grow_rows
from worker.models.decay import DecayClock

__all__ = ["Trending"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_MAX_SEGMENTS = 512


class Trending:
    def __init__(
        self, half_life_s: float, top_size: int, segment_size: int, refresh_every: int = 1000
    ) -> None:
        self.clock = DecayClock(half_life_s)
        self.top_size = top_size
        self.segment_size = segment_size
        self.refresh_every = refresh_every
        self.scores: FloatArray = np.zeros(0, dtype=np.float64)
        self.all_time: FloatArray = np.zeros(0, dtype=np.float64)
        self.segments: dict[str, dict[int, float]] = {}
        self._top: IntArray = np.zeros(0, dtype=np.int64)
        self._segment_top: dict[str, tuple[IntArray, FloatArray]] = {}
        self._segment_by_row: dict[str, tuple[IntArray, FloatArray]] = {}
        self._since_refresh = refresh_every
        self.version = 0  # bumped on every refresh, so derived caches know they are stale

    def observe(
        self,
        rows: IntArray,
        weights: FloatArray,
        times: FloatArray,
        segments: Sequence[tuple[str, ...]],
    ) -> None:
        """Add one micro-batch of interactions (rows -1 are ignored)."""
        if rows.size == 0:
            return
        self._advance(float(times.max()))
        self.scores = grow_rows(self.scores, int(rows.max()) + 1)
        self.all_time = grow_rows(self.all_time, int(rows.max()) + 1)
        scaled = weights * self.clock.weights(times)
        valid = rows >= 0
        np.add.at(self.scores, rows[valid], scaled[valid])
        np.add.at(self.all_time, rows[valid], np.abs(weights[valid]))
        for row, weight, keys in zip(rows.tolist(), scaled.tolist(), segments, strict=True):
            if row < 0:
                continue
            for key in keys:
                bucket = self.segments.get(key)
                if bucket is None:
                    if len(self.segments) >= _MAX_SEGMENTS:
                        continue
                    bucket = self.segments[key] = {}
                bucket[row] = bucket.get(row, 0.0) + weight
                if len(bucket) > 8 * self.segment_size:
                    self._prune(bucket)
        self._since_refresh += rows.size
        if self._since_refresh >= self.refresh_every:
            self.refresh()

    def refresh(self) -> None:
        """Recompute the cached top lists (cheap: one argpartition per list)."""
        self._since_refresh = 0
        self.version += 1
        self._top = _top_rows(self.scores, self.top_size)
        self._segment_top = {}
        self._segment_by_row = {}
        for key, bucket in self.segments.items():
            rows = np.fromiter(bucket.keys(), dtype=np.int64, count=len(bucket))
            values = np.fromiter(bucket.values(), dtype=np.float64, count=len(bucket))
            order = np.argsort(-values, kind="stable")[: self.segment_size]
            self._segment_top[key] = (rows[order], values[order])
            by_row = np.argsort(rows[order])
            self._segment_by_row[key] = (rows[order][by_row], values[order][by_row])

    def top(self) -> IntArray:
        return self._top

    def segment_top(self, key: str) -> tuple[IntArray, FloatArray]:
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        return self._segment_top.get(key, empty)

    def normalised(self, rows: IntArray) -> FloatArray:
        """Popularity as log(1 + score/scale): comparable across time, bounded growth."""
        if self.scores.size == 0:
            return np.zeros(rows.size)
        inside = (rows >= 0) & (rows < self.scores.size)
        values = np.where(inside, self.scores[np.where(inside, rows, 0)], 0.0)
        return np.log1p(values / self.clock.current_scale())

    def segment_normalised(self, key: str, rows: IntArray) -> FloatArray:
        """Popularity within a segment; 0 for items outside the segment's top list."""
        out = np.zeros(rows.size)
        sorted_rows, values = self._segment_by_row.get(key, (None, None))
        if sorted_rows is None or values is None or sorted_rows.size == 0:
            return out
        position = np.minimum(np.searchsorted(sorted_rows, rows), sorted_rows.size - 1)
        hit = sorted_rows[position] == rows
        out[hit] = values[position[hit]]
        return np.log1p(out / self.clock.current_scale())

    def _advance(self, t: float) -> None:
        factor = self.clock.advance(t)
        if factor is None:
            return
        self.scores /= factor
        for bucket in self.segments.values():
            for row in bucket:
                bucket[row] /= factor
        self.refresh()

    def _prune(self, bucket: dict[int, float]) -> None:
        keep = sorted(bucket.items(), key=lambda pair: pair[1], reverse=True)[
            : 4 * self.segment_size
        ]
        bucket.clear()
        bucket.update(keep)


def _top_rows(scores: FloatArray, n: int) -> IntArray:
    if scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    n = min(n, scores.size)
    part = np.argpartition(-scores, n - 1)[:n]
    order = np.argsort(-scores[part], kind="stable")
    top = part[order]
    return top[scores[top] > 0].astype(np.int64)
