"""A user's state and its Redis hash encoding.

Why: the hash is what survives a restart; a field that does not round-trip (vector
precision, offsets, recent history) silently resets users or breaks exactly-once.
"""

from __future__ import annotations

import numpy as np

from worker.state.user import (
    OFFSET_FIELD_PREFIX,
    TOPIC_ID_FIELD,
    Interaction,
    UserState,
    decode_user,
    encode_user,
)

DIM = 8


def _state() -> UserState:
    rng = np.random.default_rng(3)
    return UserState(
        user_id="u-17850",
        vector=rng.standard_normal(DIM).astype(np.float32),
        recent=[
            Interaction("85123A", "click", 1_764_062_760.25),
            Interaction("71053", "purchase", 1_764_062_900.0),
        ],
        last_list=["22423", "85123A", "47566"],
        events=42,
        last_seen=1_764_062_900.123456,
        offsets={0: 17, 3: 1_000_000_000_001},
        topic_id="k3bFq1ZQSjG5WxV3cX9tZw",
    )


def _as_redis(state: UserState) -> dict[bytes, bytes]:
    """HGETALL's reply: bytes keys, the state's fields plus the ``o:<p>`` offsets."""
    fields = {key.encode(): value for key, value in encode_user(state).items()}
    for partition, offset in state.offsets.items():
        fields[f"{OFFSET_FIELD_PREFIX}{partition}".encode()] = str(offset).encode()
    return fields


def test_round_trip() -> None:
    state = _state()
    decoded = decode_user(state.user_id, _as_redis(state), DIM)
    assert decoded is not None
    assert decoded.user_id == state.user_id
    assert decoded.vector.dtype == np.float32
    assert np.array_equal(decoded.vector, state.vector)
    assert decoded.recent == state.recent
    assert decoded.last_list == state.last_list
    assert decoded.events == 42
    assert decoded.last_seen == state.last_seen
    assert decoded.offsets == {0: 17, 3: 1_000_000_000_001}
    assert decoded.topic_id == "k3bFq1ZQSjG5WxV3cX9tZw"


def test_vector_is_stored_as_float32_bytes() -> None:
    state = _state()
    encoded = encode_user(state)
    assert len(encoded["v"]) == 4 * DIM
    assert np.array_equal(np.frombuffer(encoded["v"], dtype=np.float32), state.vector)
    state.vector = state.vector.astype(np.float64)  # encoding narrows whatever it is given
    assert len(encode_user(state)["v"]) == 4 * DIM


def test_offsets_are_not_in_the_encoded_fields() -> None:
    """They are written separately so the guarded write script can compare them."""
    encoded = encode_user(_state())
    assert not [key for key in encoded if key.startswith(OFFSET_FIELD_PREFIX)]


def test_decoded_vector_is_writable() -> None:
    state = _state()
    decoded = decode_user(state.user_id, _as_redis(state), DIM)
    assert decoded is not None
    decoded.vector += 1.0  # frombuffer alone would be read-only
    assert decoded.vector[0] == state.vector[0] + 1.0


def test_empty_hash_is_none() -> None:
    assert decode_user("u", {}, DIM) is None


def test_changed_dimension_starts_the_vector_afresh() -> None:
    state = _state()
    decoded = decode_user(state.user_id, _as_redis(state), DIM * 2)
    assert decoded is not None
    assert decoded.vector.shape == (DIM * 2,)
    assert not decoded.vector.any()
    assert decoded.events == 42  # the rest of the state survives


def test_minimal_hash_decodes_with_defaults() -> None:
    decoded = decode_user("u", {b"o:2": b"5"}, DIM)
    assert decoded is not None
    assert decoded.offsets == {2: 5}
    assert decoded.recent == []
    assert decoded.last_list == []
    assert decoded.events == 0
    assert decoded.vector.shape == (DIM,)
    assert decoded.already_applied(2, 5)
    assert not decoded.already_applied(2, 6)
    assert not decoded.already_applied(0, 0)


def test_remember_bounds_the_recent_window() -> None:
    state = UserState(user_id="u", vector=np.zeros(DIM, dtype=np.float32))
    for n in range(10):
        state.remember(Interaction(f"i{n}", "view", float(n)), window=3)
        assert len(state.recent) <= 3
    assert [i.item_id for i in state.recent] == ["i7", "i8", "i9"]
    state.remember(Interaction("i10", "view", 10.0), window=1)
    assert [i.item_id for i in state.recent] == ["i10"]


def test_topic_id_is_one_small_field_and_absent_when_unknown() -> None:
    state = _state()
    assert encode_user(state)[TOPIC_ID_FIELD] == b"k3bFq1ZQSjG5WxV3cX9tZw"
    state.topic_id = ""
    assert TOPIC_ID_FIELD not in encode_user(state)


def test_a_state_written_before_topic_ids_has_none() -> None:
    decoded = decode_user("u", {b"o:2": b"5", b"n": b"3"}, DIM)
    assert decoded is not None
    assert decoded.topic_id == ""


def test_offsets_of_another_topic_id_are_void_and_the_rest_is_kept() -> None:
    state = _state()
    assert state.adopt_topic("another-id")
    assert state.offsets == {}
    assert state.topic_id == "another-id"
    assert (state.events, len(state.recent)) == (42, 2)
    assert not state.already_applied(0, 0)


def test_same_or_unknown_topic_ids_keep_the_offsets() -> None:
    state = _state()
    assert not state.adopt_topic(state.topic_id)
    assert not state.adopt_topic("")  # the batch's id unknown: nothing to compare
    assert state.offsets == {0: 17, 3: 1_000_000_000_001}
    state.topic_id = ""  # stored before ids were kept: an upgrade must not void it
    assert not state.adopt_topic("k3bFq1ZQSjG5WxV3cX9tZw")
    assert state.offsets == {0: 17, 3: 1_000_000_000_001}
    assert state.topic_id == "k3bFq1ZQSjG5WxV3cX9tZw"
