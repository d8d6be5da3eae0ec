"""``tailor evaluate``: check Tailor against baselines on a log before going live."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from worker.argtypes import positive_float, positive_int, share
from worker.config import (
    CONTROL_VARIANT,
    RECOMMENDER_PARTS,
    ConfigError,
    RecommenderPart,
    Settings,
    describe_error,
)
from worker.contract import CatalogItem, EventType
from worker.evaluate.baselines import (
    BASELINE_NAMES,
    DEFAULT_PARAMS,
    installed,
    make_baselines,
    missing_extra,
)
from worker.evaluate.harness import (
    Model,
    ModelScore,
    TailorModel,
    VariantView,
    replay,
    replay_in_processes,
)
from worker.evaluate.logs import (
    CsvMapping,
    ItemFile,
    LoadedLog,
    LogError,
    RowFilter,
    load_log,
)
from worker.evaluate.report import results_json, results_table, write_plot
from worker.evaluate.tuning import best_params, tune
from worker.state.store import StateStore

__all__ = ["add_evaluate_parser", "evaluate"]

logger = logging.getLogger("tailor.evaluate")

_EXAMPLE = """\
example (the UCI Online Retail log, as published):
  tailor evaluate online-retail.csv.gz --user CustomerID --item StockCode \\
      --time InvoiceDate --time-format '%Y-%m-%d %H:%M:%S' --session InvoiceNo \\
      --title Description --context country=Country \\
      --filter 'CustomerID!=' --filter 'Quantity>0' --filter 'InvoiceNo!~^C' \\
      --warmup 0.2 --json results.json --plot hr.png

