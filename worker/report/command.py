"""``tailor report``: a short plain summary of how the lists are doing, for people.

Three sources, each optional so that the report says what it can: Prometheus (the live
quality, experiment and bias figures the workers export, over a window and the window
before), Redis (what is trending overall and per segment, from the shared models' newest
checkpoint, as ``tailor serve`` reads it) and the catalog topic (item titles, so that a
product owner reads names rather than ids).
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from worker.argtypes import positive_int
from worker.config import Settings
from worker.report.figures import LiveFigures, read_live_figures
from worker.report.prometheus import PrometheusApi, PrometheusError
from worker.report.text import TrendingSection, describe_window, live_lines, trending_lines

__all__ = ["add_report_parser", "parse_duration", "run_report"]

log = logging.getLogger("tailor.report")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, ``1w`` -> seconds (Prometheus's own units)."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 7d, 12h, 30m or 90s")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def add_report_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="a plain summary for people: trending per segment, quality, the experiment, bias",
        description=(
            "Print a short summary a product owner can read: what is trending overall and "
            "per segment (from the newest model checkpoint in Redis, item titles from the "
            "catalog topic), how live quality (HR@20, MRR@20 of the published lists against "
            "each user's next interaction, as `tailor evaluate` defines them) moved over "
            "--window against the window before, which experiment variant leads (a "
            "two-proportion test against control), and bias (catalog coverage, share of "
            "slots to the 1 % most popular items, exposure Gini). Live figures need "
            "--prometheus (the Prometheus that scrapes the workers); without it the report "
            "has trending only. Settings (Redis, Kafka, variants) are the workers' own."
        ),
    )
    report.add_argument(
        "--prometheus",
        metavar="URL",
        help="base URL of the Prometheus scraping the workers, e.g. http://prometheus:9090",
    )
    report.add_argument(
        "--window",
        type=parse_duration,
        default=parse_duration("7d"),
        metavar="DURATION",
        help="the period summarised, compared with the one before it (default 7d; "
        "units s, m, h, d, w)",
    )
    report.add_argument(
        "--top", type=positive_int, default=5, help="trending items per segment (default 5)"
    )
    report.add_argument(
        "--segments",
        type=positive_int,
        default=6,
        help="segments shown, the busiest first (default 6; segments are country:, "
        "device: and hour: of the events' context)",
    )
    report.add_argument(
        "--no-titles",
        action="store_true",
        help="do not read the catalog topic for titles: items are named by id",
    )
    report.add_argument("--plot", type=Path, metavar="PNG", help="also draw the window here")
    report.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")


def run_report(settings: Settings, args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)  # a line per sentence, piped or not
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    window = describe_window(args.window)
    console.print(f"[bold]Tailor report[/bold], {stamp}, the last {window}")
    sections, trending_note = _trending(settings, args)
    titles = {} if args.no_titles or not sections else _titles(settings, sections)
    console.print("\n[bold]Trending now[/bold]")
    for line in trending_lines(sections, titles) if sections else [trending_note]:
        console.print(line, highlight=False)
    figures: LiveFigures | None = None
    failed = False
    console.print("\n[bold]Quality, experiment and bias[/bold]")
    if args.prometheus is None:
        console.print("No --prometheus given: live figures are not read.")
    else:
        try:
            figures = read_live_figures(PrometheusApi(args.prometheus), args.window, time.time())
        except PrometheusError as error:
            console.print(f"[red]{error}[/red]", highlight=False)
            failed = True
        else:
            shadows = frozenset(name for name, spec in _variants(settings) if spec)
            for line in live_lines(figures, shadows):
                console.print(line, highlight=False)
    if args.plot is not None and figures is not None:
        from worker.report.plot import plot_live

        plot_live(figures, args.plot, f"Tailor, the last {window}")
        console.print(f"\nplot written to {args.plot}")
    if args.json is not None:
        payload: dict[str, Any] = {
            "generated_at": stamp,
            "window_s": args.window,
            "trending": [asdict(section) for section in sections],
            "titles": titles,
            "live": None if figures is None else asdict(figures),
        }
        args.json.write_bytes(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        console.print(f"figures written to {args.json}")
    return 1 if failed else 0


def _variants(settings: Settings) -> list[tuple[str, bool]]:
    """(name, is shadow) of each configured variant."""
    return [(name, variant.shadow) for name, variant in settings.variants.items()]


def _trending(settings: Settings, args: argparse.Namespace) -> tuple[list[TrendingSection], str]:
    """The busiest segments' top items from the newest readable checkpoint, or why not."""
    from worker.models.frames import FrameError
    from worker.serve.trending import board_of
    from worker.state.store import REDIS_ERRORS, RedisCheckpoints, connect_redis

    try:
        checkpoints = RedisCheckpoints(connect_redis(settings), settings, owner="report")
        for data in checkpoints.newest_first():
            try:
                board = board_of(data, settings)
            except FrameError as error:
                log.warning("a checkpoint refused (%s); trying an older one", error)
                continue
            busiest = sorted(
                board.segments.items(), key=lambda item: -sum(entry.score for entry in item[1])
            )[: args.segments]
            sections = [TrendingSection("", [entry.item_id for entry in board.overall[: args.top]])]
            sections += [
                TrendingSection(key, [entry.item_id for entry in ranked[: args.top]])
                for key, ranked in busiest
            ]
            return sections, ""
    except REDIS_ERRORS as error:
        return [], f"Trending is unknown: cannot read Redis ({error})."
    interval = settings.model_checkpoint_interval_s
    return [], (
        "Trending is unknown: no model checkpoint in Redis yet (the workers write one every "
        f"TAILOR_MODEL_CHECKPOINT_INTERVAL_S={interval:g} s)."
    )


def _titles(
    settings: Settings, sections: list[TrendingSection], timeout_s: float = 20.0
) -> dict[str, str]:
    """Titles of the listed items, read from the catalog topic (kept: only those)."""
    from worker.decode import DeadLetter, decode_catalog_item
    from worker.transport.kafka import KafkaCatalogFeed

    wanted = {item for section in sections for item in section.items}
    titles: dict[str, str] = {}
    try:
        feed = KafkaCatalogFeed(settings)
    except Exception as error:  # a report without titles is still a report
        log.warning("item titles not read: %s", error)
        return titles
    try:
        if not feed.assign():
            return titles
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in feed.consume(5000, 1.0):
                value = message.value() if message.error() is None else None
                if value is None:
                    continue
                item = decode_catalog_item(
                    value,
                    max_bytes=settings.max_message_bytes,
                    max_id_length=settings.max_id_length,
                )
                if not isinstance(item, DeadLetter) and item.item_id in wanted and item.title:
                    titles[item.item_id] = item.title
            if feed.caught_up():
                break
        else:
            log.warning("catalog not read to its end in %.0f s: some items named by id", timeout_s)
    finally:
        feed.close()
    return titles
