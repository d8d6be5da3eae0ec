"""Item-to-item co-visitation: which items the same users touch close together in time.

Each item keeps its top-M neighbours in two fixed ``[items, M]`` arrays, updated with the
Space-Saving rule (a new neighbour evicts the weakest slot and inherits its weight), so
memory is bounded by ``items * M`` whatever the traffic, and heavy pairs are never lost.
Weights decay with event time like trending.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.models.arrays import grow_rows
from worker.models.decay import DecayClock

__all__ = ["CoVisitation"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class CoVisitation:
    def __init__(self, neighbours: int, half_life_s: float) -> None:
        self.m = neighbours
        self.clock = DecayClock(half_life_s)
        # int32 rows (ItemIndex stays far below 2**31): 8 bytes per slot with the weight
        self.neighbour: npt.NDArray[np.int32] = np.full((0, neighbours), -1, dtype=np.int32)
        self.weight: npt.NDArray[np.float32] = np.zeros((0, neighbours), dtype=np.float32)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` items now, so that no batch pays for growing the arrays.

        Growing them by doubling as items first co-occur copies hundreds of MB in the
        first minutes of a worker, each copy a stall in the lists' latency.
        """
        self.neighbour = grow_rows(self.neighbour, rows, fill=-1)
        self.weight = grow_rows(self.weight, rows, fill=0.0)

    def observe(
        self, sources: IntArray, targets: IntArray, weights: FloatArray, times: FloatArray
    ) -> None:
        """Strengthen the links ``source -> target`` (callers add both directions)."""
        keep = (sources >= 0) & (targets >= 0) & (sources != targets)
        if not keep.any():
            return
        sources, targets, weights, times = sources[keep], targets[keep], weights[keep], times[keep]
        factor = self.clock.advance(float(times.max()))
        if factor is not None:
            self.weight /= np.float32(factor)
        self.reserve(int(max(sources.max(), targets.max())) + 1)
        scaled = weights * self.clock.weights(times)

        # Merge duplicate pairs of this batch first, so each pair is one update.
        pair_keys = sources * np.int64(self.neighbour.shape[0]) + targets
        unique_keys, inverse = np.unique(pair_keys, return_inverse=True)
        summed = np.zeros(unique_keys.size)
        np.add.at(summed, inverse, scaled)
        sources = unique_keys // self.neighbour.shape[0]
        targets = unique_keys % self.neighbour.shape[0]

        slots = self.neighbour[sources] == targets[:, None]
        found = slots.any(axis=1)
        hit_rows = sources[found]
        hit_slots = slots[found].argmax(axis=1)
        self.weight[hit_rows, hit_slots] += summed[found].astype(np.float32)
        self._insert(sources[~found], targets[~found], summed[~found])

    def _insert(self, sources: IntArray, targets: IntArray, weights: FloatArray) -> None:
        """New neighbours evict the weakest slots, strongest newcomer first.

        A source with k newcomers hands them its k weakest slots (distinct ones), each
        newcomer inheriting the evicted weight plus its own: Space-Saving, batched.
        """
        if sources.size == 0:
            return
        order = np.lexsort((-weights, sources))
        sources, targets, weights = sources[order], targets[order], weights[order]
        distinct, first, counts = np.unique(sources, return_index=True, return_counts=True)
        rank = np.arange(sources.size) - np.repeat(first, counts)
        group = np.repeat(np.arange(distinct.size), counts)
        keep = rank < self.m
        weakest_first = np.argsort(self.weight[distinct], axis=1, kind="stable")
        slots = weakest_first[group[keep], rank[keep]]
        self.neighbour[sources[keep], slots] = targets[keep]
        self.weight[sources[keep], slots] += weights[keep].astype(np.float32)

    def neighbours_of(self, rows: IntArray) -> tuple[IntArray, FloatArray]:
        """``[len(rows), M]`` neighbour rows (-1 = empty) and weights read in 'now' units."""
        valid = (rows >= 0) & (rows < self.neighbour.shape[0])
        neighbours = np.full((rows.size, self.m), -1, dtype=np.int64)
        weights = np.zeros((rows.size, self.m))
        neighbours[valid] = self.neighbour[rows[valid]]
        weights[valid] = self.weight[rows[valid]] / self.clock.current_scale()
        return neighbours, weights
