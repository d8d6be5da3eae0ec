"""The one place that talks to Redis.

Layout: one hash per user, ``<prefix>:{u:<user_id>}``; the ``{u:...}`` hash tag keeps any
future per-user keys in the same Redis Cluster slot, so one script updates them
atomically. Every key gets the idle TTL on each write.

Reads and writes are chunked pipelines: one round trip per micro-batch (per chunk of
``redis_chunk_size`` commands), never one per event. Writes go through a Lua script that
refuses a write whose Kafka offsets are at or below the ones already applied, so a batch
replayed after a crash or a rebalance cannot apply a user's events twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker.config import Settings
from worker.state.user import (
    OFFSET_FIELD_PREFIX,
    UserState,
    UserWrite,
    decode_user,
    encode_user,
)

__all__ = ["StoreUnavailable", "UserStore", "WriteOutcome", "connect_redis"]

# KEYS[1] = the user's hash
# ARGV[1] = idle TTL (s); ARGV[2] = "1" to erase the user first (a forget in this batch)
# ARGV[3] = n, then n pairs (offset field, offset), then (field, value) pairs of the state
_GUARDED_WRITE = """
local n = tonumber(ARGV[3])
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
else
  for i = 0, n - 1 do
    local applied = redis.call('HGET', KEYS[1], ARGV[4 + 2 * i])
    if applied and tonumber(applied) >= tonumber(ARGV[5 + 2 * i]) then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


class StoreUnavailable(RuntimeError):
    """Redis could not be reached after redis-py's own retries: pause, back off, retry."""


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    written: int
    stale: int  # refused by the offset guard: another writer had already applied them


def connect_redis(settings: Settings) -> redis.Redis:
    """A client with redis-py's own retry with backoff, timeouts and health checks."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 15,
        "client_name": settings.client_id,
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password.get_secret_value()
    return redis.Redis.from_url(settings.redis_url, **options)


class UserStore:
    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        observe_round_trip: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.client = client
        self.prefix = settings.redis_key_prefix
        self.ttl_s = settings.user_ttl_s
        self.chunk = settings.redis_chunk_size
        self.dim = settings.vector_dim
        self.observe_round_trip = observe_round_trip
        self._write_sha = client.register_script(_GUARDED_WRITE).sha

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:{{u:{user_id}}}"

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def read(self, user_ids: Sequence[str]) -> dict[str, UserState | None]:
        """Every user's state (None for new or erased users), one pipeline per chunk."""
        replies: list[Any] = []
        for chunk in _chunks(user_ids, self.chunk):
            pipe = self.client.pipeline(transaction=False)
            for user_id in chunk:
                pipe.hgetall(self.key(user_id))
            replies += self._execute(pipe)
        return {
            user_id: decode_user(user_id, fields, self.dim)
            for user_id, fields in zip(user_ids, replies, strict=True)
        }

    def write(self, writes: Sequence[UserWrite]) -> WriteOutcome:
        """Apply every user's new state, each atomically and guarded by its offsets."""
        results: list[Any] = []
        for chunk in _chunks(writes, self.chunk):
            try:
                results += self._execute(self._write_pipeline(chunk))
            except redis.exceptions.NoScriptError:
                # Redis lost its script cache (restart, SCRIPT FLUSH): no write of this
                # chunk ran, so load the script and send the chunk again.
                self.client.script_load(_GUARDED_WRITE)
                results += self._execute(self._write_pipeline(chunk))
        written = sum(1 for result in results if result == 1)
        return WriteOutcome(written=written, stale=len(results) - written)

    def _write_pipeline(self, writes: Sequence[UserWrite]) -> Any:
        """EVALSHA per user: redis-py's Script objects would check SCRIPT EXISTS first,
        an extra round trip per batch."""
        pipe = self.client.pipeline(transaction=False)
        for write in writes:
            state = write.state
            offsets = [
                value
                for partition, offset in sorted(state.offsets.items())
                for value in (f"{OFFSET_FIELD_PREFIX}{partition}", offset)
            ]
            fields = [value for pair in encode_user(state).items() for value in pair]
            args = [self.ttl_s, int(write.erase_first), len(state.offsets), *offsets, *fields]
            pipe.evalsha(self._write_sha, 1, self.key(state.user_id), *args)
        return pipe

    def erase(self, user_ids: Iterable[str]) -> int:
        """Delete every key of these users (a privacy request); returns keys removed."""
        keys = [self.key(user_id) for user_id in user_ids]
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        return sum(int(n) for n in self._execute(pipe))

    def keys_of(self, user_id: str) -> list[bytes]:
        """Every key that mentions the user's hash tag (SCAN, for verifying an erasure)."""
        pattern = f"{self.prefix}:{{u:{_glob_escape(user_id)}}}*"
        return list(self.client.scan_iter(match=pattern, count=1000))

    def _execute(self, pipe: Any) -> list[Any]:
        started = time.perf_counter()
        try:
            replies: list[Any] = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StoreUnavailable(f"Redis unreachable: {error}") from error
        self.observe_round_trip(time.perf_counter() - started)
        return replies


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
