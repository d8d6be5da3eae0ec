"""The one place that talks to Redis.

Layout: one hash per user, ``<prefix>:{u:<user_id>}``, and beside it the list last
published for the user, ``<prefix>:{u:<user_id>}:list`` (what ``tailor serve`` answers
from); the ``{u:...}`` hash tag keeps a user's keys in the same Redis Cluster slot, so one
script updates them atomically. Every key gets the idle TTL on each write.

The same code runs on one Redis server and on a Redis Cluster (:func:`connect_redis` picks
the client): every command names one key or one hash tag, pipelines are not transactions
(redis-py's cluster pipeline splits them by node), the Lua script touches only its
``KEYS`` (one user's two keys, one slot), and SCAN goes to every master.

Reads and writes are chunked pipelines: one round trip per micro-batch (per chunk of
``redis_chunk_size`` commands), never one per event. Writes go through a Lua script that
refuses a write whose Kafka offsets are at or below the ones already applied, so a batch
replayed after a crash or a rebalance cannot apply a user's events twice; offsets stored
under another id of the events topic (deleted and recreated) are dropped instead.
"""

from __future__ import annotations

import ssl
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry

from worker.config import ENV_PREFIX, Settings
from worker.redaction import redacted_url
from worker.state.user import (
    OFFSET_FIELD_PREFIX,
    TOPIC_ID_FIELD,
    UserState,
    UserWrite,
    decode_user,
    encode_user,
)

__all__ = [
    "REDIS_ERRORS",
    "AsyncRedisClient",
    "ListReader",
    "RedisCheckpoints",
    "RedisClient",
    "StateStore",
    "StoreRefused",
    "StoreUnavailable",
    "UserStore",
    "WriteOutcome",
    "connect_redis",
    "connect_redis_async",
    "explain_redis_error",
    "redacted_url",
]

# KEYS[1] = the user's hash; KEYS[2] = the user's latest published list (same hash tag)
# ARGV[1] = idle TTL (s); ARGV[2] = "1" to erase the user first (a forget in this batch)
# ARGV[3] = the events topic id the offsets belong to ("" when unknown)
# ARGV[4] = the list to store ("" = none: the stored one, if any, stays until its TTL)
# ARGV[5] = n, then n pairs (offset field, offset), then (field, value) pairs of the state
# Offsets (fields o:*) stored under another topic id (field i) are void: they are deleted
# instead of guarding, since a recreated topic numbers its messages from 0 again. A write
# the guard refuses stores no list either: the list and the state stay of one batch.
_GUARDED_WRITE = """
local n = tonumber(ARGV[5])
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  local topic = redis.call('HGET', KEYS[1], 'i')
  if topic and ARGV[3] ~= '' and topic ~= ARGV[3] then
    for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
      if string.sub(name, 1, 2) == 'o:' then
        redis.call('HDEL', KEYS[1], name)
      end
    end
  else
    for i = 0, n - 1 do
      local applied = redis.call('HGET', KEYS[1], ARGV[6 + 2 * i])
      if applied and tonumber(applied) >= tonumber(ARGV[7 + 2 * i]) then
        return 0
      end
    end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', tonumber(ARGV[1]))
end
return 1
"""
assert (TOPIC_ID_FIELD, OFFSET_FIELD_PREFIX) == ("i", "o:"), "the script names both fields"


#: What :func:`connect_redis` returns: one server's client, or the cluster client.
RedisClient: TypeAlias = redis.Redis | RedisCluster
#: What :func:`connect_redis_async` returns, for ``tailor serve``'s request handlers.
AsyncRedisClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

#: Errors that mean "not now" rather than "no": a node away, a failover under way (the
#: cluster client retries them itself first, and refreshes its slot map on MOVED).
#: ClusterDownError and TryAgainError are ResponseErrors, so they must be told apart
#: before a ResponseError is taken for a refusal; RedisClusterException is what the
#: cluster client raises when no node it knows answers (not a RedisError at all).
_TRANSIENT: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)


#: Whatever a Redis client may raise (RedisClusterException is not a RedisError), for
#: callers outside this module that read through it and must not die of an outage.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


