"""One user's state and its Redis hash encoding.

Everything here is bounded: a fixed-size float32 taste vector, at most ``recent_window``
recent interactions, at most K items of the last published list, a few counters, and the
Kafka offsets already applied (one per partition the user's events came from). Nothing
from the event's free-form context is kept: only item ids, types and times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "OFFSET_FIELD_PREFIX",
    "SESSIONS_PER_USER",
    "Interaction",
    "UserState",
    "UserWrite",
    "decode_user",
    "encode_user",
]

F32 = npt.NDArray[np.float32]

#: Hash fields ``o:<partition>`` hold the last Kafka offset applied from that partition.
OFFSET_FIELD_PREFIX = "o:"
#: Tokens of a user's latest sessions kept in their state, so that a ``forget`` can drop
#: them from the shared similar-sessions model (which itself knows no users). Older
#: sessions than these have usually left the model's ring already (docs/models.md).
SESSIONS_PER_USER = 16


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
    events: int = 0  # events applied, exactly once each
    last_seen: float = 0.0
    offsets: dict[int, int] = field(default_factory=dict)
    sessions: list[int] = field(default_factory=list)  # session tokens, latest last
    visit_at: float = 0.0  # time of the latest visit (an event of positive weight)

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


@dataclass(frozen=True, slots=True)
class UserWrite:
    """A user's new state to store; ``erase_first`` when a forget request preceded it."""

    state: UserState
    erase_first: bool = False


def encode_user(state: UserState) -> dict[str, bytes]:
    """Hash fields for ``HSET``; offsets go separately so the write script can guard them."""
    return {
        "v": state.vector.astype(np.float32).tobytes(),
        "r": orjson.dumps([[i.item_id, i.type, i.at] for i in state.recent]),
        "l": orjson.dumps(state.last_list),
        "n": str(state.events).encode(),
        "t": repr(state.last_seen).encode(),
        "s": orjson.dumps([state.visit_at, state.sessions]),
    }


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
    return UserState(
        user_id=user_id,
        vector=vector,
        recent=[Interaction(i, t, float(at)) for i, t, at in orjson.loads(fields.get(b"r", b"[]"))],
        last_list=list(orjson.loads(fields.get(b"l", b"[]"))),
        events=int(fields.get(b"n", b"0")),
        last_seen=float(fields.get(b"t", b"0")),
        offsets=offsets,
        sessions=[int(token) for token in sessions],
        visit_at=float(visit_at),
    )
