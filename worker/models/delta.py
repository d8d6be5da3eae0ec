"""What one micro-batch taught the shared models, in a form any worker can apply.

Every worker learns the shared models (trending, segments, co-visitation, similar
sessions, item vectors, the ranker) from one stream of these deltas: its own, applied the
moment they are made, and every other worker's, read from the ``tailor.model`` topic. So
all copies learn from the whole stream, and a checkpoint plus the deltas after it rebuilds
a copy after a restart (docs/models.md).

A delta names items by id (rows are each worker's own numbering) and holds no user id:
sessions are opaque tokens, ranker lessons are feature differences. It carries its
``positions`` (per event partition, the offsets of the events it reflects) and the id of
the events topic they are of, which is what makes it count once: see
:meth:`worker.recommend.core.Recommender.apply_delta`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.models.frames import pack, unpack

__all__ = ["DELTA_KIND", "ModelDelta", "decode_delta", "encode_delta"]

DELTA_KIND = "tailor.model.delta"

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def _i32() -> I32:
    return np.zeros(0, dtype=np.int32)


def _i64() -> I64:
    return np.zeros(0, dtype=np.int64)


def _f64() -> F64:
    return np.zeros(0, dtype=np.float64)


@dataclass(slots=True)
class ModelDelta:
    """One batch's contributions; every ``*_item`` array indexes :attr:`items`."""

    origin: str  # the worker process that made it
    batch: int  # that process's batch serial
    #: event partition -> (first, last) offset of the events reflected
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: id of the events topic those offsets are of ("" unknown: a delta of an older worker)
    topic_id: str = ""
    items: list[str] = field(default_factory=list)
    events: int = 0  # events reflected (what the fault suite totals)
    # popularity: one entry per event (weight, event time)
    trend_item: I32 = field(default_factory=_i32)
    trend_weight: F64 = field(default_factory=_f64)
    trend_time: F64 = field(default_factory=_f64)
    # segment counts, summed per (segment, item)
    segment_keys: list[str] = field(default_factory=list)
    segment_key: I32 = field(default_factory=_i32)
    segment_item: I32 = field(default_factory=_i32)
    segment_count: I32 = field(default_factory=_i32)
    # co-visits, one direction (source < target), summed per pair at ``pair_time``
    pair_source: I32 = field(default_factory=_i32)
    pair_target: I32 = field(default_factory=_i32)
    pair_weight: F64 = field(default_factory=_f64)
    pair_time: float = 0.0
    pair_visits: int = 0  # co-visits before summing per pair (what totals count)
    # similar sessions: visits in event order, and sessions dropped by a forget
    visit_token: I64 = field(default_factory=_i64)
    visit_item: I32 = field(default_factory=_i32)
    visit_time: F64 = field(default_factory=_f64)
    forgotten: I64 = field(default_factory=_i64)
    # item vectors: skip-gram steps (source pulled to target, pushed from negative)
    taste_source: I32 = field(default_factory=_i32)
    taste_target: I32 = field(default_factory=_i32)
    taste_negative: I32 = field(default_factory=_i32)
    taste_weight: F64 = field(default_factory=_f64)
    # ranker: positive - negative feature rows, one pairwise lesson each
    lessons: F32 = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    @property
    def empty(self) -> bool:
        return self.events == 0 and self.forgotten.size == 0


_ARRAYS = (
    "trend_item",
    "trend_weight",
    "trend_time",
    "segment_key",
    "segment_item",
    "segment_count",
    "pair_source",
    "pair_target",
    "pair_weight",
    "visit_token",
    "visit_item",
    "visit_time",
    "forgotten",
    "taste_source",
    "taste_target",
    "taste_negative",
    "taste_weight",
    "lessons",
)


def encode_delta(delta: ModelDelta) -> bytes:
    meta: dict[str, Any] = {
        "origin": delta.origin,
        "batch": delta.batch,
        "positions": {str(p): list(span) for p, span in delta.positions.items()},
        "topic_id": delta.topic_id,
        "items": delta.items,
        "events": delta.events,
        "segment_keys": delta.segment_keys,
        "pair_time": delta.pair_time,
        "pair_visits": delta.pair_visits,
    }
    return pack(DELTA_KIND, meta, {name: getattr(delta, name) for name in _ARRAYS})


def decode_delta(data: bytes) -> ModelDelta:
    """Inverse of :func:`encode_delta`; raises ``FrameError`` (a ``ValueError``) on bad bytes."""
    meta, arrays = unpack(data, DELTA_KIND)
    try:
        delta = ModelDelta(
            origin=str(meta["origin"]),
            batch=int(meta["batch"]),
            positions={int(p): (int(a), int(b)) for p, (a, b) in meta["positions"].items()},
            topic_id=str(meta.get("topic_id", "")),
            items=[str(item) for item in meta["items"]],
            events=int(meta["events"]),
            segment_keys=[str(key) for key in meta["segment_keys"]],
            pair_time=float(meta["pair_time"]),
            pair_visits=int(meta["pair_visits"]),
            **{name: arrays[name].copy() for name in _ARRAYS},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"model delta with missing or bad fields: {error}") from None
    _check_indices(delta)
    return delta


