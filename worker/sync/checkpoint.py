"""Checkpoints of the shared models: every array and count a restart needs, as data.

A checkpoint is one frame (:mod:`worker.models.frames`: JSON plus raw arrays, zlib
compressed, CRC-checked, versioned; never pickle) holding the merged models of a worker:
the item table, trending with its time scales and segment counts, co-visitation, similar
sessions, item vectors and the ranker, plus the positions of the inputs it reflects
(the model topic offset it has read up to and, per event partition, the last offset the
models hold, with the id of the events topic those offsets are of). A worker that starts
installs the newest checkpoint that reads cleanly and catches up from the model topic
after its offset (docs/models.md).

Nothing in it names a user: item ids, anonymous session tokens and numbers only. What is
derived from the catalog (availability, categories, content neighbours) is not kept: the
catalog topic is compacted and reloaded on start anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.config import Settings
from worker.models.decay import DecayClock
from worker.models.frames import FrameError, pack, unpack
from worker.models.ranker import FEATURES
from worker.models.trending import Trending

if TYPE_CHECKING:
    from worker.recommend.core import Recommender

__all__ = [
    "CHECKPOINT_KIND",
    "Checkpoint",
    "CheckpointRefused",
    "decode_checkpoint",
    "encode_checkpoint",
    "install_segments",
    "pack_checkpoint",
    "snapshot",
]

CHECKPOINT_KIND = "tailor.model.checkpoint"

Arrays = dict[str, np.ndarray[Any, Any]]


class CheckpointRefused(ValueError):
    """A checkpoint that is corrupt, truncated, of another format or of other settings."""


def _shape_settings(settings: Settings) -> dict[str, Any]:
    """Settings that fix the models' shapes: a checkpoint made under others cannot load."""
    return {
        "vector_dim": settings.vector_dim,
        "covis_neighbours": settings.covis_neighbours,
        "sessions_kept": settings.sessions_kept,
        "sessions_per_item": settings.sessions_per_item,
        "session_length": settings.session_length,
        "features": list(FEATURES),
        "trend_timescales": None,  # filled from the trending model (code, not a setting)
        "seed": settings.seed,
    }


@dataclass(slots=True)
class Checkpoint:
    """A decoded, validated checkpoint, ready to install into a fresh recommender."""

    meta: dict[str, Any]
    arrays: Arrays
    log_position: int = 0  # the next model topic offset to read after installing it
    contributed: dict[int, int] = field(default_factory=dict)
    contributed_topic: str = ""  # events topic id of ``contributed`` ("" unknown, or older)

    @property
    def items(self) -> int:
        return len(self.meta["items"])

    def install(self, rec: Recommender) -> None:
        """Make ``rec`` (fresh: no item seen yet) hold exactly the checkpointed models."""
        if len(rec.index):
            raise RuntimeError("a checkpoint installs into a fresh recommender only")
        meta, arrays = self.meta, self.arrays
        for item_id in meta["items"]:
            rec.index.row(item_id)
        rec.catalog.ensure(self.items)
        trending = rec.trending
        _set_clock(trending.clock, meta["trending_clock"])
        trending.scores = arrays["trend_scores"].astype(np.float64)
        for n, timescale in enumerate(trending.timescales):
            _set_clock(timescale.clock, meta["timescale_clocks"][n])
            timescale.scores = arrays[f"timescale_{n}"].astype(np.float64)
        install_segments(trending, meta["segments"], arrays)
        trending.refresh()
        _set_clock(rec.covis.clock, meta["covis_clock"])
        rec.covis.neighbour = arrays["covis_neighbour"].astype(np.int32)
        rec.covis.weight = arrays["covis_weight"].astype(np.float32)
        rec.sessions.load({k[9:]: v for k, v in arrays.items() if k.startswith("sessions_")})
        rec.taste.load({"vectors": arrays["taste_vectors"], "content_set": arrays["taste_set"]})
        rec.ranker.load(meta["ranker"])
        rec.contributed = dict(self.contributed)
        rec.contributed_topic = self.contributed_topic
        rec.totals.__init__(**meta["totals"])  # type: ignore[misc]
        # A restart must not replay the exploration picks of the last start (restarted
        # daily, every copy drew the same slots and coverage fell by a fifth): seed by
        # how far the stream had got, the same in the worker and the harness.
        rec.rng = np.random.default_rng([rec.settings.seed, rec.totals.events])


def encode_checkpoint(rec: Recommender, log_position: int) -> bytes:
    """The recommender's shared models as one compressed frame."""
    return pack_checkpoint(*snapshot(rec, log_position))


def pack_checkpoint(meta: dict[str, Any], arrays: Arrays) -> bytes:
    """Encode a :func:`snapshot` (the slow part: safe on another thread)."""
    return pack(CHECKPOINT_KIND, meta, arrays, compress=True)


