"""In-memory stand-ins for the worker's collaborators, for the harness and unit tests.

``tailor run`` reads events and the catalog from Kafka and writes lists and dead letters
to it, keeps per-user state in Redis, the model log on Kafka and checkpoints in Redis.
The evaluation harness and the loop's unit tests run the very same
:class:`~worker.loop.Worker`, recommender and :class:`~worker.sync.model_sync.ModelSync`
code against these instead (as bytewax's ``testing`` module does for its sources and
sinks), so replays need no server and the loop, sync and restore logic is tested
without one too. Nothing here is used in production.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from confluent_kafka import KafkaError, TopicPartition

from worker.evaluate.partitioning import kafka_partition, range_assignment
from worker.state.store import WriteOutcome
from worker.state.user import UserState, UserWrite
from worker.sync.model_sync import LogRecord

__all__ = [
    "MemoryCatalogFeed",
    "MemoryCheckpoints",
    "MemoryKafka",
    "MemoryMessage",
    "MemoryModelLog",
    "MemorySink",
    "MemorySource",
    "MemoryStates",
]


class MemoryStates:
    """User states in a dict (a :class:`~worker.state.store.StateStore`)."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}
        self.lists: dict[str, bytes] = {}  # the latest published list, as Redis keeps it

    def read(self, user_ids: Sequence[str]) -> dict[str, UserState | None]:
        """Copies, as Redis hands out: the caller's changes count only once written."""
        return {user_id: _copy(self.states.get(user_id)) for user_id in user_ids}

    def check(self) -> None:
        """Always reachable."""

    def write(self, writes: Sequence[UserWrite]) -> WriteOutcome:
        """Each user's state, guarded by its offsets as the Redis script guards it: offsets
        held under another known topic id are void and guard nothing."""
        stale = 0
        for write in writes:
            state = write.state
            held = self.states.get(state.user_id)
            if (
                held is not None
                and not write.erase_first
                and not (held.topic_id and state.topic_id and held.topic_id != state.topic_id)
                and any(
                    offset <= held.offsets.get(partition, -1)
                    for partition, offset in state.offsets.items()
                )
            ):
                stale += 1
                continue
            kept = _copy(state)
            assert kept is not None
            if held is not None and not write.erase_first and not kept.topic_id:
                kept.topic_id = held.topic_id  # the script leaves the stored id as it is
            self.states[state.user_id] = kept
            if write.erase_first:
                self.lists.pop(state.user_id, None)
            if write.listed:
                self.lists[state.user_id] = write.listed
        return WriteOutcome(written=len(writes) - stale, stale=stale)

    def erase(self, user_ids: Sequence[str]) -> int:
        lists = sum(self.lists.pop(user_id, None) is not None for user_id in user_ids)
        return lists + sum(self.states.pop(user_id, None) is not None for user_id in user_ids)


class MemoryModelLog:
    """The model topic as a list shared by every simulated worker.

    Each worker gets its own reader (:meth:`reader`) with its own position, as each
    Kafka consumer has; ``written_at`` is whatever clock the harness runs on (event
    time), which is how a sync lag is simulated.
    """

    def __init__(self) -> None:
        self.records: list[tuple[bytes, float, str]] = []
        self.first = 0  # position of records[0] (older ones trimmed)

    def reader(self, clock: Callable[[], float], lag_s: float = 0.0) -> MemoryLogReader:
        return MemoryLogReader(self, clock, lag_s)

    def trim(self, before: int) -> None:
        """Drop records before ``before`` (retention), keeping positions stable."""
        drop = max(0, min(before - self.first, len(self.records)))
        del self.records[:drop]
        self.first += drop


class MemoryLogReader:
    """One worker's view of a :class:`MemoryModelLog` (a :class:`ModelLog`)."""

    def __init__(self, shared: MemoryModelLog, clock: Callable[[], float], lag_s: float) -> None:
        self.shared = shared
        self.clock = clock
        self.lag_s = lag_s
        self.position = 0

    def prepare(self) -> None:
        """Nothing to create."""

    def close(self) -> None:
        """Nothing to release."""

    def append(self, data: bytes, origin: str) -> None:
        self.shared.records.append((data, self.clock(), origin))

    def flush(self, timeout_s: float) -> None:
        """Appends are durable at once."""

    def seek(self, position: int) -> None:
        self.position = position

    def read(self, limit: int, timeout_s: float) -> list[LogRecord]:
        """Records written at least ``lag_s`` ago (a simulated sync lag)."""
        shared, out = self.shared, list[LogRecord]()
        horizon = self.clock() - self.lag_s
        self.position = max(self.position, shared.first)
        while len(out) < limit and self.position - shared.first < len(shared.records):
            data, written_at, origin = shared.records[self.position - shared.first]
            if written_at > horizon:
                break
            out.append(LogRecord(self.position, data, written_at, origin))
            self.position += 1
        return out

    def bounds(self) -> tuple[int, int]:
        """The end is that of the records visible at the lag (what Kafka would have
        delivered by now)."""
        shared, horizon = self.shared, self.clock() - self.lag_s
        end = shared.first + len(shared.records)
        while end > shared.first and shared.records[end - 1 - shared.first][1] > horizon:
            end -= 1
        return shared.first, end