class StateStore(Protocol):
    """Where per-user state lives: Redis (:class:`UserStore`), or a dict in
    :mod:`worker.testing` for the evaluation harness and unit tests."""

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` saying what is wrong, else return."""
        ...

    def read(self, user_ids: Sequence[str]) -> Mapping[str, UserState | None]: ...

    def write(self, writes: Sequence[UserWrite]) -> WriteOutcome: ...

    def erase(self, user_ids: Sequence[str]) -> int: ...


class StoreUnavailable(RuntimeError):
    """Redis could not be reached after redis-py's own retries: pause, back off, retry."""


class StoreRefused(RuntimeError):
    """Redis answered but refused a command (an ACL change, maxmemory reached): waiting
    does not help, so the worker stops without committing the batch, saying why."""


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    written: int
    stale: int  # refused by the offset guard: another writer had already applied them


def _user_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{u:{user_id}}}"


def _list_key(prefix: str, user_id: str) -> str:
    return f"{_user_key(prefix, user_id)}:list"


_LIST_COMPRESSION = 1  # zlib's fastest level: 2.6 KB of JSON to ~550 bytes in ~15 us


def _pack_list(body: bytes) -> bytes:
    """A published list as it is stored: zlib (the JSON repeats its keys and reasons)."""
    return zlib.compress(body, _LIST_COMPRESSION)


def _unpack_list(value: bytes) -> bytes:
    """The list's JSON as the topic carried it; a value that is JSON already (stored
    before lists were compressed) is returned as it is: zlib output never starts with
    ``{``."""
    return value if value.startswith(b"{") else zlib.decompress(value)


def connect_redis(settings: Settings) -> RedisClient:
    """The one place a Redis client is built: redis-py's own retry with backoff, timeouts,
    health checks, client name, ACL user and TLS.

    With ``TAILOR_REDIS_CLUSTER`` or a ``+cluster`` URL it is redis-py's
    :class:`~redis.cluster.RedisCluster`, given the same options where it takes them: it
    retries (with the same backoff) at the cluster level, where a retry can follow a
    MOVED to the new master, so its connections take no retry or health-check options of
    their own. It asks a node for the slot map as it is built, so a cluster that cannot
    be reached raises :class:`StoreUnavailable` here, saying why.
    """
    options = _client_options(settings)
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    if not settings.redis_is_cluster:
        return redis.Redis.from_url(
            settings.redis_url,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=15,
            **options,
        )
    try:
        return RedisCluster.from_url(_node_url(settings.redis_url), retry=retry, **options)
    except (redis.RedisError, RedisClusterException) as error:
        raise StoreUnavailable(explain_redis_error(error, settings)) from error


def _client_options(settings: Settings) -> dict[str, Any]:
    """What every Redis client of Tailor is given: timeouts, name, ACL user, TLS."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "client_name": settings.client_id,
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password.get_secret_value()
    options.update(_tls_options(settings))
    return options


def connect_redis_async(settings: Settings) -> AsyncRedisClient:
    """The asyncio twin of :func:`connect_redis` (same options, retry, TLS and ACL user),
    for ``tailor serve``'s handlers: a GET awaited on the event loop costs no thread
    hand-off. It connects on its first command."""
    options = _client_options(settings)
    retry = redis.asyncio.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    if not settings.redis_is_cluster:
        return redis.asyncio.Redis.from_url(
            settings.redis_url,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=15,
            **options,
        )
    return redis.asyncio.cluster.RedisCluster.from_url(
        _node_url(settings.redis_url), retry=retry, **options
    )


def _node_url(url: str) -> str:
    """``redis+cluster://node:port`` as redis-py reads it: ``redis://node:port``."""
    scheme, _, rest = url.partition("://")
    return f"{scheme.removesuffix('+cluster')}://{rest}"


def _tls_options(settings: Settings) -> dict[str, Any]:
    """CA, client certificate and key for ``rediss://`` (Settings refuses them otherwise).

    Verification of the server's certificate and host name is spelled out rather than left
    to redis-py's defaults, which were laxer in older releases.
    """
    if not settings.redis_tls:
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    for key, path in (
        ("ssl_ca_certs", settings.redis_ssl_ca_certs),
        ("ssl_certfile", settings.redis_ssl_certfile),
        ("ssl_keyfile", settings.redis_ssl_keyfile),
    ):
        if path is not None:
            options[key] = str(path)
    return options


def explain_redis_error(error: redis.RedisError | RedisClusterException, settings: Settings) -> str:
    """One line on why Redis cannot be used, naming the settings to look at.

    redis-py's own messages do not say which user was refused, and a TLS failure surfaces
    as a generic ConnectionError whose SSL reason sits in ``__context__``.
    """
    where = f"Redis at {redacted_url(settings.redis_url)}"
    cluster_setting = f"{ENV_PREFIX}REDIS_CLUSTER"
    if isinstance(error, AskError):  # MOVED or ASK: only a one-server client sees them
        return (
            f"{where} is a Redis Cluster node and sends keys to other nodes ({error}); set "
            f"{cluster_setting}=true or use a redis+cluster:// {ENV_PREFIX}REDIS_URL"
        )
    if isinstance(error, RedisClusterException) and "not enabled" in str(error):
        # redis-py says so for any error reply to CLUSTER SLOTS, a NOPERM included
        return (
            f"{where} did not give its slot map ({error}): it is not a Redis Cluster node "
            f"(then unset {cluster_setting} and use a redis:// or rediss:// "
            f"{ENV_PREFIX}REDIS_URL), or the user may not run CLUSTER SLOTS (README, Security)"
        )
    if isinstance(error, redis.AuthenticationError):
        user = settings.redis_username or urlsplit(settings.redis_url).username or "default"
        return (
            f"{where} refused user {user!r}: authentication failed ({error}); "
            f"check {ENV_PREFIX}REDIS_USERNAME and {ENV_PREFIX}REDIS_PASSWORD"
        )
    if isinstance(error, redis.exceptions.NoPermissionError):
        user = settings.redis_username or urlsplit(settings.redis_url).username or "default"
        return (
            f"{where}: user {user!r} lacks a permission Tailor needs ({error}); check its "
            "ACL rules (docs: README, Security)"
        )
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return (
            f"{where} is out of memory and refuses writes ({error}); raise its maxmemory or "
            f"lower {ENV_PREFIX}USER_TTL_S, and keep maxmemory-policy noeviction (an evicted "
            "user state loses the offsets that keep replays from applying twice)"
        )
    if isinstance(error, ClusterDownError | TryAgainError):
        return f"{where}: the cluster cannot serve now ({error}); a failover may be under way"
    if isinstance(error, redis.ResponseError):
        return f"{where} refused a command: {error}"
    tls = _ssl_reason(error)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return (
            f"{where}: TLS certificate of the server not trusted ({tls.verify_message}); "
            f"check {ENV_PREFIX}REDIS_SSL_CA_CERTS"
        )
    if tls is not None:
        return (
            f"{where}: TLS connection failed ({tls}); if the server requires client "
            f"certificates, check {ENV_PREFIX}REDIS_SSL_CERTFILE and {ENV_PREFIX}REDIS_SSL_KEYFILE"
        )
    return f"cannot reach {where}: {error} (check {ENV_PREFIX}REDIS_URL)"


def _ssl_reason(error: BaseException) -> ssl.SSLError | None:
    """The SSL error behind a redis-py connection error, if one is in its chain."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class UserStore:
    def __init__(
        self,
        client: RedisClient,
        settings: Settings,
        observe_round_trip: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.prefix = settings.redis_key_prefix
        self.ttl_s = settings.user_ttl_s
        self.chunk = settings.redis_chunk_size
        self.dim = settings.vector_dim
        self.observe_round_trip = observe_round_trip
        self._write_sha = client.register_script(_GUARDED_WRITE).sha

    def key(self, user_id: str) -> str:
        return _user_key(self.prefix, user_id)

    def list_key(self, user_id: str) -> str:
        """The user's latest published list (a string key beside the hash, same hash tag).

        Not a field of the hash: the worker reads every user's hash whole (HGETALL) each
        batch and has no use for the list's scores and reasons, which would triple what
        that read carries.
        """
        return _list_key(self.prefix, user_id)

    def check(self) -> None:
        """One PING at start-up; raises :class:`StoreUnavailable` saying what failed.

        :meth:`ping` only answers yes or no, which would report a wrong password or an
        untrusted certificate as "cannot reach".
        """
        try:
            self.client.ping()
        except (redis.RedisError, RedisClusterException) as error:
            raise StoreUnavailable(explain_redis_error(error, self.settings)) from error

    def ping(self) -> bool:
        """On a cluster, every master must answer."""
        try:
            return bool(self.client.ping())
        except (redis.RedisError, RedisClusterException):
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
            replies = self._execute(self._write_pipeline(chunk))
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # A server lost its script cache (a restart, SCRIPT FLUSH, or a replica
                # promoted by a cluster failover: scripts are not replicated). Those writes
                # did not run, the others did: load the script (on every master) and send
                # only those again.
                self._load_script()
                again = self._execute(self._write_pipeline([chunk[i] for i in missing]))
                for index, reply in zip(missing, again, strict=True):
                    replies[index] = reply
                self._raise_first_error(replies)
            results += replies
        written = sum(1 for result in results if result == 1)
        return WriteOutcome(written=written, stale=len(results) - written)

    def _load_script(self) -> None:
        try:
            self.client.script_load(_GUARDED_WRITE)
        except _TRANSIENT as error:
            raise StoreUnavailable(f"Redis unreachable: {error}") from error
        except redis.ResponseError as error:
            raise StoreRefused(explain_redis_error(error, self.settings)) from error

    def _write_pipeline(self, writes: Sequence[UserWrite]) -> Any:
        """EVALSHA per user: redis-py's Script objects would check SCRIPT EXISTS first,
        an extra round trip per batch.

        Sent as a raw command: redis-py's cluster pipeline blocks its ``evalsha`` method
        (redis/redis-py#2914, lifted after 8.1) though it routes a raw EVALSHA by its keys
        (one user's two, one slot) like any keyed command; a node that lacks the script
        answers NOSCRIPT, which :meth:`write` mends."""
        pipe = self.client.pipeline(transaction=False)
        for write in writes:
            state = write.state
            offsets = [
                value
                for partition, offset in sorted(state.offsets.items())
                for value in (f"{OFFSET_FIELD_PREFIX}{partition}", offset)
            ]
            fields = [value for pair in encode_user(state).items() for value in pair]
            args = [
                self.ttl_s,
                int(write.erase_first),
                state.topic_id,
                _pack_list(write.listed) if write.listed else b"",
                len(state.offsets),
                *offsets,
                *fields,
            ]
            user = state.user_id
            pipe.execute_command(
                "EVALSHA", self._write_sha, 2, self.key(user), self.list_key(user), *args
            )
        return pipe

    def erase(self, user_ids: Iterable[str]) -> int:
        """Delete every key of these users (a privacy request); returns keys removed.

        The stored list goes too whatever ``TAILOR_STORE_LISTS`` says now: it may have
        been written while it was on. One DEL per key, as every command here names one.
        """
        keys = [key for user_id in user_ids for key in (self.key(user_id), self.list_key(user_id))]
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        return sum(int(n) for n in self._execute(pipe))

    def latest_list(self, user_id: str) -> bytes | None:
        """The list last published for the user, as the recommendations topic carried it;
        None when none is stored (an unknown, erased or idle-expired user, or storing off).

        One GET, for ``tailor serve``; errors raise :class:`StoreUnavailable` or
        :class:`StoreRefused` as for the worker.
        """
        try:
            value = self.client.get(self.list_key(user_id))
        except _TRANSIENT as error:
            raise StoreUnavailable(f"Redis unreachable: {error}") from error
        except redis.ResponseError as error:
            raise StoreRefused(explain_redis_error(error, self.settings)) from error
        return None if value is None else _unpack_list(bytes(value))  # type: ignore[arg-type]

    def keys_of(self, user_id: str) -> list[bytes]:
        """Every key that mentions the user's hash tag (SCAN, for verifying an erasure)."""
        pattern = f"{self.prefix}:{{u:{_glob_escape(user_id)}}}*"
        return list(self.client.scan_iter(match=pattern, count=1000))

    def _execute(self, pipe: Any) -> list[Any]:
        """Run a pipeline; an error reply raises, but for a missing script, which
        :meth:`write` mends.

        Errors come back per command (``raise_on_error=False``): on a cluster the pipeline
        is split by node, so some commands may have run while others failed, and the
        caller must know which.
        """
        started = time.perf_counter()
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except _TRANSIENT as error:
            raise StoreUnavailable(f"Redis unreachable: {error}") from error
        except redis.ResponseError as error:
            raise StoreRefused(explain_redis_error(error, self.settings)) from error
        self.observe_round_trip(time.perf_counter() - started)
        self._raise_first_error(replies, allow=NoScriptError)
        return replies

    def _raise_first_error(
        self, replies: Sequence[Any], allow: type[Exception] | None = None
    ) -> None:
        """Raise :class:`StoreUnavailable` or :class:`StoreRefused` for an error reply."""
        for reply in replies:
            if not isinstance(reply, Exception) or (allow and isinstance(reply, allow)):
                continue
            if isinstance(reply, _TRANSIENT):
                raise StoreUnavailable(f"Redis unreachable: {reply}") from reply
            if isinstance(reply, redis.RedisError):
                raise StoreRefused(explain_redis_error(reply, self.settings)) from reply
            raise reply


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


class ListReader:
    """Users' latest lists as ``tailor serve`` reads them: one awaited GET each."""

    def __init__(self, client: AsyncRedisClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.prefix = settings.redis_key_prefix

    async def latest(self, user_id: str) -> bytes | None:
        """The list last published for the user, as the topic carried it; None when none
        is stored. Raises :class:`StoreUnavailable` or :class:`StoreRefused`."""
        try:
            value = await self.client.get(_list_key(self.prefix, user_id))
        except _TRANSIENT as error:
            raise StoreUnavailable(f"Redis unreachable: {error}") from error
        except redis.ResponseError as error:
            raise StoreRefused(explain_redis_error(error, self.settings)) from error
        return None if value is None else _unpack_list(bytes(value))  # type: ignore[arg-type]

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (redis.RedisError, RedisClusterException):
            return False

    async def close(self) -> None:
        await self.client.aclose()


class RedisCheckpoints:
    """Model checkpoints in Redis: a list, newest first, trimmed to the newest ``keep``.

    Keys ``<prefix>:{models}:checkpoints`` (the list) and ``<prefix>:{models}:lease`` (who
    writes the next one: ``SET NX PX``, so with N workers one checkpoint is written per
    interval, not N). The ``{models}`` hash tag puts both in one Redis Cluster slot, so
    the LPUSH and LTRIM of :meth:`save` are one transaction there too, as can be any
    later command that names both. No TTL: the list is bounded by ``keep`` and must
    outlive any outage of the workers. A checkpoint holds no user data (docs/models.md).

    Checkpoints that workers wrote before the keys had the hash tag, under
    ``<prefix>:models:checkpoints``, are read after the newer ones: a worker upgraded
    from then starts from them rather than from what the model topic still retains.
    """

    def __init__(self, client: RedisClient, settings: Settings, owner: str) -> None:
        self.client = client
        self.keep = settings.model_checkpoints_kept
        self.list_key = f"{settings.redis_key_prefix}:{{models}}:checkpoints"
        self.lease_key = f"{settings.redis_key_prefix}:{{models}}:lease"
        self.legacy_list_key = f"{settings.redis_key_prefix}:models:checkpoints"
        self.owner = owner

    def save(self, data: bytes) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.list_key, data)
        pipe.ltrim(self.list_key, 0, self.keep - 1)
        pipe.execute()

    def newest_first(self) -> Iterator[bytes]:
        """One checkpoint at a time (each may be tens of MB): the next only if asked."""
        for key in (self.list_key, self.legacy_list_key):
            for index in range(self.keep):
                data = self.client.lindex(key, index)
                if data is None:
                    break
                yield bytes(data)  # type: ignore[arg-type]

    def claim(self, seconds: float) -> bool:
        """The lease expires just before its holder's next turn, so it can take it again."""
        lease_ms = max(1, int(seconds * 900))
        return bool(self.client.set(self.lease_key, self.owner, nx=True, px=lease_ms))
