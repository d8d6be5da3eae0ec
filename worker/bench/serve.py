"""``tailor bench serve``: the latency of ``tailor serve`` answering a stored list.

Stores ``--users`` lists in Redis under a prefix of its own, shaped as the worker stores
them (the JSON of the recommendations topic: K items with scores and reasons, written by
:meth:`~worker.state.store.UserStore.write` beside a user state), starts ``tailor serve``
as its own process (as an operator would) on a free port, and times ``--requests`` GETs
of random users' lists from ``--clients`` keep-alive connections, after an untimed
warm-up. The time is the client's: from sending the request to the last byte of the
answer, Python's HTTP client included, so the server's own share is smaller. It also
reads Redis's ``MEMORY USAGE`` of the stored list and of the user's hash: what storing
lists adds per user. Keys are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import orjson

from worker.argtypes import positive_float, positive_int
from worker.bench.common import BenchError, Json, chunks, percentiles
from worker.config import Settings
from worker.recommend.core import Published
from worker.state.store import UserStore, connect_redis
from worker.state.user import Interaction, UserState, UserWrite

__all__ = [
    "ServeOptions",
    "render",
    "run_serve_bench",
    "serve_bench_command",
    "serve_bench_parser",
]

_REASONS = (
    "viewed together with {item}",
    "matches your taste in category Home > Lighting",
    "people whose visits looked like yours went on to {item}",
    "trending in your country (NL)",
)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    users: int = 10_000
    requests: int = 20_000
    warmup: int = 2_000
    clients: int = 1
    keep: bool = False
    timeout_s: float = 120.0
    seed: int = 7


def serve_bench_parser() -> argparse.ArgumentParser:
    """The options of ``tailor bench serve`` (parsed here, not in ``worker.cli``)."""
    serve = argparse.ArgumentParser(
        prog="tailor bench serve",
        description="Store --users lists in Redis (TAILOR_REDIS_URL, under a key prefix of "
        "its own) as the worker stores them (TAILOR_TOP_K items with scores and reasons), "
        "start `tailor serve` as its own process on a free port, and time --requests GETs "
        "of /v1/users/{user_id}/recommendations for random users from --clients keep-alive "
        "connections, after --warmup untimed ones. Prints p50/p95/p99/max in ms as the "
        "client sees them, requests/s, and Redis's MEMORY USAGE of a stored list and of a "
        "user's hash. The keys are deleted afterwards unless --keep.",
    )
    serve.add_argument(
        "--users", type=positive_int, default=10_000, help="lists stored (default 10000)"
    )
    serve.add_argument(
        "--requests", type=positive_int, default=20_000, help="timed requests (default 20000)"
    )
    serve.add_argument(
        "--warmup", type=positive_int, default=2_000, help="untimed requests first (default 2000)"
    )
    serve.add_argument(
        "--clients",
        type=positive_int,
        default=1,
        help="concurrent keep-alive connections, one thread each (default 1)",
    )
    serve.add_argument("--seed", type=int, default=7, help="seed of users and lists (default 7)")
    serve.add_argument(
        "--timeout",
        type=positive_float,
        default=120.0,
        metavar="SECONDS",
        help="give up when the server has not started after this long (default 120)",
    )
    serve.add_argument("--keep", action="store_true", help="keep the lists in Redis")
    serve.add_argument(
        "--json", type=Path, metavar="OUT", help="also write the measured numbers as JSON here"
    )
    return serve


def serve_bench_command(settings: Settings, argv: list[str]) -> int:
    """What ``tailor bench serve`` runs: measure, print, optionally write JSON."""
    args = serve_bench_parser().parse_args(argv)
    options = ServeOptions(
        users=args.users,
        requests=args.requests,
        warmup=args.warmup,
        clients=args.clients,
        keep=args.keep,
        timeout_s=args.timeout,
        seed=args.seed,
    )
    try:
        result = run_serve_bench(settings, options)
    except BenchError as error:
        print(f"tailor bench: {error}", file=sys.stderr)
        return 1
    print(render(result))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def run_serve_bench(settings: Settings, options: ServeOptions) -> Json:
    settings = settings.in_namespace(f"bserve{uuid.uuid4().hex[:6]}")
    store = UserStore(connect_redis(settings), settings)
    users = [f"bench-user-{n:07d}" for n in range(options.users)]
    body_bytes = _store_lists(store, settings, users, options.seed)
    memory = _memory_usage(store, users[: min(200, len(users))])
    try:
        with TemporaryDirectory() as directory:
            log = Path(directory) / "serve.log"
            with _serve_process(settings, log, options.timeout_s) as address:
                rng = np.random.default_rng(options.seed)
                picks = rng.integers(0, len(users), options.warmup + options.requests)
                warm, timed = picks[: options.warmup], picks[options.warmup :]
                _hammer(address, [users[int(n)] for n in warm], options.clients)
                before = _server_buckets(address)
                started = time.perf_counter()
                latencies = _hammer(address, [users[int(n)] for n in timed], options.clients)
                elapsed = time.perf_counter() - started
                after = _server_buckets(address)
                missing = _hammer(address, ["bench-nobody"] * 1000, 1)
    finally:
        if not options.keep:
            _delete(store, settings)
    return {
        "bench": "serve",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "users": options.users,
        "requests": options.requests,
        "clients": options.clients,
        "top_k": settings.top_k,
        "list_json_bytes": body_bytes,
        "stored_list_ms": {k: v * 1000 for k, v in percentiles(latencies).items()},
        "unknown_user_ms": {k: v * 1000 for k, v in percentiles(missing).items()},
        "requests_per_s": options.requests / elapsed,
        "server_side": _shares(before, after),
        "load_average": list(os.getloadavg()),
        "redis_bytes_per_user": memory,
    }


def render(result: Json) -> str:
    lines = [
        f"tailor serve: {result['requests']} GETs of stored lists ({result['top_k']} items, "
        f"{result['list_json_bytes']} bytes of JSON) over {result['users']} users, "
        f"{result['clients']} client(s)",
    ]
    for name, label in (("stored_list_ms", "stored list"), ("unknown_user_ms", "404 (none)")):
        p = result[name]
        lines.append(
            f"  {label:<12} p50 {p['p50']:.2f} ms  p95 {p['p95']:.2f} ms  p99 {p['p99']:.2f} ms"
            f"  max {p['max']:.2f} ms"
        )
    lines.append(f"  {result['requests_per_s']:.0f} requests/s")
    shares = result["server_side"]
    lines.append(
        "  server side (tailor_serve_request_seconds): "
        + ", ".join(f"{share:.2%} within {bound} ms" for bound, share in shares.items())
    )
    load = result["load_average"]
    lines.append(f"  load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    memory = result["redis_bytes_per_user"]
    lines.append(
        f"  Redis MEMORY USAGE per user: list {memory['list']:.0f} B, state hash "
        f"{memory['state']:.0f} B (the list adds {memory['list_share']:.0%})"
    )
    machine = result["machine"]
    lines.append(
        f"  on {machine['cpus']} CPU(s), {machine['platform']}, Python {machine['python']}, "
        f"commit {machine['commit']}"
    )
    return "\n".join(lines)


def _store_lists(store: UserStore, settings: Settings, users: list[str], seed: int) -> int:
    """Lists and states as the worker writes them; returns one list's JSON size."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    size = 0
    for chunk in chunks(users, 1000):
        writes = []
        for user in chunk:
            items = [f"item-{int(n):06d}" for n in rng.choice(100_000, settings.top_k, False)]
            listed: list[tuple[str, float, list[str]]] = [
                (item, float(rng.random()), [_REASONS[k % 4].format(item=items[k - 1])])
                for k, item in enumerate(items)
            ]
            event_id = uuid.uuid4().hex
            body = Published(user, listed, event_id, [event_id], now).to_json()
            size = len(body)
            state = UserState(
                user_id=user,
                vector=rng.standard_normal(settings.vector_dim).astype(np.float32),
                recent=[Interaction(item, "click", now.timestamp()) for item in items[:10]],
                last_list=items,
                events=10,
                last_seen=now.timestamp(),
                offsets={0: 1},
                sessions=[int(rng.integers(0, 2**62))],
                visit_at=now.timestamp(),
                topic_id="AAAAAAAAAAAAAAAAAAAAAA",
            )
            writes.append(UserWrite(state, listed=body))
        store.write(writes)
    return size


