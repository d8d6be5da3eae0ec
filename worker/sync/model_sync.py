"""Keeping a worker's shared models in step with every other worker, and across restarts.

The shape (docs/models.md): every worker publishes what each batch taught its models as
a :class:`~worker.models.delta.ModelDelta` to one log (the ``tailor.model`` topic, one
partition, read whole by every worker), learns its own deltas at once and everybody
else's as it reads them. Every interval one worker (whoever takes the lease) writes a
checkpoint of its merged models tagged with the log position it reflects. A starting
worker installs the newest readable checkpoint and reads the log from that position to
the end before it reports ready.

The log and the checkpoint store are small interfaces: Kafka and Redis in ``tailor run``
(:mod:`worker.transport.model_log`, :mod:`worker.state.store`), in-memory ones in
:mod:`worker.testing` for the evaluation harness and the unit tests. One code path.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from worker.metrics import Metrics
from worker.models.delta import ModelDelta, decode_delta, encode_delta
from worker.recommend.core import DeltaOutcome, Recommender, count_delta, judge_delta
from worker.state.user import other_topic
from worker.sync.checkpoint import decode_checkpoint, pack_checkpoint, snapshot

__all__ = ["CheckpointStore", "LogRecord", "ModelLog", "ModelSync", "new_origin"]

log = logging.getLogger("tailor.sync")


def new_origin() -> str:
    """A name for this worker process's deltas: unique per process, never reused."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class LogRecord:
    position: int  # offset in the log
    data: bytes
    written_at: float  # seconds (wall clock on Kafka, event time in the harness)
    origin: str  # the worker that wrote it (the message key): own deltas skip decoding


class ModelLog(Protocol):
    """An ordered log every worker appends deltas to and reads whole."""

    def prepare(self) -> None:
        """Make sure the log exists (create the topic when missing)."""
        ...

    def close(self) -> None: ...

    def append(self, data: bytes, origin: str) -> None: ...

    def flush(self, timeout_s: float) -> None:
        """Return once everything appended is durable; raise when it cannot be."""
        ...

    def seek(self, position: int) -> None: ...

    def read(self, limit: int, timeout_s: float) -> list[LogRecord]: ...

    def bounds(self) -> tuple[int, int]:
        """(first position still held, position after the last record)."""
        ...


class CheckpointStore(Protocol):
    """Where checkpoints live; the newest ``keep`` are kept."""

    def save(self, data: bytes) -> None: ...

    def newest_first(self) -> Iterator[bytes]: ...

    def claim(self, seconds: float) -> bool:
        """True for the one worker that may write the next checkpoint (a lease)."""
        ...


