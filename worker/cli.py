"""The ``tailor`` command line.

Every command reads the one :class:`~worker.config.Settings` (``TAILOR_*`` environment
variables over an optional ``--config`` file). A bad setting ends the command at once with
one line naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from worker import __version__
from worker.argtypes import positive_float, positive_int, share
from worker.config import ConfigError, Settings, load_settings
from worker.extras import EXTRAS, missing_extra
from worker.redaction import RedactingFormatter, redact

if TYPE_CHECKING:
    from rich.console import Console

    from worker.bench import Workload

__all__ = ["main"]

log = logging.getLogger("tailor")

_DESCRIPTION = """\
Tailor: a streaming personalization worker. Interactions are consumed from Kafka, per-user
state is kept in Redis, online models learn from every event, and each interaction yields
that user's refreshed top-K on the recommendations topic.

Settings come from TAILOR_* environment variables (for example TAILOR_BOOTSTRAP_SERVERS,
TAILOR_REDIS_URL, TAILOR_TOP_K) and an optional --config file (.toml or .yaml with the same
names in lower case); see `tailor config` for every setting and its current value.

`tailor run` needs the package alone; demo, bench, evaluate, serve and report need an
extra each (pip install 'tailor-worker[demo]', [bench], [evaluate], [serve], [report]) and
say so when it is missing.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    needed = missing_extra(args.command)
    if needed is not None:
        print(needed, file=sys.stderr)
        return 1
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        print(f"tailor: {error}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    handler = _COMMANDS[args.command]
    return handler(settings, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tailor {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a .toml or .yaml file of settings; TAILOR_* environment variables win over it",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="consume events and publish recommendations until SIGTERM/SIGINT",
        description="Join the consumer group on the events topic and serve until stopped. "
        "SIGTERM or SIGINT finish the current micro-batch, flush outputs, commit offsets "
        "and leave the group.",
    )
    run.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="stop after this long without events (for batch replays and tests)",
    )

    demo = commands.add_parser(
        "demo",
        help="run the worker on an embedded mock Kafka and fakeredis with a sample stream",
        description="No servers needed: the real worker runs on librdkafka's mock cluster and "
        "an in-process Redis, plays the bundled Online Retail sample and shows how a few "
        "customers' lists change with each purchase. Exits 0 when done.",
    )
    demo.add_argument("--users", type=int, default=3, help="customers to follow (default 3)")
    demo.add_argument(
        "--events", type=int, default=3, help="purchases shown per customer (default 3)"
    )
    demo.add_argument("--shown", type=int, default=5, help="list entries shown (default 5)")

    schemas = commands.add_parser(
        "schemas",
        help="write the JSON Schema files of every message from the pydantic models",
        description="Regenerate schemas/*.json from the models (the single source of truth).",
    )
    schemas.add_argument(
        "--out", type=Path, default=Path("schemas"), help="directory (default ./schemas)"
    )
    schemas.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when the files have drifted"
    )

    forget = commands.add_parser(
        "forget",
        help="erase a user (privacy request): delete their keys, publish a tombstone",
        description="Delete every Redis key of the user and publish a tombstone (null value) "
        "for them on the recommendations topic, then verify that nothing of theirs is left. "
        "A forget event is also queued on the events topic, so that events of the user not "
        "yet processed cannot bring their state back.",
    )
    forget.add_argument("user_id", help="the user to erase")

    _topics_parser(commands)

    config = commands.add_parser(
        "config",
        help="print every setting with its current value (secrets masked)",
        description="Show the effective settings after environment variables and --config.",
    )
    config.add_argument(
        "--markdown",
        action="store_true",
        help="print the defaults as the Markdown table the README carries",
    )
    _extra_parser(commands, "serve")
    _bench_parser(commands)
    _extra_parser(commands, "evaluate")
    _extra_parser(commands, "report")
    return parser