def _check_indices(delta: ModelDelta) -> None:
    """Refuse a delta whose indices point outside its own tables (never apply garbage)."""
    items, keys = len(delta.items), len(delta.segment_keys)
    for name, bound in (
        ("trend_item", items),
        ("segment_item", items),
        ("pair_source", items),
        ("pair_target", items),
        ("visit_item", items),
        ("taste_source", items),
        ("taste_target", items),
        ("taste_negative", items),
        ("segment_key", keys),
    ):
        values = getattr(delta, name)
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise ValueError(f"model delta: {name} points outside its table")
    lengths = {
        "trend": {delta.trend_item.size, delta.trend_weight.size, delta.trend_time.size},
        "segment": {delta.segment_key.size, delta.segment_item.size, delta.segment_count.size},
        "pair": {delta.pair_source.size, delta.pair_target.size, delta.pair_weight.size},
        "visit": {delta.visit_token.size, delta.visit_item.size, delta.visit_time.size},
        "taste": {
            delta.taste_source.size,
            delta.taste_target.size,
            delta.taste_negative.size,
            delta.taste_weight.size,
        },
    }
    for part, sizes in lengths.items():
        if len(sizes) != 1:
            raise ValueError(f"model delta: {part} columns differ in length")
    if delta.lessons.ndim != 2:
        raise ValueError("model delta: lessons are not a matrix")


class DeltaBuilder:
    """Collects one batch's contributions in local rows, then packs them as a delta.

    Co-visits are summed per pair and expressed at the batch's latest time (weight times
    ``2**((t - t_ref) / half_life)``), so a receiver adds exactly what the maker added
    whatever its own decay origin; segment counts are summed per (segment, item).
    """

    def __init__(self) -> None:
        self.positions: dict[int, tuple[int, int]] = {}
        self.topic_id = ""
        self.events = 0
        self.trend: tuple[list[int], list[float], list[float]] = ([], [], [])
        self.segment_counts: dict[tuple[str, int], int] = {}
        self.pairs: tuple[list[int], list[int], list[float], list[float]] = ([], [], [], [])
        self.visits: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.forgotten: list[int] = []
        self.taste: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.lessons: list[F32] = []

    def event(self, partition: int, offset: int) -> None:
        first, last = self.positions.get(partition, (offset, offset))
        self.positions[partition] = (min(first, offset), max(last, offset))
        self.events += 1

    def segments(self, keys: tuple[str, ...], row: int, count: int) -> None:
        for key in keys:
            self.segment_counts[(key, row)] = self.segment_counts.get((key, row), 0) + count

    def build(
        self,
        origin: str,
        batch: int,
        item_ids: list[str],
        negatives: I64,
        covis_half_life_s: float,
        features: int,
    ) -> tuple[ModelDelta, I64]:
        """The delta, and the local row of each entry of its item table."""
        trend_rows, trend_weights, trend_times = (np.asarray(c) for c in self.trend)
        segment_keys = sorted({key for key, _ in self.segment_counts})
        key_index = {key: n for n, key in enumerate(segment_keys)}
        segment_rows = np.array([row for _, row in self.segment_counts], dtype=np.int64)
        pair_source, pair_target, pair_weight, pair_time = self._summed_pairs(covis_half_life_s)
        visit_rows = np.array(self.visits[1], dtype=np.int64)
        taste_source = np.array(self.taste[0], dtype=np.int64)
        taste_target = np.array(self.taste[1], dtype=np.int64)
        table = np.unique(
            np.concatenate(
                [
                    trend_rows.astype(np.int64),
                    segment_rows,
                    pair_source,
                    pair_target,
                    visit_rows,
                    taste_source,
                    taste_target,
                    negatives,
                ]
            )
        )

        def local(rows: I64) -> I32:
            return np.searchsorted(table, rows).astype(np.int32)

        delta = ModelDelta(
            origin=origin,
            batch=batch,
            positions=dict(self.positions),
            topic_id=self.topic_id,
            items=[item_ids[row] for row in table.tolist()],
            events=self.events,
            trend_item=local(trend_rows.astype(np.int64)),
            trend_weight=trend_weights.astype(np.float64),
            trend_time=trend_times.astype(np.float64),
            segment_keys=segment_keys,
            segment_key=np.array(
                [key_index[key] for key, _ in self.segment_counts], dtype=np.int32
            ),
            segment_item=local(segment_rows),
            segment_count=np.array(list(self.segment_counts.values()), dtype=np.int32),
            pair_source=local(pair_source),
            pair_target=local(pair_target),
            pair_weight=pair_weight,
            pair_time=pair_time,
            pair_visits=len(self.pairs[0]),
            visit_token=np.array(self.visits[0], dtype=np.int64),
            visit_item=local(visit_rows),
            visit_time=np.array(self.visits[2], dtype=np.float64),
            forgotten=np.array(self.forgotten, dtype=np.int64),
            taste_source=local(taste_source),
            taste_target=local(taste_target),
            taste_negative=local(negatives),
            taste_weight=np.array(self.taste[2], dtype=np.float64),
            lessons=(
                np.concatenate(self.lessons).astype(np.float32)
                if self.lessons
                else np.zeros((0, features), dtype=np.float32)
            ),
        )
        return delta, table

    def _summed_pairs(self, half_life_s: float) -> tuple[I64, I64, F64, float]:
        sources = np.array(self.pairs[0], dtype=np.int64)
        targets = np.array(self.pairs[1], dtype=np.int64)
        if sources.size == 0:
            return sources, targets, np.zeros(0), 0.0
        times = np.array(self.pairs[3])
        reference = float(times.max())
        weights = np.array(self.pairs[2]) * np.exp2((times - reference) / half_life_s)
        low, high = np.minimum(sources, targets), np.maximum(sources, targets)
        stride = np.int64(int(high.max()) + 1)
        keys, inverse = np.unique(low * stride + high, return_inverse=True)
        summed: F64 = np.bincount(inverse, weights=weights, minlength=keys.size).astype(np.float64)
        low_rows: I64 = (keys // stride).astype(np.int64)
        high_rows: I64 = (keys % stride).astype(np.int64)
        return low_rows, high_rows, summed, reference