class MemoryCheckpoints:
    """Checkpoints in a list (newest last), with the same lease rule as Redis."""

    def __init__(self, clock: Callable[[], float], keep: int = 2) -> None:
        self.clock = clock
        self.keep = keep
        self.saved: list[bytes] = []
        self._lease_until = float("-inf")

    def save(self, data: bytes) -> None:
        self.saved.append(data)
        del self.saved[: -self.keep]

    def newest_first(self) -> Iterator[bytes]:
        return iter(list(reversed(self.saved)))

    def claim(self, seconds: float) -> bool:
        now = self.clock()
        if now < self._lease_until:
            return False
        self._lease_until = now + 0.9 * seconds  # expires just before the holder's next turn
        return True


class MemoryMessage:
    """A message as the loop reads it (a :class:`~worker.transport.ports.Incoming`)."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_timestamp_ms", "_topic", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int,
        headers: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value = key, value
        self._timestamp_ms, self._headers = timestamp_ms, headers

    def error(self) -> KafkaError | None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)  # TIMESTAMP_CREATE_TIME

    def headers(self) -> list[tuple[str, Any]] | None:
        return self._headers


def _encoded(data: str | bytes | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


class MemoryKafka:
    """Topics as lists of partitions, and one consumer group over them.

    Keyed messages go to the partition Kafka's default partitioner picks. The group
    hands partitions to its live members by the range assignor; a member that joins,
    closes or crashes makes every member revoke and be assigned again on its next
    ``consume`` (the eager protocol), reading from the committed offsets.
    """

    def __init__(self, partitions: int = 4, clock: Callable[[], float] = time.time) -> None:
        self.partitions = partitions
        self.clock = clock
        self.topics: dict[str, list[list[MemoryMessage]]] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.members: list[MemorySource] = []
        self.generation = 0
        self.topic_ids: dict[str, str] = {}
        self._created = 0

    def topic(self, name: str) -> list[list[MemoryMessage]]:
        """The partitions of topic ``name`` (created on first use)."""
        if name not in self.topics:
            self._created += 1
            self.topic_ids[name] = f"memory-topic-{self._created}"
        return self.topics.setdefault(name, [[] for _ in range(self.partitions)])

    def topic_id(self, name: str) -> str:
        """The id of topic ``name`` (a :class:`~worker.transport.ports.TopicIds`), new for
        every creation as Kafka's topic UUID is."""
        self.topic(name)
        return self.topic_ids[name]

    def recreate(self, name: str) -> None:
        """Delete topic ``name`` and create it again: empty, with a new id, and with the
        group's committed offsets gone, as Kafka drops them with a deleted topic. The
        members revoke and are assigned again on their next ``consume``."""
        self.topics.pop(name, None)
        self.committed = {key: o for key, o in self.committed.items() if key[0] != name}
        for member in self.members:
            member.stored.clear()
        self.topic(name)
        self.generation += 1

    def append(
        self,
        topic: str,
        key: str | bytes | None,
        value: str | bytes | None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, Any]] | None = None,
    ) -> MemoryMessage:
        partitions = self.topic(topic)
        raw_key = _encoded(key)
        if partition is None:
            partition = kafka_partition(raw_key, len(partitions)) if raw_key else 0
        offset = len(partitions[partition])
        message = MemoryMessage(
            topic, partition, offset, raw_key, _encoded(value), int(self.clock() * 1000), headers
        )
        partitions[partition].append(message)
        return message

    def messages(self, topic: str) -> list[MemoryMessage]:
        """Every message of ``topic``, partition after partition."""
        return [message for partition in self.topic(topic) for message in partition]

    def source(self) -> MemorySource:
        """A new member of the group (it joins when it subscribes)."""
        return MemorySource(self)

    def sink(self) -> MemorySink:
        return MemorySink(self)

    def catalog_feed(self, topic: str) -> MemoryCatalogFeed:
        return MemoryCatalogFeed(self, topic)

    def _join(self, member: MemorySource) -> None:
        self.members.append(member)
        self.generation += 1

    def _leave(self, member: MemorySource) -> None:
        if member in self.members:
            self.members.remove(member)
            self.generation += 1

    def _share_of(self, member: MemorySource, topic: str) -> list[int]:
        shares = range_assignment(len(self.topic(topic)), len(self.members))
        return shares[self.members.index(member)]