def _topics_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    topics = commands.add_parser(
        "topics",
        help="create Tailor's topics from the settings, or check the ones there",
        description="The topics of the settings (TAILOR_EVENTS_TOPIC and the others): the "
        "events and recommendations topics with TAILOR_TOPIC_PARTITIONS partitions, kept "
        "TAILOR_TOPIC_RETENTION_S; the catalog compacted; the dead letters kept "
        "TAILOR_DLQ_RETENTION_S; the model topic with one partition. Replicas: "
        "TAILOR_TOPIC_REPLICATION, or the broker's default.",
    )
    actions = topics.add_subparsers(dest="topics", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create the missing topics (idempotent); --check only compares",
        description="Create every topic of the settings that is missing, then compare "
        "each with the settings: the partitions of the events, recommendations and model "
        "topics, and every topic's cleanup.policy. Topics that exist are never changed. "
        "Exits 0 when every topic is there as Tailor needs it, 1 naming each topic that "
        "is missing or differs.",
    )
    create.add_argument(
        "--check",
        action="store_true",
        help="create nothing: only compare, and exit 1 naming every topic that is missing "
        "or differs",
    )
    create.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="give up on reaching Kafka after this long (default 30)",
    )


#: Commands whose parser lives with an extra: (module, function adding the parser, help).
_EXTRA_PARSERS: dict[str, tuple[str, str, str]] = {
    "serve": (
        "worker.serve.command",
        "add_serve_parser",
        "answer HTTP requests for users' latest lists and trending items",
    ),
    "evaluate": (
        "worker.evaluate.command",
        "add_evaluate_parser",
        "replay a log through Tailor and baselines",
    ),
    "report": (
        "worker.report.command",
        "add_report_parser",
        "a plain summary for people: trending, quality, the experiment, bias",
    ),
}


def _extra_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], command: str
) -> None:
    """A command's real parser, or without its extra a stand-in that takes anything.

    These commands' modules import their extra's packages, so a runtime-only install
    cannot build their parsers; the stand-in accepts whatever follows (``--help``
    included: no prefix character is ever an option for it) so that ``main`` can name
    the extra.
    """
    module, function, what = _EXTRA_PARSERS[command]
    if missing_extra(command) is None:
        getattr(importlib.import_module(module), function)(commands)
        return
    stand_in = commands.add_parser(
        command,
        help=f"{what} (needs the {EXTRAS[command].name} extra)",
        add_help=False,
        prefix_chars="\0",
    )
    stand_in.add_argument("given", nargs="*", help=argparse.SUPPRESS)


