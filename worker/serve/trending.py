"""What is trending, per context segment, read from the shared models' newest checkpoint.

The workers checkpoint their shared models to Redis (:mod:`worker.sync.checkpoint`); the
trending part of a checkpoint is the overall time-decayed popularity and one lossy
counter per segment (``country:<code>``, ``device:<name>``, ``hour:<0-23>``, from each
event's context and time; at most 512 segments). :func:`board_of` turns it into a
:class:`TrendingBoard`, the top items of every segment and overall, with the very code
that a worker uses (:class:`~worker.models.trending.Trending`), so ``tailor serve``
answers what a worker's cold-start fill would pick from, before its catalog filters.
:class:`TrendingCache` keeps the newest board and looks for a newer checkpoint every
``TAILOR_SERVE_CHECKPOINT_REFRESH_S`` in a thread of its own.

``tailor serve`` reads no Kafka, so it knows no catalog: an item made unavailable since
is still listed until it stops trending.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.config import Settings
from worker.models.frames import FrameError, unpack
from worker.models.trending import Trending
from worker.state.store import REDIS_ERRORS, StoreRefused, StoreUnavailable
from worker.sync.checkpoint import CHECKPOINT_KIND, install_segments

__all__ = [
    "SEGMENT_KINDS",
    "TrendingBoard",
    "TrendingCache",
    "TrendingItem",
    "board_of",
    "segment_keys",
]

log = logging.getLogger("tailor.serve")

#: Why the checkpoints may not be readable now: Redis away or refusing.
_UNREADABLE: tuple[type[Exception], ...] = (*REDIS_ERRORS, StoreUnavailable, StoreRefused)

#: The kinds of segment the workers count, in the order a cold user's list is filled
#: from them (most telling first), as ``kind:value`` keys.
SEGMENT_KINDS = ("country", "hour", "device")


@dataclass(frozen=True, slots=True)
class TrendingItem:
    item_id: str
    #: decayed interactions: overall, weighted events halving every
    #: ``TAILOR_TRENDING_HALF_LIFE_S`` of event time; in a segment, interactions halving
    #: every ``TAILOR_SEGMENT_HALF_LIFE_EVENTS`` events of the segment
    score: float


@dataclass(frozen=True, slots=True)
class TrendingBoard:
    """The top items overall and of every segment of one checkpoint (immutable)."""

    overall: list[TrendingItem]
    segments: dict[str, list[TrendingItem]]
    items: int  # items the checkpoint's models know
    log_position: int  # the model topic offset the checkpoint reflects
    as_of: float  # event time (epoch s) of the newest event in the models; 0 if none
    loaded_at: float = field(default_factory=time.time)

    def top(self, keys: list[str], limit: int) -> list[tuple[TrendingItem, str]]:
        """Up to ``limit`` items: each segment's top in turn, then overall ("" segment),
        each item once, at its first place; segments nobody was counted in add nothing."""
        chosen: list[tuple[TrendingItem, str]] = []
        seen: set[str] = set()
        for key, ranked in [(key, self.segments.get(key, [])) for key in keys] + [
            ("", self.overall)
        ]:
            for entry in ranked:
                if len(chosen) == limit:
                    return chosen
                if entry.item_id not in seen:
                    seen.add(entry.item_id)
                    chosen.append((entry, key))
        return chosen


def segment_keys(country: str | None, device: str | None, hour: int | None) -> list[str]:
    """The segments of a context, in :data:`SEGMENT_KINDS` order (the worker's keys)."""
    values = {"country": country, "hour": None if hour is None else str(hour), "device": device}
    return [f"{kind}:{values[kind]}" for kind in SEGMENT_KINDS if values[kind]]


def board_of(data: bytes, settings: Settings) -> TrendingBoard:
    """Read a checkpoint's trending part; raises :class:`FrameError` for a bad one.

    Only the frame is checked (magic, CRC, kind, version), not the model shapes a worker
    checks before installing: the trending arrays do not depend on them.
    """
    meta, arrays = unpack(data, CHECKPOINT_KIND)
    try:
        ids: list[str] = [str(item) for item in meta["items"]]
        trending = Trending(
            settings.trending_half_life_s,
            top_size=settings.trending_pool,
            segment_size=settings.trending_pool,
            segment_half_life_events=settings.segment_half_life_events,
        )
        origin, now = meta["trending_clock"]
        trending.clock.origin = None if origin is None or math.isnan(origin) else float(origin)
        trending.clock.now = float(now)
        trending.scores = np.array(arrays["trend_scores"], dtype=np.float64)
        install_segments(trending, meta["segments"], arrays)
        trending.refresh()
        scale = trending.clock.current_scale()

        def ranked(rows: Any, values: Any) -> list[TrendingItem]:
            return [
                TrendingItem(ids[row], round(float(value), 6))
                for row, value in zip(rows.tolist(), values.tolist(), strict=True)
                if 0 <= row < len(ids)
            ]

        top = trending.top()
        overall = ranked(top, trending.scores[top] / scale)
        segments = {key: ranked(*trending.segment_top(key)) for key in trending.segments}
        return TrendingBoard(
            overall=overall,
            segments=segments,
            items=len(ids),
            log_position=int(meta["log_position"]),
            as_of=float(now) if trending.clock.origin is not None else 0.0,
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise FrameError(f"checkpoint lacks or garbles {error}") from None


class TrendingCache:
    """The newest :class:`TrendingBoard`, refreshed in a daemon thread.

    ``newest_first`` yields the stored checkpoints, newest first (one Redis read each,
    :meth:`~worker.state.store.RedisCheckpoints.newest_first`). A checkpoint whose bytes
    end as the loaded one's (its CRC) and are as long is not decoded again. Until one is
    loaded, looks come every few seconds rather than every interval, so that a new
    deployment is ready soon after its first checkpoint.
    """

    def __init__(
        self,
        settings: Settings,
        newest_first: Callable[[], Iterator[bytes]],
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.settings = settings
        self.newest_first = newest_first
        self.on_result = on_result
        self.board: TrendingBoard | None = None
        self.why = "no checkpoint loaded yet"
        self._fingerprint: tuple[int, bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trending", daemon=True)

    def start(self) -> TrendingCache:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def age_s(self) -> float:
        """Seconds since the loaded board was read (NaN before the first)."""
        board = self.board
        return math.nan if board is None else time.time() - board.loaded_at

    def refresh(self) -> str:
        """Look once; returns (and reports) loaded, unchanged, missing, refused or failed."""
        result = self._look()
        self.on_result(result)
        return result

    def _look(self) -> str:
        refused = 0
        try:
            for data in self.newest_first():
                fingerprint = (len(data), data[-4:])
                if fingerprint == self._fingerprint:
                    return "unchanged"
                started = time.perf_counter()
                try:
                    board = board_of(data, self.settings)
                except FrameError as error:
                    refused += 1
                    log.warning("trending: a checkpoint refused (%s); trying an older one", error)
                    continue
                self.board, self._fingerprint, self.why = board, fingerprint, ""
                log.info(
                    "trending: checkpoint loaded in %.2f s (%d items, %d segments, model log "
                    "position %d)",
                    time.perf_counter() - started,
                    board.items,
                    len(board.segments),
                    board.log_position,
                )
                return "loaded"
        except _UNREADABLE as error:
            log.warning("trending: cannot read checkpoints: %s", error)
            if self.board is None:
                self.why = f"cannot read checkpoints: {error}"
            return "failed"
        if refused:
            if self.board is None:
                self.why = "every stored checkpoint was refused"
            return "refused"
        if self.board is None:
            interval = self.settings.model_checkpoint_interval_s
            self.why = (
                "no model checkpoint in Redis yet (the workers write one every "
                f"TAILOR_MODEL_CHECKPOINT_INTERVAL_S={interval:g} s)"
            )
        return "missing"

    def _run(self) -> None:
        said_missing = False
        while not self._stop.is_set():
            result = self.refresh()
            if result == "missing" and not said_missing:
                log.info("trending: %s; looking again", self.why)
                said_missing = True
            wait = self.settings.serve_checkpoint_refresh_s
            if self.board is None:
                wait = min(wait, 2.0)
            self._stop.wait(wait)