def _memory_usage(store: UserStore, users: list[str]) -> dict[str, float]:
    lists = [float(store.client.memory_usage(store.list_key(user)) or 0) for user in users]
    states = [float(store.client.memory_usage(store.key(user)) or 0) for user in users]
    list_mean, state_mean = float(np.mean(lists)), float(np.mean(states))
    return {"list": list_mean, "state": state_mean, "list_share": list_mean / state_mean}


_ROUTE = "/v1/users/{user_id}/recommendations"


def _server_buckets(address: str) -> dict[float, float]:
    """The server's own latency histogram of the users route: upper bound -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("route") == _ROUTE:
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def _shares(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Share of the timed requests the server answered within 1 and 5 ms."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    return {
        f"{bound * 1000:g}": (after.get(bound, 0.0) - before.get(bound, 0.0)) / max(total, 1.0)
        for bound in (0.001, 0.005)
    }


def _delete(store: UserStore, settings: Settings) -> None:
    keys = list(store.client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000))
    for chunk in chunks(keys, 1000):
        pipe = store.client.pipeline(transaction=False)
        for key in chunk:
            pipe.delete(key)
        pipe.execute()


def _hammer(address: str, users: list[str], clients: int) -> list[float]:
    """GET each user's list, split over ``clients`` threads; each request's seconds."""
    shares = [users[n::clients] for n in range(clients)]
    results: list[list[float]] = [[] for _ in shares]
    errors: list[str] = []

    def client(share: list[str], out: list[float]) -> None:
        host, port = address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            for user in share:
                started = time.perf_counter()
                connection.request("GET", f"/v1/users/{user}/recommendations")
                response = connection.getresponse()
                response.read()
                out.append(time.perf_counter() - started)
                if response.status not in (200, 404):
                    errors.append(f"HTTP {response.status} for {user}")
                    return
        except (OSError, http.client.HTTPException) as error:
            errors.append(str(error))
        finally:
            connection.close()

    threads = [
        threading.Thread(target=client, args=(share, out))
        for share, out in zip(shares, results, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchError(f"tailor serve failed requests: {errors[0]}")
    return [seconds for out in results for seconds in out]


@contextmanager
def _serve_process(settings: Settings, log: Path, timeout_s: float) -> Iterator[str]:
    """``tailor serve`` with the settings as its environment, on 127.0.0.1 and a free
    port (read back from its log); yields ``host:port``; SIGTERM on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(settings.as_environment())
    command = [sys.executable, "-m", "worker", "serve", "--host", "127.0.0.1", "--port", "0"]
    with log.open("w") as sink:
        process = subprocess.Popen(command, env=env, stderr=sink)
    try:
        deadline = time.monotonic() + timeout_s
        address = ""
        while not address:
            found = re.findall(r"serving on http://127\.0\.0\.1:(\d+)", log.read_text())
            if found:
                address = f"127.0.0.1:{found[0]}"
            elif process.poll() is not None:
                raise BenchError(f"tailor serve stopped: {log.read_text()[-2000:]}")
            elif time.monotonic() > deadline:
                raise BenchError(f"tailor serve did not start within {timeout_s:g} s")
            else:
                time.sleep(0.1)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit or "unknown",
    }