example (MovieTweetings, MovieLens-style '::' files without a header; ratings of 7 or
more of 10 as likes, the films' titles and genres as the catalog):
  tailor evaluate movietweetings-100k/ratings.dat --delimiter '::' \\
      --columns user,item,rating,time --user user --item item --time time \\
      --time-format epoch --filter 'rating>=7' --default-type like --session-gap 3600 \\
      --items movietweetings-100k/movies.dat --items-columns item,title,genres \\
      --item-title title --item-categories genres --warmup 0.2 --json results.json
  (or keep every rating as a rate event: --default-type rate --value rating
  --value-scale 10 instead of --filter and --default-type like)
"""


def add_evaluate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="replay a log through Tailor and baselines, test-then-train (prequential)",
        description="Replay a time-ordered interaction log through the same recommender core "
        "that `tailor run` uses, and through baselines, on the same events with the same "
        "counting: before learning from each event, a hit is counted when its item is in "
        "the top K of the list the user had (HR@K), with 1/rank for MRR@K. Settings "
        "(TAILOR_*) shape Tailor exactly as they shape the worker.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "log",
        type=Path,
        help="JSONL in Tailor's event schema, or delimited text (.csv, .tsv, .dat, ...; "
        "optionally .gz) read with the column options below",
    )
    parser.add_argument("--catalog", type=Path, help="JSONL catalog in Tailor's catalog schema")
    csv = parser.add_argument_group(
        "CSV column mapping",
        "a log read through these options is sorted by time before the replay (stable:\n"
        "rows of equal times keep their file order), so it may be sorted by user",
    )
    csv.add_argument("--user", metavar="COLUMN", help="user id column")
    csv.add_argument("--item", metavar="COLUMN", help="item id column (makes the log CSV)")
    csv.add_argument("--time", metavar="COLUMN", help="timestamp column")
    csv.add_argument(
        "--time-format",
        default="iso",
        help="iso (default), epoch, epoch_ms, or a strptime format (read as UTC)",
    )
    csv.add_argument("--type", metavar="COLUMN", help="event type column (view, click, ...)")
    csv.add_argument(
        "--default-type",
        default=EventType.PURCHASE.value,
        choices=[t.value for t in EventType if t is not EventType.FORGET],
        help="event type of every row when there is no --type column (default purchase)",
    )
    csv.add_argument("--session", metavar="COLUMN", help="session id column (e.g. an invoice)")
    csv.add_argument(
        "--session-gap",
        type=float,
        metavar="SECONDS",
        help="without a session column: cut each user's events into sessions at longer gaps",
    )
    csv.add_argument("--title", metavar="COLUMN", help="item text column: content features")
    csv.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="event context from a column: country, device, locale, page or referrer (repeatable)",
    )
    csv.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="keep only rows where COLUMN OP VALUE holds, dropping the rest; OP is one of "
        "== != > >= < <= ~ !~ (regex); repeatable, all must hold",
    )
    csv.add_argument(
        "--delimiter",
        default=",",
        help="field separator (default ,; \\t for a tab); longer than one character, e.g. "
        "'::', each line is split on it, without CSV quoting",
    )
    csv.add_argument(
        "--columns",
        metavar="NAME,NAME,...",
        help="names of the columns, in order, of a log without a header line (its first "
        "line is then data); the other options refer to these names",
    )
    csv.add_argument(
        "--value",
        metavar="COLUMN",
        help="numeric column for the event's value, e.g. a rating (read by --default-type "
        "rate: Tailor takes value-3 on a 5-star scale as the interest)",
    )
    csv.add_argument(
        "--value-scale",
        type=positive_float,
        metavar="MAX",
        help="the --value column is out of MAX: rescaled to 5 stars (value*5/MAX), so with "
        "--value-scale 10 a rating above 6 is interest, 6 neutral, below 6 counts against the item",
    )
    items = parser.add_argument_group(
        "item file",
        "a catalog as a table (e.g. MovieLens' movies.dat): every row becomes a catalog\n"
        "item, its title's words and its categories its tags, its first category its\n"
        "category; items of the log missing from it are still replayed",
    )
    items.add_argument("--items", type=Path, metavar="FILE", help="the item table")
    items.add_argument(
        "--items-columns",
        metavar="NAME,NAME,...",
        help="names of its columns, in order, when it has no header line",
    )
    items.add_argument(
        "--items-delimiter", help="its field separator (default: the log's --delimiter)"
    )
    items.add_argument(
        "--item-key",
        metavar="COLUMN",
        help="its column of item ids, as the log writes them (default: the --item name)",
    )
    items.add_argument("--item-title", metavar="COLUMN", help="its column of titles")
    items.add_argument(
        "--item-categories",
        metavar="COLUMN",
        help="its column of categories (e.g. genres), split by --item-categories-separator",
    )
    items.add_argument(
        "--item-categories-separator",
        default="|",
        metavar="TEXT",
        help="what separates categories in --item-categories (default |)",
    )
    run = parser.add_argument_group("the replay")
    run.add_argument("--k", type=positive_int, default=20, help="list length scored (20)")
    run.add_argument(
        "--warmup",
        type=share,
        default=0.2,
        help="leading share of the log replayed to learn from but not scored (default 0.2)",
    )
    run.add_argument(
        "--limit", type=positive_int, help="replay only the N earliest events (in time order)"
    )
    run.add_argument(
        "--baselines",
        help=f"comma-separated baselines, or none (default all: {','.join(BASELINE_NAMES)}; "
        "those whose optional extra is missing are skipped with a warning)",
    )
    run.add_argument(
        "--tailor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replay Tailor at its settings; --no-tailor compares the baselines (and any "
        "--ablate variants) alone, e.g. to add a slow baseline to an earlier run's table",
    )
    run.add_argument(
        "--ablate",
        nargs="?",
        const=",".join(RECOMMENDER_PARTS),
        metavar="PART,...",
        type=_parts,
        help="also run Tailor with each part toggled in turn (off if on, on if off): all of "
        + ", ".join(RECOMMENDER_PARTS)
        + ", or only the comma-separated parts given (e.g. --ablate ranker,taste)",
    )
    run.add_argument(
        "--tune",
        action="store_true",
        help="instead of the evaluation: try every model's small grid of settings on the "
        "--warmup share only (never the scored part) and print the best; --json saves "
        "them for --params",
    )
    run.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help="JSON of baseline parameters by name (as --tune --json writes), over the "
        "tuned defaults; a 'tailor' entry holds TAILOR_* settings in lower case",
    )
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="largest micro-batch; a batch never holds two events of one user (256)",
    )
    run.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="share the models out over this many processes: same figures, a long "
        "comparison finishes sooner on several cores, but each model's events/s then "
        "shares the machine (1)",
    )
    run.add_argument(
        "--workers",
        type=_worker_counts,
        default=[1],
        metavar="N[,N...]",
        help="replay Tailor as N workers of one consumer group would see the log (users "
        "hashed to --partitions partitions as Kafka's default partitioner does, "
        "partitions shared by the range assignor, each worker with its own models kept in "
        "step through the model log at TAILOR_MODEL_SYNC_MAX_LAG_S of event time); a list "
        "such as 1,3,6 replays Tailor once per count, side by side (default 1)",
    )
    run.add_argument(
        "--partitions",
        type=positive_int,
        default=6,
        help="partitions of the events topic for --workers (default 6)",
    )
    run.add_argument(
        "--restart-every",
        type=positive_float,
        metavar="SECONDS",
        help="also replay the first --workers count with every worker restarted at each "
        "such step of event time (86400: daily deploys): its models dropped and restored "
        "from the checkpoint written one TAILOR_MODEL_CHECKPOINT_INTERVAL_S earlier, then "
        "caught up from the model log",
    )
    run.add_argument(
        "--variants",
        type=Path,
        metavar="FILE",
        help="an experiment to try on history: a JSON file of variants, as TAILOR_VARIANTS "
        "takes them (over TAILOR_VARIANTS); users are assigned as the worker assigns them "
        "(TAILOR_VARIANT_SALT) and Tailor's row becomes one row per variant, each scored "
        "on its own users with the lists the worker would publish, shadows included",
    )
    run.add_argument("--seed", type=int, help="random seed (default: TAILOR_SEED)")
    run.add_argument(
        "--redis",
        metavar="URL",
        help="keep Tailor's user state in this Redis (under a fresh key prefix, removed "
        "afterwards) instead of in this process",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    out.add_argument("--plot", type=Path, metavar="OUT.png", help="plot HR@K over the replay")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


_TABLE_WIDTH = 130


def evaluate(settings: Settings, args: argparse.Namespace) -> int:
    # Piped to a file or a CI log, rich would assume 80 columns and fold the table.
    console = Console() if sys.stdout.isatty() else Console(width=_TABLE_WIDTH)
    try:
        mapping = _mapping(args)
        items = _item_file(args, mapping)
        baselines = _baseline_names(args.baselines)
    except LogError as error:
        print(f"tailor evaluate: {error}", file=sys.stderr)
        return 2
    if args.seed is not None:
        settings = settings.with_overrides(seed=args.seed)
    try:
        params = _params(args.params)
        settings = settings.with_overrides(**params.pop("tailor", {}))
        if args.variants is not None:
            settings = _with_variants(settings, args.variants)
    except (LogError, ConfigError) as error:
        print(f"tailor evaluate: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        with console.status(f"reading {args.log}"):
            log = load_log(args.log, mapping, args.catalog, args.limit, items)
    except LogError as error:
        print(f"tailor evaluate: {error}", file=sys.stderr)
        return 2
    if not log.events:
        print(f"tailor evaluate: {args.log}: no events ({_read_summary(log)})", file=sys.stderr)
        return 2
    console.print(f"[dim]{_read_summary(log)} in {time.perf_counter() - started:.1f}s[/]")
    catalog = {e.item_id for e in log.events if e.item_id} | set(log.catalog)
    if args.tune:
        return _tune(settings, log, baselines, args, console)
    with _state_store(settings, args.redis) as store:
        models: list[Model] = (
            _tailor_models(settings, log.catalog, store, args) if args.tailor else []
        )
        if args.ablate:
            models += [
                TailorModel(toggled, log.catalog, name=name)
                for name, toggled in ablation_settings(settings, args.ablate)
            ]
        try:
            models += make_baselines(baselines, params, seed=settings.seed)
        except ValueError as error:
            print(f"tailor evaluate: --params: {error}", file=sys.stderr)
            return 2
        if not models:
            print(
                "tailor evaluate: --no-tailor and no baselines: nothing to replay", file=sys.stderr
            )
            return 2
        views = _variant_views(settings, models) if args.tailor else []
        others = [model for model in models if not any(model is v.tailor for v in views)]
        scores = _replay_views(log, views, args)
        if others:
            scores += _replay(log, others, args)
    title = (
        f"{args.log.name}: {len(log.events):,} events, {len(catalog):,} items, "
        f"scored after the first {args.warmup:.0%}"
    )
    console.print(results_table(scores, catalog, title, baseline_of="tailor"))
    if args.json is not None:
        record = _run_record(args, settings, log, params)
        args.json.write_bytes(results_json(scores, catalog, record))
        console.print(f"figures written to {args.json}")
    if args.plot is not None:
        write_plot(scores, args.plot, title)
        console.print(f"plot written to {args.plot}")
    return 0


def _tailor_models(
    settings: Settings,
    catalog: Mapping[str, CatalogItem],
    store: StateStore | None,
    args: argparse.Namespace,
) -> list[Model]:
    """Tailor once per ``--workers`` count, and the first count again with restarts.

    Every deployment shape gets its own user store (they must not share users' state);
    the first, one worker without restarts, is the reference the table compares with.
    """
    shapes: list[tuple[int, float | None]] = [(workers, None) for workers in args.workers]
    if args.restart_every is not None:
        shapes.append((args.workers[0], args.restart_every))
    models: list[Model] = []
    for workers, restart_every in shapes:
        name = "tailor"
        if workers > 1:
            name += f" x{workers} workers"
        if restart_every is not None:
            name += f" restart/{_duration(restart_every)}"
        models.append(
            TailorModel(
                settings,
                catalog,
                store if not models else None,
                name,
                workers=workers,
                partitions=args.partitions,
                restart_every_s=restart_every,
            )
        )
    return models


def _with_variants(settings: Settings, path: Path) -> Settings:
    """``--variants``: the JSON object TAILOR_VARIANTS takes, checked as the worker checks
    it at start-up."""
    try:
        variants = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LogError(f"--variants {path}: {error}") from None
    try:
        return settings.with_overrides(variants=variants)
    except ValidationError as error:
        raise ConfigError(f"--variants {path}: {describe_error(error)}") from None


def _variant_views(settings: Settings, models: Sequence[Model]) -> list[VariantView]:
    """With an experiment configured, the reference Tailor (one worker, no restarts) seen
    as one model per variant: the published ones, control, then the shadows."""
    if not settings.variants or not models or not isinstance(models[0], TailorModel):
        return []
    tailor = models[0]
    published = [name for name, v in settings.variants.items() if not v.shadow]
    shadows = [name for name, v in settings.variants.items() if v.shadow]
    names = [(name, False) for name in [*published, CONTROL_VARIANT]]
    names += [(name, True) for name in shadows]
    return [
        VariantView(tailor, name, shadow=shadow, driver=n == 0)
        for n, (name, shadow) in enumerate(names)
    ]


def _replay_views(
    log: LoadedLog, views: Sequence[VariantView], args: argparse.Namespace
) -> list[ModelScore]:
    """The variants' views in one process (they share one replay); every view is given
    the time of that replay, which made all of their lists."""
    if not views:
        return []
    with _progress(len(log.events), args.no_progress) as advance:
        scores = replay(log.events, views, args.k, args.warmup, args.batch_size, advance)
    for score in scores[1:]:
        score.seconds = scores[0].seconds
    return scores


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _worker_counts(text: str) -> list[int]:
    """``--workers``: one count or a comma-separated list of them."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,...; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be at least 1; got {text!r}")
    return list(dict.fromkeys(counts))


def ablation_settings(
    settings: Settings, parts: Sequence[RecommenderPart] = RECOMMENDER_PARTS
) -> list[tuple[str, Settings]]:
    """Each part toggled in turn: ``tailor -covis`` off, ``tailor +taste`` on (if off)."""
    toggled: list[tuple[str, Settings]] = []
    for part in parts:
        if settings.part_on(part):
            name, parts_off = f"tailor -{part}", [*settings.parts_off, part]
        else:
            name, parts_off = f"tailor +{part}", [p for p in settings.parts_off if p != part]
        toggled.append((name, settings.with_overrides(parts_off=parts_off)))
    return toggled


def _replay(log: LoadedLog, models: Sequence[Model], args: argparse.Namespace) -> list[ModelScore]:
    with _progress(len(log.events), args.no_progress) as advance:
        return replay_in_processes(
            log.events,
            models,
            args.jobs,
            k=args.k,
            warmup=args.warmup,
            batch_size=args.batch_size,
            on_progress=advance,
        )


def _tune(
    settings: Settings,
    log: LoadedLog,
    baselines: Sequence[str],
    args: argparse.Namespace,
    console: Console,
) -> int:
    """Grid search on the warm-up share; prints every point and the winners."""
    share = args.warmup or 0.2
    events = log.events[: max(1, int(len(log.events) * share))]
    console.print(f"tuning on the first {share:.0%} of the log: {len(events):,} events")
    with _progress(len(events), args.no_progress) as advance:
        points = tune(
            events,
            settings,
            log.catalog,
            baselines,
            k=args.k,
            batch_size=args.batch_size,
            on_progress=advance,
        )
    catalog = {e.item_id for e in events if e.item_id} | set(log.catalog)
    scores = [point.score for point in points]
    for point in points:
        point.score.name = point.label
    console.print(results_table(scores, catalog, f"grid on the first {share:.0%}"))
    best = best_params(points, args.k)
    console.print_json(data=best)
    if args.json is not None:
        args.json.write_text(json.dumps(best, indent=2) + "\n")
        console.print(f"best parameters written to {args.json} (use with --params)")
    return 0


@contextmanager
def _progress(total: int, disabled: bool) -> Iterator[Callable[[int], None]]:
    columns = (
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=disabled, transient=True) as progress:
        task = progress.add_task("replay", total=total)
        yield lambda done: progress.update(task, completed=done)


def _params(path: Path | None) -> dict[str, dict[str, Any]]:
    """Tuned defaults, overridden by the file's entries (a JSON object by model name)."""
    params: dict[str, dict[str, Any]] = {name: dict(p) for name, p in DEFAULT_PARAMS.items()}
    if path is None:
        return params
    try:
        given = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise LogError(f"--params {path}: {error}") from None
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise LogError(f"--params {path}: expected a JSON object of objects by model name")
    for name, values in given.items():
        params[name] = {**params.get(name, {}), **values}
    return params


@contextmanager
def _state_store(settings: Settings, url: str | None) -> Iterator[StateStore | None]:
    """Redis when asked (the worker's own :class:`UserStore`), else in-process state."""
    if url is None:
        yield None
        return
    from worker.state.store import UserStore, connect_redis

    try:
        namespaced = settings.with_overrides(
            redis_url=url, redis_key_prefix=f"{settings.redis_key_prefix}:evaluate:{time.time_ns()}"
        )
    except ConfigError as error:
        raise LogError(f"--redis {url}: {error}") from None
    client = connect_redis(namespaced)
    store = UserStore(client, namespaced)
    try:
        yield store
    finally:
        keys = list(client.scan_iter(match=f"{namespaced.redis_key_prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


def _mapping(args: argparse.Namespace) -> CsvMapping | None:
    is_csv = (
        args.item is not None
        or args.columns is not None
        or any(suffix in {".csv", ".tsv"} for suffix in args.log.suffixes)
    )
    if not is_csv:
        for option in ("value", "value_scale"):
            if getattr(args, option) is not None:
                raise LogError(f"--{option.replace('_', '-')} is for a CSV log (give --item)")
        return None
    missing = [name for name in ("item", "time") if getattr(args, name) is None]
    if missing:
        raise LogError("a CSV log needs " + " and ".join(f"--{name}" for name in missing))
    context = {}
    for pair in args.context:
        name, _, column = pair.partition("=")
        if name not in {"country", "device", "locale", "page", "referrer"} or not column:
            raise LogError(
                f"--context {pair!r}: expected FIELD=COLUMN with FIELD one of country, "
                "device, locale, page, referrer"
            )
        context[name] = column
    if args.value_scale is not None and args.value is None:
        raise LogError("--value-scale needs --value (the column it rescales)")
    return CsvMapping(
        item=args.item,
        time=args.time,
        user=args.user,
        session=args.session,
        type=args.type,
        default_type=EventType(args.default_type),
        time_format=args.time_format,
        delimiter=_delimiter(args.delimiter, "--delimiter"),
        filters=tuple(RowFilter.parse(text) for text in args.filter),
        session_gap_s=args.session_gap,
        context=context,
        title=args.title,
        columns=_column_names(args.columns, "--columns"),
        value=args.value,
        value_scale=args.value_scale,
    )


def _item_file(args: argparse.Namespace, mapping: CsvMapping | None) -> ItemFile | None:
    """The --items options as an :class:`ItemFile`; options without --items are mistakes."""
    if args.items is None:
        given = ("items_columns", "items_delimiter", "item_key", "item_title", "item_categories")
        for option in given:
            if getattr(args, option) is not None:
                raise LogError(f"--{option.replace('_', '-')} needs --items (the item file)")
        return None
    key = args.item_key or (mapping.item if mapping is not None else None)
    if key is None:
        raise LogError("--items: name its column of item ids with --item-key")
    if not args.item_categories_separator:
        raise LogError("--item-categories-separator: must not be empty")
    delimiter = (
        _delimiter(args.items_delimiter, "--items-delimiter")
        if args.items_delimiter is not None
        else (mapping.delimiter if mapping is not None else ",")
    )
    return ItemFile(
        path=args.items,
        key=key,
        title=args.item_title,
        categories=args.item_categories,
        categories_separator=args.item_categories_separator,
        columns=_column_names(args.items_columns, "--items-columns"),
        delimiter=delimiter,
    )


def _delimiter(text: str, option: str) -> str:
    """``\\t`` as typed in a shell stands for a tab; an empty separator splits nothing."""
    if not text:
        raise LogError(f"{option}: must not be empty")
    return "\t" if text == "\\t" else text


def _column_names(text: str | None, option: str) -> tuple[str, ...] | None:
    """``a,b,c`` as names; each must be given once, so a row maps to one dict."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise LogError(f"{option} {text!r}: an empty column name")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise LogError(f"{option} {text!r}: {', '.join(twice)} named twice")
    return names


def _parts(text: str) -> list[RecommenderPart]:
    """``--ablate``'s comma-separated parts, each one of :data:`RECOMMENDER_PARTS`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in RECOMMENDER_PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown) or text!r}; choose from "
            + ", ".join(RECOMMENDER_PARTS)
        )
    return [part for part in RECOMMENDER_PARTS if part in names]


def _baseline_names(text: str | None) -> list[str]:
    """The named baselines, or all that can run here when none are named.

    Only a default skips a baseline whose optional extra is missing (a warning says how
    to add it); naming it is an error, so a comparison never silently loses a model.
    """
    if text is None:
        for name in BASELINE_NAMES:
            if (reason := missing_extra(name)) is not None:
                logger.warning("skipping the %s baseline: %s", name, reason)
        return [name for name in BASELINE_NAMES if installed(name)]
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in BASELINE_NAMES]
    if unknown:
        raise LogError(
            f"--baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINE_NAMES)}"
        )
    missing = [reason for name in names if (reason := missing_extra(name)) is not None]
    if missing:
        raise LogError(f"--baselines: {'; '.join(missing)}")
    return names


def _read_summary(log: LoadedLog) -> str:
    parts = [f"{len(log.events):,} events from {log.rows_read:,} rows"]
    if log.rows_dropped:
        parts.append(f"{log.rows_dropped:,} dropped by filters")
    if log.rows_invalid:
        parts.append(f"{log.rows_invalid:,} unreadable (first: {log.first_error})")
    return ", ".join(parts)


def _run_record(
    args: argparse.Namespace,
    settings: Settings,
    log: LoadedLog,
    params: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "log": str(args.log),
        "items": None if args.items is None else str(args.items),
        "events": len(log.events),
        "k": args.k,
        "warmup": args.warmup,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "partitions": args.partitions,
        "restart_every_s": args.restart_every,
        "seed": settings.seed,
        "variants": {name: v.model_dump() for name, v in settings.variants.items()},
        "variant_salt": settings.variant_salt,
        "command": shlex.join(["tailor", *sys.argv[1:]]),
        "baseline_params": {name: params.get(name, {}) for name in BASELINE_NAMES},
        "tailor_settings_changed": settings.model_dump(
            mode="json", exclude_defaults=True, exclude={"kafka_sasl_password", "redis_password"}
        ),
    }