def _bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--categories",
        type=positive_int,
        default=500,
        help="leaf categories the items fall into (default 500)",
    )
    common.add_argument(
        "--users", type=positive_int, default=50_000, help="distinct users (default 50000)"
    )
    common.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="events per micro-batch (default TAILOR_BATCH_SIZE)",
    )
    common.add_argument(
        "--seed", type=int, default=7, help="seed of the synthetic catalog and stream (default 7)"
    )
    common.add_argument(
        "--json", type=Path, metavar="OUT", help="also write the measured numbers as JSON here"
    )
    common.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is also off when stdout is not a terminal)",
    )
    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="measure Tailor side by side with a Quix Streams + River peer and a bare relay",
        description="Benchmarks that print measurements (a table; --json for machines). "
        "Without a PART, `tailor bench` runs every part on one seeded synthetic stream: the "
        "recommender core alone (core), then Tailor (`tailor run`, --workers processes), "
        "the peer (the same job as a per-message Quix Streams + River app, installed on "
        "first use into its own venv, .tailor/peer-venv) and a bare relay (consume, produce "
        "the same bytes, commit), each on topics and Redis keys of its own on the Kafka and "
        "Redis of the settings (TAILOR_BOOTSTRAP_SERVERS, TAILOR_REDIS_URL). For each it "
        "reports drain events/s, CPU ms per 1,000 events, peak RSS, start to first output, "
        "event -> output latency at half the drain rate and at --rate, Redis commands and "
        "round trips per event, Kafka bytes per event and Redis bytes per user; Tailor's "
        "throughput as a multiple of the peer's and a fraction of the relay's. The stream: "
        "Zipf-like item and user popularity, users who mostly stay within a few favourite "
        "categories, mostly views and clicks. Options go after the PART when one is given.",
    )
    _side_arguments(bench, with_systems=True)
    kinds = bench.add_subparsers(dest="bench", required=False, metavar="PART")
    # Its own parser (worker/bench/serve.py) reads what follows: importing it here would
    # import the bench extra for every command.
    serve = kinds.add_parser(
        "serve",
        help="tailor serve answering stored lists: latency p50/p99, Redis bytes per user "
        "(`tailor bench serve --help`)",
        add_help=False,
        prefix_chars="\0",
    )
    serve.add_argument("given", nargs="*", help=argparse.SUPPRESS)
    shared = argparse.ArgumentParser(add_help=False, parents=[common])
    shared.add_argument(
        "--items", type=positive_int, default=100_000, help="catalog items (default 100000)"
    )
    for name, what in (
        ("peer", "the Quix Streams + River peer alone, measured as in `tailor bench`"),
        ("relay", "the bare relay alone (the ceiling), measured as in `tailor bench`"),
    ):
        part = kinds.add_parser(name, parents=[common], help=what, description=what + ".")
        _side_arguments(part)
    core = kinds.add_parser(
        "core",
        parents=[shared],
        help="the recommender core alone: no Kafka, no Redis",
        description="Apply the synthetic catalog, then feed the events through "
        "Recommender.process in micro-batches, keeping user states in memory as Redis "
        "would. The first --warmup share is not timed; the timed part starts once the "
        "background fill of every item's text neighbours is done (its time is reported). "
        "Prints events/s, lists/s, batch p50/p95/p99 ms, catalog size, distinct users per "
        "batch and the machine.",
    )
    core.add_argument(
        "--events",
        type=positive_int,
        default=50_000,
        help="events played, the --warmup share of them first and untimed (default 50000)",
    )
    core.add_argument(
        "--warmup",
        type=share,
        default=0.2,
        metavar="SHARE",
        help="share of --events processed first and not timed (default 0.2)",
    )
    worker = kinds.add_parser(
        "worker",
        parents=[shared],
        help="the real worker on the settings' Kafka and Redis: drain rate and latency",
        description="Create fresh topics (unique names), produce the catalog, start the "
        "worker as its own process (`python -m worker run` with the settings as TAILOR_* "
        "variables), then (1) drain: produce --events as fast as possible and time until "
        "the worker's /metrics shows them consumed (a --warmup share of --events goes first, "
        "untimed); (2) latency: send --latency-events at --rate per second and measure, "
        "as a downstream reader of the recommendations topic sees it, the time from each "
        "event's send to the first list that covers it. Topics, consumer group and Redis "
        "keys are deleted afterwards unless --keep.",
    )
    worker.add_argument(
        "--events",
        type=positive_int,
        default=50_000,
        help="events of the timed drain phase (default 50000)",
    )
    worker.add_argument(
        "--warmup",
        type=share,
        default=0.2,
        metavar="SHARE",
        help="this share of --events is played before the drain, untimed, so that the "
        "group is joined and the models are warm (default 0.2)",
    )
    worker.add_argument(
        "--latency-events",
        type=positive_int,
        default=5_000,
        metavar="N",
        help="events sent in the paced latency phase (default 5000)",
    )
    worker.add_argument(
        "--rate",
        type=positive_float,
        default=1000.0,
        metavar="PER_S",
        help="events per second in the latency phase (default 1000)",
    )
    worker.add_argument(
        "--partitions",
        type=positive_int,
        default=4,
        help="partitions of the events and recommendations topics (default 4)",
    )
    worker.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        metavar="SECONDS",
        help="give up when one phase (catalog load, drain, last lists) takes longer (default 600)",
    )
    worker.add_argument(
        "--keep",
        action="store_true",
        help="keep the topics, consumer group and Redis keys the benchmark made",
    )


