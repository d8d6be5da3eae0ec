"""``tailor serve``: build the store, the trending cache and the app; run uvicorn.

The socket is bound and listening here, before uvicorn starts, so that port 0 (a free
port, for tests and benchmarks) can be logged as the port really taken (``serving on
http://HOST:PORT``) and a client that reads that line is never refused.
SIGTERM and SIGINT are uvicorn's: it stops accepting, finishes the requests in flight
and returns.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from types import FrameType

import uvicorn

from worker.config import Settings
from worker.metrics import ServeMetrics
from worker.redaction import redacted_url
from worker.serve.app import ServeContext, create_app
from worker.serve.trending import TrendingCache
from worker.state.store import (
    ListReader,
    RedisCheckpoints,
    StoreUnavailable,
    UserStore,
    connect_redis,
    connect_redis_async,
)

__all__ = ["add_serve_parser", "run_serve"]

log = logging.getLogger("tailor.serve")


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="answer HTTP requests for users' latest lists and trending items, from Redis",
        description="A read path without Kafka. GET /v1/users/{user_id}/recommendations "
        "returns the list last published for the user (the same JSON as the "
        "recommendations topic; stored by the workers while TAILOR_STORE_LISTS is on), 404 "
        "when none is stored; GET /v1/trending?country=&device=&hour=&limit= the top items "
        "of those segments, then overall, from the newest model checkpoint (looked for "
        "every TAILOR_SERVE_CHECKPOINT_REFRESH_S); GET /v1/trending/segments the segments "
        "there are. Also /healthz, /readyz (Redis answers and a checkpoint is loaded), "
        "/metrics, /openapi.json and /docs. Redis is the settings' (TAILOR_REDIS_URL, "
        "TAILOR_REDIS_KEY_PREFIX, TAILOR_REDIS_CLUSTER, TLS and ACL settings). Stops "
        "cleanly on SIGTERM or SIGINT.",
    )
    serve.add_argument(
        "--host", metavar="ADDRESS", help="listen on this address (default TAILOR_SERVE_HOST)"
    )
    serve.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help="listen on this port, 0 for a free one (default TAILOR_SERVE_PORT)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: one line per request costs more than "
        "answering it)",
    )


def run_serve(settings: Settings, args: argparse.Namespace) -> int:
    host = settings.serve_host if args.host is None else args.host
    port = settings.serve_port if args.port is None else args.port
    try:
        client = connect_redis(settings)
        store = UserStore(client, settings)
        store.check()
    except StoreUnavailable as error:
        log.critical("cannot start: %s", error)
        return 1
    metrics = ServeMetrics()
    checkpoints = RedisCheckpoints(client, settings, owner="serve")
    cache = TrendingCache(
        settings,
        checkpoints.newest_first,
        on_result=lambda result: metrics.checkpoint_loads.labels(result).inc(),
    )
    metrics.checkpoint_age.set_function(cache.age_s)
    lists = ListReader(connect_redis_async(settings), settings)
    app = create_app(ServeContext(settings, lists, cache, metrics))
    try:
        sock = _bind(host, port)
    except OSError as error:
        log.critical("cannot listen on %s:%d: %s", host, port, error)
        return 1
    cache.start()
    bound = sock.getsockname()[1]
    log.info(
        "serving on http://%s:%d (lists of Redis at %s, prefix %s; trending from %s, looked "
        "for every %g s)",
        host,
        bound,
        redacted_url(settings.redis_url),
        settings.redis_key_prefix,
        checkpoints.list_key,
        settings.serve_checkpoint_refresh_s,
    )
    config = uvicorn.Config(
        app, log_config=None, access_log=args.access_log, server_header=False, lifespan="off"
    )
    # uvicorn catches SIGTERM and SIGINT while it runs, then raises the signal again
    # for the handlers it found: these, so that a clean stop exits 0 like `tailor run`.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        cache.stop()
        sock.close()
    return 0


def _stopped(signum: int, _frame: FrameType | None) -> None:
    log.info("received %s: stopped serving", signal.Signals(signum).name)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # from here on connections wait in the backlog, not refused
    sock.set_inheritable(True)
    return sock
