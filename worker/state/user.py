"""One user's state and its Redis hash encoding.

Everything here is bounded: a fixed-size float32 taste vector, at most ``recent_window``
recent interactions, at most K items of the last published list (with one character per
item saying where it came from, for live quality), a few counters, and the
Kafka offsets already applied (one per partition the user's events came from) with the id
of the events topic they belong to, and, only while shadow variants are configured, each
shadow's latest list (at most its K item ids: what the user's next event is scored
against). Nothing from the event's free-form context is kept: only item ids, types and
times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "OFFSET_FIELD_PREFIX",
    "SESSIONS_PER_USER",
    "SHADOW_FIELD",
    "TOPIC_ID_FIELD",
    "Interaction",
    "UserState",
    "UserWrite",
    "decode_user",
    "encode_user",
    "other_topic",
]

F32 = npt.NDArray[np.float32]

#: Hash fields ``o:<partition>`` hold the last Kafka offset applied from that partition.
OFFSET_FIELD_PREFIX = "o:"
#: Hash field holding the events topic's id (Kafka's topic UUID, 22 base64 characters)
#: that the ``o:`` offsets were read from. Offsets count positions in one topic only: once
#: the topic is deleted and recreated (or the cluster migrated), offsets restart at 0 and
#: the old ones would make every new event look like a replay.
TOPIC_ID_FIELD = "i"
#: Tokens of a user's latest sessions kept in their state, so that a ``forget`` can drop
#: them from the shared similar-sessions model (which itself knows no users). Older
#: sessions than these have usually left the model's ring already (docs/models.md).
SESSIONS_PER_USER = 16
#: Hash field of the shadow variants' latest lists (JSON: name -> item ids); written only
#: while shadows are configured or the field exists, so without shadows no byte changes.
SHADOW_FIELD = "w"


def other_topic(held: str, given: str) -> bool:
    """Whether offsets kept under topic id ``held`` are void for events of ``given``.

    Only two known, different ids say so: an unknown id ("") counts as the same topic,
    so that what was written before ids were kept is not voided by an upgrade. The one
    rule for users' offsets and for the shared models' (:attr:`Recommender.contributed`).
    """
    return bool(held) and bool(given) and held != given


@dataclass(frozen=True, slots=True)
class Interaction:
    item_id: str
    type: str
    at: float  # epoch seconds


@dataclass(slots=True)
class UserState:
    user_id: str
    vector: F32
    recent: list[Interaction] = field(default_factory=list)
    last_list: list[str] = field(default_factory=list)
    #: one character per item of ``last_list``: its source (:mod:`worker.quality.sources`);
    #: "" in a state written before sources were kept
    last_sources: str = ""
    events: int = 0  # events applied, exactly once each
    last_seen: float = 0.0
    offsets: dict[int, int] = field(default_factory=dict)
    sessions: list[int] = field(default_factory=list)  # session tokens, latest last
    visit_at: float = 0.0  # time of the latest visit (an event of positive weight)
    #: id of the events topic ``offsets`` belong to; "" when unknown (a state written
    #: before ids were kept, or by a source that has none), which counts as "the same"
    topic_id: str = ""
    #: each shadow variant's latest list for this user (item ids, at most its K), by name;
    #: None when the state never held any (no field in Redis), {} to clear the field
    shadow_lists: dict[str, list[str]] | None = None

    def session_for(self, at: float, gap_s: float) -> int | None:
        """The open session's token at ``at``, or None when a new session starts."""
        if self.sessions and at - self.visit_at <= gap_s:
            return self.sessions[-1]
        return None

    def open_session(self, token: int) -> None:
        self.sessions.append(token)
        del self.sessions[:-SESSIONS_PER_USER]

    def remember(self, interaction: Interaction, window: int) -> None:
        self.recent.append(interaction)
        if len(self.recent) > window:
            del self.recent[: len(self.recent) - window]

    def already_applied(self, partition: int, offset: int) -> bool:
        return offset <= self.offsets.get(partition, -1)

    def adopt_topic(self, topic_id: str) -> bool:
        """Make ``offsets`` positions in topic ``topic_id``; True when they were another's.

        Offsets of another topic id say nothing about this one (a recreated topic starts
        again at 0), so they are dropped; the rest of the state is the user's own and is
        kept. An unknown id on either side counts as the same topic, so that states
        written before ids were kept are not voided by an upgrade.
        """
        if not topic_id:
            return False
        other = other_topic(self.topic_id, topic_id)
        if other:
            self.offsets.clear()
        self.topic_id = topic_id
        return other


@dataclass(frozen=True, slots=True)
class UserWrite:
    """A user's new state to store; ``erase_first`` when a forget request preceded it.

    ``listed`` is the list just published for the user, as the recommendations topic
    carries it (``Published.to_json``), stored beside the state in the same atomic write
    for ``tailor serve`` to answer from; empty: nothing stored (``TAILOR_STORE_LISTS``
    off, or a store that keeps no lists).
    """

    state: UserState
    erase_first: bool = False
    listed: bytes = b""


def encode_user(state: UserState) -> dict[str, bytes]:
    """Hash fields for ``HSET``; offsets go separately so the write script can guard them."""
    fields = {
        "v": state.vector.astype(np.float32).tobytes(),
        "r": orjson.dumps([[i.item_id, i.type, i.at] for i in state.recent]),
        "l": orjson.dumps(state.last_list),
        "q": state.last_sources.encode(),
        "n": str(state.events).encode(),
        "t": repr(state.last_seen).encode(),
        "s": orjson.dumps([state.visit_at, state.sessions]),
    }
    if state.topic_id:
        fields[TOPIC_ID_FIELD] = state.topic_id.encode()
    if state.shadow_lists is not None:
        fields[SHADOW_FIELD] = orjson.dumps(state.shadow_lists)
    return fields


def decode_user(user_id: str, fields: dict[bytes, bytes], dim: int) -> UserState | None:
    """Inverse of :func:`encode_user`; None for an empty hash (a new or erased user)."""
    if not fields:
        return None
    vector = np.frombuffer(fields.get(b"v", b""), dtype=np.float32).copy()
    if vector.size != dim:  # dimension changed by configuration: start the vector afresh
        vector = np.zeros(dim, dtype=np.float32)
    offsets = {
        int(key[len(OFFSET_FIELD_PREFIX) :]): int(value)
        for key, value in fields.items()
        if key.startswith(OFFSET_FIELD_PREFIX.encode())
    }
    visit_at, sessions = orjson.loads(fields.get(b"s", b"[0.0, []]"))
    shadows = fields.get(SHADOW_FIELD.encode())
    return UserState(
        user_id=user_id,
        vector=vector,
        recent=[Interaction(i, t, float(at)) for i, t, at in orjson.loads(fields.get(b"r", b"[]"))],
        last_list=list(orjson.loads(fields.get(b"l", b"[]"))),
        last_sources=fields.get(b"q", b"").decode(),
        events=int(fields.get(b"n", b"0")),
        last_seen=float(fields.get(b"t", b"0")),
        offsets=offsets,
        sessions=[int(token) for token in sessions],
        visit_at=float(visit_at),
        topic_id=fields.get(TOPIC_ID_FIELD.encode(), b"").decode(),
        shadow_lists=None if shadows is None else dict(orjson.loads(shadows)),
    )