def _side_arguments(parser: argparse.ArgumentParser, *, with_systems: bool = False) -> None:
    """The options of the side-by-side run (`tailor bench`, `tailor bench peer`/`relay`)."""
    parser.add_argument(
        "--items",
        type=positive_int,
        nargs="+",
        default=[100_000],
        metavar="N",
        help="catalog sizes: core, Tailor and the peer run at each, the relay at the first "
        "(default 100000; e.g. --items 10000 100000 1000000)",
    )
    parser.add_argument(
        "--events",
        type=positive_int,
        default=30_000,
        help="events of the timed drain, produced as fast as possible (default 30000)",
    )
    parser.add_argument(
        "--warmup",
        type=share,
        default=0.2,
        metavar="SHARE",
        help="this share of --events waits in the topic when a system starts, untimed "
        "(default 0.2)",
    )
    parser.add_argument(
        "--latency-events",
        type=positive_int,
        default=3_000,
        metavar="N",
        help="events of each paced latency phase (default 3000)",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=500.0,
        metavar="PER_S",
        help="events/s of the second latency phase; the first runs at half the system's "
        "drain rate (default 500)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="processes of each system in one consumer group (default 1)",
    )
    parser.add_argument(
        "--partitions",
        type=positive_int,
        default=4,
        help="partitions of each system's topics, at least --workers (default 4)",
    )
    parser.add_argument(
        "--memory-users",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="users whose Redis keys MEMORY USAGE sums after a run (default 100000)",
    )
    parser.add_argument(
        "--peer-venv",
        type=Path,
        metavar="DIR",
        help="the peer's virtual environment, made on first use (default .tailor/peer-venv)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        metavar="SECONDS",
        help="give up when one phase takes longer (default 600)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the topics, consumer groups and Redis keys the benchmark made",
    )
    parser.add_argument(
        "--append-benchmarks",
        type=Path,
        nargs="?",
        const=Path("BENCHMARKS.md"),
        metavar="FILE",
        help='append the run as a Markdown row to FILE\'s "Issue 11: side by side" '
        "section (default FILE: BENCHMARKS.md)",
    )
    log = parser.add_argument_group(
        "a real log as the load (instead of the synthetic stream; core is skipped)"
    )
    log.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="JSONL in Tailor's event schema, or delimited text (optionally .gz) read "
        "with --log-map; its first events in time order are played",
    )
    log.add_argument(
        "--log-map",
        metavar="FIELD=COLUMN,...",
        help="the columns of a delimited log: item and time, optionally user, session, "
        "title, type, country, device, locale, page, referrer (as `tailor evaluate`'s "
        "--item, --time, ... options)",
    )
    log.add_argument(
        "--log-time-format",
        default="iso",
        metavar="FORMAT",
        help="iso (default), epoch, epoch_ms or a strptime format (read as UTC)",
    )
    log.add_argument(
        "--log-filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="keep only rows where COLUMN OP VALUE holds (as `tailor evaluate --filter`)",
    )
    log.add_argument(
        "--log-catalog",
        type=Path,
        metavar="FILE",
        help="JSONL catalog in Tailor's catalog schema (else the --log-map title column)",
    )
    if with_systems:
        parser.add_argument(
            "--systems",
            type=_systems,
            default=("core", "tailor", "peer", "relay"),
            metavar="LIST",
            help="which parts to run, comma-separated (default core,tailor,peer,relay)",
        )


def _systems(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    known = ("core", "tailor", "peer", "relay")
    if not chosen or set(chosen) - set(known):
        raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {','.join(known)}")
    return chosen


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from worker.loop import Worker
    from worker.metrics import Health, Metrics, MetricsServer
    from worker.state.store import StoreRefused, StoreUnavailable
    from worker.transport.delivery import DeliveryFailed
    from worker.transport.kafka import KafkaUnavailable

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics, health = Metrics(), Health()
    server = MetricsServer(metrics, health, settings.metrics_host, settings.metrics_port).start()
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, server.port)
    try:
        worker = Worker(settings, metrics=metrics, health=health)
        worker.start()
    except (StoreUnavailable, KafkaUnavailable) as error:
        log.critical("cannot start: %s", error)
        server.stop()
        return 1
    try:
        worker.run(stop, idle_exit_s=args.exit_when_idle)
    except (StoreUnavailable, StoreRefused, DeliveryFailed, KafkaException) as error:
        log.critical("stopping: %s; uncommitted events will be replayed on restart", error)
        return 1
    finally:
        server.stop()
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from worker.demo import DemoOptions, run_demo

    options = DemoOptions(spotlight_users=args.users, events_per_user=args.events, shown=args.shown)
    return run_demo(settings.with_overrides(metrics_port=0), options, Console())