def snapshot(
    rec: Recommender, log_position: int, catalog_positions: dict[int, int] | None = None
) -> tuple[dict[str, Any], Arrays]:
    """Copies of the shared models' data, consistent with ``log_position`` (fast)."""
    trending = rec.trending
    meta: dict[str, Any] = {
        "shape": _shape_of(rec),
        "items": list(rec.index.ids),
        "log_position": log_position,
        "catalog_positions": {str(p): o for p, o in (catalog_positions or {}).items()},
        "contributed": {str(p): o for p, o in rec.contributed.items()},
        "contributed_topic": rec.contributed_topic,
        "trending_clock": _clock(trending.clock),
        "timescale_clocks": [_clock(t.clock) for t in trending.timescales],
        "covis_clock": _clock(rec.covis.clock),
        "ranker": rec.ranker.state(),
        "totals": {name: getattr(rec.totals, name) for name in rec.totals.__dataclass_fields__},
        "origin": rec.origin,
    }
    arrays: Arrays = {
        "trend_scores": trending.scores,
        **{f"timescale_{n}": t.scores for n, t in enumerate(trending.timescales)},
        "covis_neighbour": rec.covis.neighbour,
        "covis_weight": rec.covis.weight,
        **{f"sessions_{k}": v for k, v in rec.sessions.arrays().items()},
        "taste_vectors": rec.taste.arrays()["vectors"],
        "taste_set": rec.taste.arrays()["content_set"],
    }
    segments, segment_arrays = _segments(rec)
    meta["segments"] = segments
    arrays.update(segment_arrays)
    return meta, {name: np.array(array, copy=True) for name, array in arrays.items()}


def decode_checkpoint(data: bytes, rec: Recommender) -> Checkpoint:
    """Read and check a checkpoint against ``rec``'s settings; never half-installs.

    Raises :class:`CheckpointRefused` saying why (the caller logs it, counts it, and
    tries the next older checkpoint or starts cold).
    """
    try:
        meta, arrays = unpack(data, CHECKPOINT_KIND)
    except FrameError as error:
        raise CheckpointRefused(str(error)) from None
    try:
        if meta["shape"] != _shape_of(rec):
            raise CheckpointRefused(
                f"made under other model settings ({_difference(meta['shape'], _shape_of(rec))})"
            )
        items = len(meta["items"])
        if len(set(meta["items"])) != items or items > rec.settings.max_items:
            raise CheckpointRefused("item table has duplicates or exceeds TAILOR_MAX_ITEMS")
        _check_rows(arrays, items)
        contributed = {int(p): int(o) for p, o in meta["contributed"].items()}
        contributed_topic = str(meta.get("contributed_topic", ""))
        position = int(meta["log_position"])
    except CheckpointRefused:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise CheckpointRefused(f"checkpoint lacks or garbles {error}") from None
    return Checkpoint(meta, arrays, position, contributed, contributed_topic)


def _shape_of(rec: Recommender) -> dict[str, Any]:
    shape = _shape_settings(rec.settings)
    shape["trend_timescales"] = [t.clock.half_life_s for t in rec.trending.timescales]
    return shape


def _difference(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    return ", ".join(
        f"{key} {found.get(key)!r} here {wanted[key]!r}"
        for key in wanted
        if found.get(key) != wanted[key]
    )


def _check_rows(arrays: Arrays, items: int) -> None:
    """Every row reference points into the item table (per-item arrays grow lazily, so
    they may be shorter than the table, or longer: spare capacity)."""
    if arrays["covis_neighbour"].shape != arrays["covis_weight"].shape:
        raise CheckpointRefused("co-visitation arrays differ in shape")
    neighbours = arrays["covis_neighbour"]
    if neighbours.size and (neighbours.max() >= max(items, 1) or neighbours.min() < -1):
        raise CheckpointRefused("co-visitation points outside the item table")
    held = arrays["sessions_items"]
    if held.size and (held.max() >= max(items, 1) or held.min() < -1):
        raise CheckpointRefused("similar sessions point outside the item table")
    if arrays["segment_rows"].size and arrays["segment_rows"].max() >= max(items, 1):
        raise CheckpointRefused("segment counts point outside the item table")


def _clock(clock: DecayClock) -> list[float]:
    return [math.nan if clock.origin is None else clock.origin, clock.now]


def _set_clock(clock: DecayClock, values: list[float]) -> None:
    origin, now = values
    clock.origin = None if origin is None or math.isnan(origin) else float(origin)
    clock.now = float(now)


def _segments(rec: Recommender) -> tuple[list[list[Any]], Arrays]:
    """Segment counters (River's lossy counting) as (key, n, delta, count) plus arrays."""
    keys: list[list[Any]] = []
    rows: list[int] = []
    frequencies: list[float] = []
    deltas: list[float] = []
    for key, counter in rec.trending.segments.items():
        entries = counter._entries
        keys.append([key, counter._n, counter._delta, len(entries)])
        rows += [int(row) for row in entries]  # type: ignore[call-overload]
        for frequency, delta in entries.values():
            frequencies.append(frequency)
            deltas.append(delta)
    return keys, {
        "segment_rows": np.array(rows, dtype=np.int64),
        "segment_frequency": np.array(frequencies, dtype=np.float64),
        "segment_delta": np.array(deltas, dtype=np.float64),
    }


def install_segments(trending: Trending, keys: list[list[Any]], arrays: Arrays) -> None:
    """Put a checkpoint's segment counters into ``trending`` (a worker's, or the one
    ``tailor serve`` answers ``/v1/trending`` from)."""
    rows = arrays["segment_rows"].tolist()
    frequencies = arrays["segment_frequency"].tolist()
    deltas = arrays["segment_delta"].tolist()
    at = 0
    trending.segments = {}
    for key, n, delta, count in keys:
        counter = trending._new_segment()
        counter._n = int(n)
        counter._delta = float(delta)
        counter._entries = {
            rows[k]: (frequencies[k], deltas[k]) for k in range(at, at + int(count))
        }
        trending.segments[str(key)] = counter
        at += int(count)