class ModelSync:
    """One worker's side of the shared models: publish, read, checkpoint, restore."""

    def __init__(
        self,
        recommender: Recommender,
        model_log: ModelLog,
        checkpoints: CheckpointStore,
        checkpoint_interval_s: float,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        self.recommender = recommender
        self.log = model_log
        self.checkpoints = checkpoints
        self.interval_s = checkpoint_interval_s
        self.metrics = metrics
        self.clock = clock
        self.background = background
        self.position = 0  # next log position to read
        self.checkpoint_at = clock()  # when the models were last checkpointed or restored
        self.restored_from: int | None = None
        self.lag_s = 0.0  # age of the newest delta applied while more were waiting
        self._writer: threading.Thread | None = None
        # What a reader of the log alone has counted (positions per event partition), and
        # the positions of own deltas learned at once but not read back yet: together they
        # tell whether these models are the log's, which a checkpoint must be.
        self.log_contributed: dict[int, int] = dict(recommender.contributed)
        self.log_topic = recommender.contributed_topic  # events topic id of log_contributed
        self.unread_own: deque[tuple[str, dict[int, tuple[int, int]]]] = deque()
        self.diverged = False

    # -- start-up ---------------------------------------------------------------------

    def restore(self) -> str:
        """Install the newest checkpoint that reads cleanly; say what happened.

        A corrupt, truncated or incompatible checkpoint is refused with one log line and
        a metric, and the next older one is tried; with none left the models start
        empty and the whole log still held is read.
        """
        for data in self.checkpoints.newest_first():
            try:
                checkpoint = decode_checkpoint(data, self.recommender)
                checkpoint.install(Recommender(self.recommender.settings))  # a dry run
            except Exception as error:  # whatever is wrong with it, never install it half
                log.error(
                    "model checkpoint refused (%d bytes): %s: %s",
                    len(data),
                    type(error).__name__,
                    error,
                )
                if self.metrics is not None:
                    self.metrics.checkpoints_refused.inc()
                continue
            checkpoint.install(self.recommender)
            self.log_contributed = dict(checkpoint.contributed)
            self.log_topic = checkpoint.contributed_topic
            self.position = checkpoint.log_position
            self.restored_from = checkpoint.log_position
            self.checkpoint_at = self.clock()
            return (
                f"models restored from a checkpoint of {checkpoint.items} items at model "
                f"log position {checkpoint.log_position}"
            )
        self.position = self.log.bounds()[0]
        return "no usable model checkpoint: models start empty"

    def catch_up(self, timeout_s: float = 60.0, batch: int = 500) -> int:
        """Read the log to its current end (or until ``timeout_s``); deltas applied."""
        first, end = self.log.bounds()
        if self.position < first:
            log.warning(
                "model log starts at %d, past position %d: %d deltas are gone (retention)",
                first,
                self.position,
                first - self.position,
            )
            self.position = first
        self.log.seek(self.position)
        deadline = time.monotonic() + timeout_s
        applied = 0
        while self.position < end and time.monotonic() < deadline:
            records = self.log.read(batch, 0.2)
            if not records and self.log.bounds()[1] <= self.position:
                break  # the end moved back (a recreated topic): nothing more to read
            applied += self._apply(records)
        return applied

    # -- every batch --------------------------------------------------------------------

    def publish(self, delta: ModelDelta | None) -> None:
        """Queue this batch's delta for the others (already learned here)."""
        if delta is None:
            return
        data = encode_delta(delta)
        self.log.append(data, delta.origin)
        self.unread_own.append((delta.topic_id, delta.positions))
        if self.metrics is not None:
            self.metrics.model_deltas_published.inc()
            self.metrics.model_delta_bytes.labels("out").inc(len(data))

    def poll(self, limit: int = 500) -> int:
        """Apply the other workers' deltas that have arrived (never blocks)."""
        records = self.log.read(limit, 0.0)
        applied = self._apply(records)
        caught_up = len(records) < limit
        lag = 0.0 if caught_up or not records else self.clock() - records[-1].written_at
        self.lag_s = max(lag, 0.0)
        if self.metrics is not None:
            self.metrics.model_sync_lag.set(self.lag_s)
        return applied

    def flush(self, timeout_s: float) -> None:
        """Wait until the published deltas are durable (raises when they cannot be)."""
        self.log.flush(timeout_s)

    def _apply(self, records: list[LogRecord]) -> int:
        applied = 0
        rec, metrics = self.recommender, self.metrics
        for record in records:
            self.position = record.position + 1
            if record.origin == rec.origin and self.unread_own:
                self._count("own", len(record.data))
                self._follow_log(*self.unread_own.popleft(), "applied", record.position)
                continue
            counted_topic = rec.contributed_topic
            try:
                delta = decode_delta(record.data)
                outcome = rec.apply_delta(delta)  # checks what it needs before changing a thing
            except ValueError as error:
                log.error("model delta at %d refused: %s", record.position, error)
                self._count("corrupt", len(record.data))
                continue
            self._count(outcome, len(record.data))
            if other_topic(counted_topic, rec.contributed_topic):
                self._voided(counted_topic, f"model delta {delta.origin}/{delta.batch}")
            self._follow_log(delta.topic_id, delta.positions, outcome, record.position)
            if outcome == "applied":
                applied += 1
            elif outcome == "refused":
                log.warning(
                    "model delta %s/%d at %d refused: it overlaps events already counted "
                    "(a batch redone after a crash, or a worker publishing after losing its "
                    "partitions)",
                    delta.origin,
                    delta.batch,
                    record.position,
                )
        if metrics is not None:
            metrics.checkpoint_age.set(max(0.0, self.clock() - self.checkpoint_at))
        return applied

    def _voided(self, was: str, by: str) -> None:
        """Say that the models' offsets were of another events topic id and were dropped
        (the topic was deleted and recreated): one log line and the metric."""
        log.warning(
            "shared models: their offsets of events topic id %s are void, %s is of id %s "
            "(the topic was deleted and recreated, or another cluster)",
            was,
            by,
            self.recommender.contributed_topic,
        )
        if self.metrics is not None:
            self.metrics.model_offsets_voided.inc()

    def _follow_log(
        self,
        topic_id: str,
        positions: dict[int, tuple[int, int]],
        outcome: DeltaOutcome,
        position: int,
    ) -> None:
        """Count the delta as a reader of the log alone would, and notice when this copy
        decided otherwise.

        Own deltas are learned at once, before the log has placed them. If a worker that
        lost its partitions publishes an overlapping delta that lands first, the log's
        readers take that one and drop ours, while this copy kept ours and refuses theirs.
        The difference is at most a batch, but a checkpoint of it would hand it on to every
        worker that starts from it, so such a copy stops writing checkpoints.

        The log's count follows the events topic id as the models do: a delta of another
        id voids what was counted (:meth:`Recommender.adopt_topic`).
        """
        if other_topic(self.log_topic, topic_id):
            self.log_contributed.clear()
        self.log_topic = topic_id or self.log_topic
        expected = judge_delta(positions, self.log_contributed)
        if expected == "applied":
            count_delta(positions, self.log_contributed)
        if expected == outcome or self.diverged:
            return
        self.diverged = True
        log.error(
            "models diverged from the model topic at %d (the log counts a delta as %s, this "
            "worker as %s): a worker that lost its partitions published an overlapping batch; "
            "this worker writes no more checkpoints and is exact again after a restart",
            position,
            expected,
            outcome,
        )
        if self.metrics is not None:
            self.metrics.model_diverged.set(1)

    @property
    def consistent(self) -> bool:
        """Whether the models are exactly the log's up to :attr:`position` (checkpointable)."""
        return not self.diverged and not self.unread_own

    def _count(self, result: str, size: int) -> None:
        if self.metrics is not None:
            self.metrics.model_deltas.labels(result).inc()
            self.metrics.model_delta_bytes.labels("in").inc(size)

    # -- checkpoints ----------------------------------------------------------------------

    def maybe_checkpoint(self) -> bool:
        """Write a checkpoint when the interval has passed and this worker holds the lease."""
        now = self.clock()
        if now - self.checkpoint_at < self.interval_s:
            return False
        if self._writer is not None and self._writer.is_alive():
            return False
        if not self._read_own_back():
            return False  # the next loop turn tries again
        self.checkpoint_at = now
        try:
            if not self.checkpoints.claim(self.interval_s):
                return False
        except Exception as error:  # Redis away: the next interval tries again
            log.warning("model checkpoint skipped: cannot take the lease (%s)", error)
            return False
        self.checkpoint()
        return True

    def _read_own_back(self, timeout_s: float = 1.0) -> bool:
        """Read the log until this worker's own deltas are back (they are acknowledged, so
        that is a fetch away); False if the models cannot be checkpointed now."""
        deadline = time.monotonic() + timeout_s
        while self.unread_own and not self.diverged and time.monotonic() < deadline:
            self._apply(self.log.read(500, 0.1))
        return self.consistent

    def checkpoint(self) -> None:
        """Snapshot now; encode and store in the background (or here, in the harness).

        The snapshot is taken between batches, so it is consistent with ``position``; the
        encoding copies every array first, so the loop may go on at once.
        :meth:`maybe_checkpoint` first makes sure the models are exactly the log's
        (:attr:`consistent`); the evaluation harness, where no worker loses its partitions
        and so no copy can diverge, calls this directly at the times it replays.
        """
        started = time.perf_counter()
        meta, arrays = snapshot(self.recommender, self.position)

        def store() -> None:
            try:
                data = pack_checkpoint(meta, arrays)
                self.checkpoints.save(data)
            except Exception as error:  # a failed checkpoint must not stop the worker
                log.error("model checkpoint not stored: %s", error)
                return
            if self.metrics is not None:
                self.metrics.checkpoint_bytes.set(len(data))
                self.metrics.checkpoint_seconds.set(time.perf_counter() - started)
                self.metrics.checkpoint_age.set(0.0)
            log.info(
                "model checkpoint stored: %.1f MB at log position %d in %.2f s",
                len(data) / 1e6,
                self.position,
                time.perf_counter() - started,
            )

        if self.background:
            self._writer = threading.Thread(target=store, name="tailor-checkpoint", daemon=True)
            self._writer.start()
        else:
            store()

    def close(self, timeout_s: float = 30.0) -> None:
        """Let a checkpoint being written finish."""
        if self._writer is not None:
            self._writer.join(timeout_s)