def _schemas(_settings: Settings, args: argparse.Namespace) -> int:
    from worker.contract.schemas import render_schemas, write_schemas

    if args.check:
        drifted = [
            name
            for name, text in render_schemas().items()
            if not (args.out / name).is_file() or (args.out / name).read_text() != text
        ]
        for name in drifted:
            print(f"schemas/{name} differs from the models: run `tailor schemas`", file=sys.stderr)
        return 1 if drifted else 0
    for path in write_schemas(args.out):
        print(path)
    return 0


def _forget(settings: Settings, args: argparse.Namespace) -> int:
    """Erase now, and queue a ``forget`` event behind the user's events still in Kafka.

    Deleting the keys alone races with the workers: an event of the user already in the
    topic but not yet processed would write their state back after the deletion. The
    forget event sits in the same partition (key = user id) after every such event, so
    the worker erases again once it has passed them, and drops what it holds in memory.
    """
    from worker.state.store import UserStore, connect_redis
    from worker.transport.kafka import make_producer

    store = UserStore(connect_redis(settings), settings)
    removed = store.erase([args.user_id])
    producer = make_producer(settings)
    producer.produce(settings.recommendations_topic, key=args.user_id.encode(), value=None)
    request = _forget_event(args.user_id)
    if request is None:
        print("not a valid user id for an event: no forget event queued", file=sys.stderr)
    else:
        producer.produce(settings.events_topic, key=args.user_id.encode(), value=request)
    left = producer.flush(30)
    remaining = store.keys_of(args.user_id)
    print(f"removed {removed} key(s); tombstone {'NOT ' if left else ''}published")
    if remaining or left:
        print(f"still present: {[key.decode() for key in remaining]}", file=sys.stderr)
        return 1
    return 0


def _forget_event(user_id: str) -> bytes | None:
    """A ``forget`` event for the user, or None when the id could never be in an event."""
    import uuid
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from worker.contract import Event, EventType

    try:
        request = Event(
            event_id=f"forget-{uuid.uuid4().hex}",
            user_id=user_id,
            type=EventType.FORGET,
            timestamp=datetime.now(UTC),
        )
    except ValidationError:
        return None
    return request.model_dump_json(exclude_none=True).encode()


