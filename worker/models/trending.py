"""Popularity: time-decayed overall, and per context segment (country, device, hour).

Cold users get context-aware trending; everyone gets trending as one candidate source and
as a ranker feature. The overall scores are one numpy array. Each segment is a River
``sketch.HeavyHitters`` (lossy counting with a forgetting factor), updated on every event:
bounded memory per segment whatever the number of items, and old interest fades.
Segments are bounded in number too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from river import sketch

from worker.models.arrays import grow_rows
from worker.models.decay import DecayClock

__all__ = ["Trending"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_MAX_SEGMENTS = 512
#: Relative popularity is read as log(1 + R * score / top score) / log(1 + R): 1 for the
#: top item, about 0.5 for one at 1/30 of it, 0 for an item nobody touched.
_RELATIVE_RANGE = 1000.0


class _Timescale:
    """Popularity at one half-life: the ranker weighs the time scales, a log picks none.

    Films are rated in the weeks after their release, a shop's best sellers last a
    season, a news site's clicks an hour: which of these matters is learned per log by the
    ranker from features at several half-lives, not chosen by hand.
    """

    def __init__(self, half_life_s: float) -> None:
        self.clock = DecayClock(half_life_s)
        self.scores: FloatArray = np.zeros(0, dtype=np.float64)
        self.top: IntArray = np.zeros(0, dtype=np.int64)
        self.peak = 0.0

    def observe(self, rows: IntArray, weights: FloatArray, times: FloatArray) -> None:
        factor = self.clock.advance(float(times.max()))
        if factor is not None:
            self.scores /= factor
        self.scores = grow_rows(self.scores, int(rows.max()) + 1)
        np.add.at(self.scores, rows, weights * self.clock.weights(times))

    def refresh(self, n: int) -> None:
        self.top = _top_rows(self.scores, n) if n > 0 else self.top[:0]
        self.peak = float(self.scores.max(initial=0.0))

    def relative(self, rows: IntArray) -> FloatArray:
        if self.peak <= 0:
            return np.zeros(rows.size)
        inside = (rows >= 0) & (rows < self.scores.size)
        values = np.where(inside, self.scores[np.where(inside, rows, 0)], 0.0)
        shares = np.minimum(values / self.peak, 1.0)
        out: FloatArray = np.log1p(_RELATIVE_RANGE * shares) / np.log1p(_RELATIVE_RANGE)
        return out


class Trending:
    def __init__(
        self,
        half_life_s: float,
        top_size: int,
        segment_size: int,
        refresh_every: int = 1000,
        segment_half_life_events: int = 10_000,
        timescales_s: Sequence[float] = (),
        timescale_top: int = 0,
    ) -> None:
        self.clock = DecayClock(half_life_s)
        self.timescales = [_Timescale(half_life) for half_life in timescales_s]
        self.timescale_top = timescale_top
        self.top_size = top_size
        self.segment_size = segment_size
        self.refresh_every = refresh_every
        self.segment_half_life_events = segment_half_life_events
        self.scores: FloatArray = np.zeros(0, dtype=np.float64)
        self.segments: dict[str, sketch.HeavyHitters] = {}
        self._top: IntArray = np.zeros(0, dtype=np.int64)
        self._segment_top: dict[str, tuple[IntArray, FloatArray]] = {}
        self._segment_by_row: dict[str, tuple[IntArray, FloatArray]] = {}
        self._since_refresh = refresh_every
        self.version = 0  # bumped on every refresh, so derived caches know they are stale

    def observe(self, rows: IntArray, weights: FloatArray, times: FloatArray) -> None:
        """Add one micro-batch of interactions (rows -1 are ignored)."""
        if rows.size == 0:
            return
        self._advance(float(times.max()))
        self.scores = grow_rows(self.scores, int(rows.max()) + 1)
        scaled = weights * self.clock.weights(times)
        valid = rows >= 0
        np.add.at(self.scores, rows[valid], scaled[valid])
        if valid.any():
            for timescale in self.timescales:
                timescale.observe(rows[valid], weights[valid], times[valid])
        self._since_refresh += rows.size
        if self._since_refresh >= self.refresh_every:
            self.refresh()

    def count_segments(self, keys: Sequence[str], rows: IntArray, counts: IntArray) -> None:
        """Count ``counts[i]`` interactions with ``rows[i]`` in segment ``keys[i]``."""
        for key, row, times_counted in zip(keys, rows.tolist(), counts.tolist(), strict=True):
            if row < 0:
                continue
            counter = self.segments.get(key)
            if counter is None:
                if len(self.segments) >= _MAX_SEGMENTS:
                    continue
                counter = self.segments[key] = self._new_segment()
            for _ in range(times_counted):  # HeavyHitters counts; weight = repeats
                counter.update(row)

    def refresh(self) -> None:
        """Recompute the cached top lists (cheap: one argpartition per list)."""
        self._since_refresh = 0
        self.version += 1
        self._top = _top_rows(self.scores, self.top_size)
        for timescale in self.timescales:
            timescale.refresh(self.timescale_top)
        self._segment_top = {}
        self._segment_by_row = {}
        for key, counter in self.segments.items():
            common = counter.most_common(self.segment_size)
            rows = np.array([row for row, _ in common], dtype=np.int64)
            values = np.array([count for _, count in common], dtype=np.float64)
            self._segment_top[key] = (rows, values)
            by_row = np.argsort(rows)
            self._segment_by_row[key] = (rows[by_row], values[by_row])

    def top(self) -> IntArray:
        return self._top

    def timescale_tops(self) -> list[IntArray]:
        """The most popular items at each extra time scale (trending candidates)."""
        return [timescale.top for timescale in self.timescales]

    def relative(self, rows: IntArray) -> FloatArray:
        """``[timescales, rows]`` popularity relative to each scale's top item, in [0, 1].

        Relative to the top rather than to the traffic, so a weight the ranker learns on a
        quiet night means the same at the Christmas peak.
        """
        if not self.timescales:
            return np.zeros((0, rows.size))
        return np.stack([timescale.relative(rows) for timescale in self.timescales])

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
        return np.log1p(out)

    def _advance(self, t: float) -> None:
        factor = self.clock.advance(t)
        if factor is None:
            return
        self.scores /= factor
        self.refresh()

    def _new_segment(self) -> sketch.HeavyHitters:
        """Lossy counting sized to hold a segment's top list with room to spare.

        River fades the counts once per bucket of ``ceil(1/epsilon)`` updates, so the
        factor is set per bucket to halve them every ``segment_half_life_events``.
        """
        epsilon = 0.05 / self.segment_size
        per_bucket = math.ceil(1 / epsilon) / self.segment_half_life_events
        return sketch.HeavyHitters(
            support=epsilon / 10, epsilon=epsilon, fading_factor=math.pow(0.5, per_bucket)
        )


def _top_rows(scores: FloatArray, n: int) -> IntArray:
    if scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    n = min(n, scores.size)
    part = np.argpartition(-scores, n - 1)[:n]
    order = np.argsort(-scores[part], kind="stable")
    top = part[order]
    return top[scores[top] > 0].astype(np.int64)