class MemorySource:
    """One consumer of :class:`MemoryKafka`'s group (an :class:`~worker.transport.ports.
    EventSource`): offsets are stored by the loop and committed at every ``consume``, as
    librdkafka's auto-commit of stored offsets does in the background."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self.kafka = kafka
        self.topic_name = ""
        self.callbacks: dict[str, Callable[[Any, list[TopicPartition]], None] | None] = {}
        self.owned: list[int] = []
        self.positions: dict[int, int] = {}
        self.stored: dict[int, int] = {}
        self.paused: set[int] = set()
        self.generation = -1
        self.closed = False

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[Any, list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None,
        on_lost: Callable[[Any, list[TopicPartition]], None] | None = None,
    ) -> None:
        [self.topic_name] = topics
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.kafka._join(self)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[MemoryMessage]:
        self._commit_stored()
        self._rebalance_if_needed()
        out: list[MemoryMessage] = []
        partitions = self.kafka.topic(self.topic_name) if self.topic_name else []
        for partition in self.owned:
            if partition in self.paused:
                continue
            held = partitions[partition]
            at = self.positions[partition]
            taken = held[at : at + num_messages - len(out)]
            out += taken
            self.positions[partition] = at + len(taken)
        if not out and timeout > 0:
            time.sleep(timeout)
        return out

    def topic_id(self, topic: str) -> str:
        """The topic's current id (a :class:`~worker.transport.ports.TopicIds`)."""
        return self.kafka.topic_id(topic)

    def poll(self, timeout: float = -1) -> MemoryMessage | None:
        messages = self.consume(1, timeout)
        return messages[0] if messages else None

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic_name, p) for p in self.owned]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self.positions[partition.partition] = partition.offset

    def store_offsets(
        self, message: Any = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        for tp in offsets or []:
            if tp.partition not in self.owned:
                raise ValueError(f"{tp.topic}[{tp.partition}] is not assigned to this member")
            self.stored[tp.partition] = tp.offset

    def commit(self, *, asynchronous: Literal[False]) -> list[TopicPartition]:
        self._commit_stored()
        return self.assignment()

    def close(self) -> None:
        """Commit what is stored and leave the group, as ``Consumer.close`` does."""
        if not self.closed:
            self._commit_stored()
            self.closed = True
            self.kafka._leave(self)

    def crash(self) -> None:
        """Vanish without committing (SIGKILL): the group drops it after its session."""
        self.closed = True
        self.kafka._leave(self)

    def _commit_stored(self) -> None:
        for partition, offset in self.stored.items():
            self.kafka.committed[(self.topic_name, partition)] = offset
        self.stored.clear()

    def _rebalance_if_needed(self) -> None:
        if self.closed or not self.topic_name or self.generation == self.kafka.generation:
            return
        revoke, assign = self.callbacks.get("revoke"), self.callbacks.get("assign")
        if self.owned and revoke is not None:
            revoke(self, self.assignment())
        self._commit_stored()
        self.generation = self.kafka.generation
        self.owned = self.kafka._share_of(self, self.topic_name)
        self.positions = {p: self.kafka.committed.get((self.topic_name, p), 0) for p in self.owned}
        self.paused &= set(self.owned)
        if assign is not None:
            assign(self, self.assignment())


class MemorySink:
    """Outputs appended to :class:`MemoryKafka`'s topics (an :class:`~worker.transport.
    ports.OutputSink`); delivery reports are served by ``poll`` and ``flush``, as
    librdkafka serves them. Topics named in :attr:`failing` report every delivery failed."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self.kafka = kafka
        self.failing: set[str] = set()
        self._reports: list[tuple[Callable[[KafkaError | None, Any], None], Any]] = []

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        *,
        headers: list[tuple[str, Any]] | None = None,
        on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
    ) -> None:
        if topic in self.failing:
            report: Any = KafkaError(KafkaError._MSG_TIMED_OUT, "refused by the test")
        else:
            self.kafka.append(topic, key, value, headers=headers)
            report = None
        if on_delivery is not None:
            self._reports.append((on_delivery, report))

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for callback, error in reports:
            callback(error, None)
        return len(reports)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class MemoryCatalogFeed:
    """The catalog topic of :class:`MemoryKafka`, read whole (a :class:`~worker.
    transport.ports.CatalogFeed`)."""

    def __init__(self, kafka: MemoryKafka, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.positions: list[int] = []

    def assign(self) -> int:
        self.positions = [0] * len(self.kafka.topic(self.topic))
        return len(self.positions)

    def consume(self, limit: int, timeout_s: float) -> list[MemoryMessage]:
        out: list[MemoryMessage] = []
        for partition, held in enumerate(self.kafka.topic(self.topic)[: len(self.positions)]):
            taken = held[self.positions[partition] : self.positions[partition] + limit - len(out)]
            out += taken
            self.positions[partition] += len(taken)
        return out

    def caught_up(self) -> bool:
        held = self.kafka.topic(self.topic)
        return all(self.positions[p] >= len(held[p]) for p in range(len(self.positions)))

    def close(self) -> None:
        """Nothing to release."""


def _copy(state: UserState | None) -> UserState | None:
    """A copy whose later changes do not reach the stored state (interactions are frozen,
    so the lists are copied, not their items)."""
    if state is None:
        return state
    return dataclasses.replace(
        state,
        vector=state.vector.copy(),
        recent=list(state.recent),
        last_list=list(state.last_list),
        offsets=dict(state.offsets),
        sessions=list(state.sessions),
        shadow_lists=None if state.shadow_lists is None else dict(state.shadow_lists),
    )