def _topics(settings: Settings, args: argparse.Namespace) -> int:
    """Create what is missing (unless ``--check``), then say how every topic stands."""
    from confluent_kafka import KafkaException

    from worker.transport.kafka import (
        KafkaUnavailable,
        check_kafka,
        create_topics,
        describe_topics,
    )
    from worker.transport.topics import differences, topic_specs

    try:
        check_kafka(settings, args.timeout)
        created = [] if args.check else create_topics(settings, timeout_s=args.timeout)
        found = describe_topics(settings, args.timeout)
    except (KafkaUnavailable, KafkaException, RuntimeError) as error:
        print(f"tailor topics: {error}", file=sys.stderr)
        return 1
    specs = topic_specs(settings)
    width = max(len(spec.name) for spec in specs)
    wrong = []
    for spec in specs:
        topic = found.get(spec.name)
        problems = differences(spec, topic)
        if topic is None:
            status = "missing"
        elif problems:
            status = f"differs: {'; '.join(problems)}"
        else:
            status = f"{'created' if spec.name in created else 'ok'}: {topic.describe()}"
        if problems:
            wrong.append(spec.name)
        print(f"{spec.name:<{width}}  {status}")
    if wrong:
        what = "missing or different" if args.check else "different (never changed here)"
        print(f"tailor topics: {len(wrong)} topic(s) {what}: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def _config(settings: Settings, args: argparse.Namespace) -> int:
    """Plain aligned columns: operators run this in the image, which has no rich."""
    if args.markdown:
        print(settings_table_markdown())
        return 0
    rows = [("environment variable", "value", "meaning")] + [
        (f"TAILOR_{name.upper()}", redact(str(getattr(settings, name))), field.description or "")
        for name, field in type(settings).model_fields.items()
    ]
    name_width = max(len(row[0]) for row in rows)
    value_width = min(40, max(len(row[1]) for row in rows))
    for name, value, meaning in rows:
        print(f"{name:<{name_width}}  {value:<{value_width}}  {meaning}".rstrip())
    return 0


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.bench == "serve":
        from worker.bench.serve import serve_bench_command

        return serve_bench_command(settings, args.given)
    from rich.console import Console

    from worker.bench import (
        BenchError,
        CoreOptions,
        WorkerOptions,
        Workload,
        print_report,
        run_core,
        run_worker,
        write_json,
    )

    # Piped to a file or a CI log, rich would assume 80 columns and fold the table.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    first = args.items[0] if isinstance(args.items, list) else args.items
    workload = Workload(items=first, categories=args.categories, users=args.users, seed=args.seed)
    if args.batch_size is not None:
        settings = settings.with_overrides(batch_size=args.batch_size)
    if args.bench in {None, "peer", "relay"}:
        return _bench_side_by_side(settings, args, workload, console)
    try:
        if args.bench == "core":
            core = CoreOptions(
                workload=workload,
                events=args.events,
                batch_size=settings.batch_size,
                warmup=args.warmup,
                progress=not args.no_progress,
            )
            result = run_core(settings, core, console)
        else:
            options = WorkerOptions(
                workload=workload,
                events=args.events,
                warmup=args.warmup,
                latency_events=args.latency_events,
                rate=args.rate,
                partitions=args.partitions,
                keep=args.keep,
                timeout_s=args.timeout,
                progress=not args.no_progress,
            )
            result = run_worker(settings, options, console)
    except BenchError as error:
        print(f"tailor bench: {error}", file=sys.stderr)
        return 1
    print_report(result, console)
    if args.json is not None:
        write_json(result, args.json)
    return 0


def _bench_side_by_side(
    settings: Settings, args: argparse.Namespace, workload: Workload, console: Console
) -> int:
    from worker.bench import BenchError, SideOptions, print_report, run_side_by_side, write_json
    from worker.bench.replay import load_replay, parse_log_map
    from worker.bench.report import append_benchmarks

    systems = (args.bench,) if args.bench is not None else args.systems
    replay = None
    try:
        if args.log is not None:
            mapping = (
                parse_log_map(args.log_map, args.log_time_format, args.log_filter)
                if args.log_map is not None
                else None
            )
            needed = int(args.events * args.warmup) + args.events + 2 * args.latency_events
            with console.status(f"reading {args.log}"):
                replay = load_replay(args.log, mapping, args.log_catalog, needed)
    except BenchError as error:
        print(f"tailor bench: {error}", file=sys.stderr)
        return 2
    options = SideOptions(
        workload=workload,
        items=tuple(args.items),
        systems=tuple(systems),
        events=args.events,
        warmup=args.warmup,
        latency_events=args.latency_events,
        rate=args.rate,
        workers=args.workers,
        partitions=args.partitions,
        memory_users=args.memory_users,
        peer_venv=args.peer_venv,
        keep=args.keep,
        timeout_s=args.timeout,
        progress=not args.no_progress,
        replay=replay,
    )
    try:
        result = run_side_by_side(settings, options, console)
    except BenchError as error:
        print(f"tailor bench: {error}", file=sys.stderr)
        return 1
    print_report(result, console)
    if args.json is not None:
        write_json(result, args.json)
    if args.append_benchmarks is not None:
        command = "tailor " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
        append_benchmarks(result, args.append_benchmarks, command or "tailor bench")
    return 0


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from worker.report.command import run_report

    return run_report(settings, args)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from worker.serve.command import run_serve

    return run_serve(settings, args)


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.evaluate.command import evaluate

    return evaluate(settings, args)


def settings_table_markdown() -> str:
    """Every setting with its default and meaning; the README embeds this table verbatim."""
    lines = ["| environment variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(none)" if default is None else f"`{default}`"
        lines.append(f"| `TAILOR_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines)


_COMMANDS = {
    "run": _run,
    "demo": _demo,
    "schemas": _schemas,
    "forget": _forget,
    "topics": _topics,
    "config": _config,
    "bench": _bench,
    "evaluate": _evaluate,
    "serve": _serve,
    "report": _report,
}


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("tailor.demo").setLevel(level)
