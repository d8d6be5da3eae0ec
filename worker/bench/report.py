"""What a benchmark run says about itself and how it is shown: the machine and commit it
ran on, the rich table, and the JSON that ``--json`` writes."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
from rich.console import Console
from rich.table import Table

from worker import __version__
from worker.bench.common import Json

__all__ = [
    "SIDE_BY_SIDE_HEADING",
    "append_benchmarks",
    "machine_info",
    "markdown_row",
    "now_iso",
    "print_report",
    "side_by_side_rows",
    "write_json",
]


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def machine_info() -> Json:
    """What the numbers were measured on."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "tailor": __version__,
        "git": _git_revision(),
    }


def _git_revision() -> str:
    """The checkout's commit, ``+dirty`` with uncommitted changes; empty outside a checkout."""
    root = Path(__file__).resolve().parents[2]  # worker/bench/report.py -> the checkout
    if not (root / ".git").exists():
        return ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return 0.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(result: Json, path: Path) -> None:
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")


def print_report(result: Json, console: Console) -> None:
    """The measured numbers as tables: what was measured, then what it ran on."""
    if result["bench"] == "all":
        _print_side_by_side(result, console)
        _print_context(result, console)
        return
    table = Table(title=f"tailor bench {result['bench']}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in _rows(result):
        table.add_row(name, value)
    console.print(table)
    _print_context(result, console)


def _print_context(result: Json, console: Console) -> None:
    options = result["options"]
    console.print(
        "workload: " + ", ".join(f"{key} {value}" for key, value in options.items()),
        highlight=False,
        soft_wrap=True,
    )
    host = result["machine"]
    console.print(
        f"machine: {host['cpu_model']}, {host['cores']} cores, {host['memory_gib']} GiB; "
        f"Python {host['python']}, numpy {host['numpy']}; tailor {host['tailor']}"
        + (f" at {host['git']}" if host["git"] else "")
        + (
            f"; Redis {host['redis_server']}, librdkafka {host['librdkafka']}"
            if "redis_server" in host
            else ""
        ),
        highlight=False,
        soft_wrap=True,
    )


def _rows(result: Json) -> list[tuple[str, str]]:
    if result["bench"] == "core":
        batch = result["batch_ms"]
        return [
            ("events measured (after warm-up)", f"{result['events']:,}"),
            ("warm-up events (not timed)", f"{result['warmup_events']:,}"),
            ("events/s", f"{result['events_per_s']:,.0f}"),
            ("lists/s", f"{result['lists_per_s']:,.0f}"),
            ("batches", f"{result['batches']:,}"),
            ("batch p50 ms", f"{batch['p50']:.1f}"),
            ("batch p95 ms", f"{batch['p95']:.1f}"),
            ("batch p99 ms", f"{batch['p99']:.1f}"),
            ("batch max ms", f"{batch['max']:.1f}"),
            ("items in catalog", f"{result['catalog_items']:,}"),
            ("distinct users per batch (mean)", f"{result['distinct_users_per_batch']:.1f}"),
            ("users seen", f"{result['users_seen']:,}"),
            ("catalog load s", f"{result['catalog_load_s']:.1f}"),
            (
                "text neighbours filled s (background, untimed)",
                _seconds(result.get("content_fill_s")),
            ),
        ]
    drain, latency = result["drain"], result["latency"]
    ms = latency["ms"]
    return [
        ("items in catalog", f"{result['catalog_items']:,}"),
        ("catalog load s (worker start)", f"{result['catalog_load_s']:.1f}"),
        ("worker process start s (spawn to consuming)", f"{result['worker_start_s']:.1f}"),
        (
            "text neighbours filled s (spawn to done, background)",
            _seconds(result.get("content_filled_s")),
        ),
        ("drain: events", f"{drain['events']:,}"),
        ("drain: seconds", f"{drain['seconds']:.2f}"),
        ("drain: events/s", f"{drain['events_per_s']:,.0f}"),
        ("drain: mean events per batch", f"{drain['mean_batch']:.0f}"),
        ("drain: mean batch processing ms", f"{drain['batch_ms_mean']:.1f}"),
        ("drain: mean Redis round trip ms", f"{drain['redis_ms_mean']:.2f}"),
        ("drain: lists published", f"{drain['lists_published']:,}"),
        ("drain: model deltas published", f"{drain.get('model_deltas', 0):,}"),
        (
            "drain: model delta bytes per event (Kafka out)",
            f"{drain.get('model_delta_bytes_per_event', 0.0):,.0f}",
        ),
        ("latency: events", f"{latency['events']:,}"),
        (
            "latency: rate asked / achieved (/s)",
            f"{latency['rate']:,.0f} / {latency['achieved_rate']:,.0f}",
        ),
        ("latency: events with a list", f"{latency['covered']:,}"),
        ("latency: missing", f"{latency['missing']:,}"),
        ("latency: mean events per batch", f"{latency['mean_batch']:.1f}"),
        ("latency: mean batch processing ms", f"{latency['batch_ms_mean']:.1f}"),
        ("latency: mean Redis round trip ms", f"{latency['redis_ms_mean']:.2f}"),
        ("event -> list p50 ms", f"{ms['p50']:.1f}"),
        ("event -> list p95 ms", f"{ms['p95']:.1f}"),
        ("event -> list p99 ms", f"{ms['p99']:.1f}"),
        ("event -> list max ms", f"{ms['max']:.1f}"),
        ("worker exit status (after SIGTERM)", str(result["worker_exit_code"])),
    ]


_RSS, _COMMANDS, _BYTES_IN = "peak_rss_mb", "redis_commands_per_event", "kafka_bytes_in_per_event"
#: The BENCHMARKS.md section that ``--append-benchmarks`` adds rows to.
SIDE_BY_SIDE_HEADING = "## Issue 11: side by side"
_NAMES = {
    "tailor": "Tailor (`tailor run`)",
    "peer": "peer (Quix Streams + River)",
    "relay": "relay",
}


def _column_title(run: Json, several_sizes: bool) -> str:
    title = _NAMES[run["system"]]
    return f"{title} @ {run['items']:,}" if several_sizes and run["system"] != "relay" else title


def side_by_side_rows(result: Json) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The table of a side-by-side run: column titles, then (measure, cell per column)."""
    runs: list[Json] = result["runs"]
    several = len(result["options"]["items"]) > 1
    titles = [_column_title(run, several) for run in runs]
    compared = {row["items"]: row for row in result["comparisons"]}

    def row(name: str, cell: Callable[[Json], str]) -> tuple[str, list[str]]:
        return name, [cell(run) for run in runs]

    def latency(phase: str, key: str) -> Callable[[Json], str]:
        return lambda run: f"{run[phase]['ms'][key]:.1f}"

    def compare(key: str, shown: str) -> Callable[[Json], str]:
        def cell(run: Json) -> str:
            value = compared.get(run["items"], {}).get(key) if run["system"] == "tailor" else None
            return shown.format(value) if value is not None else ""

        return cell

    def memory(run: Json) -> str:
        used = run.get("redis_memory")
        return f"{used['bytes_per_user']:,.0f} ({used['users']:,} users)" if used else "-"

    def million(run: Json) -> str:
        used = run.get("redis_memory")
        return f"{used['mib_per_million_users']:,.0f}" if used else "-"

    def paced(phase: str, label: str) -> list[tuple[str, list[str]]]:
        """A paced phase's rows: the rate asked and sent, then its latency percentiles."""

        def rates(run: Json) -> str:
            return f"{run[phase]['rate']:,.0f} / {run[phase]['achieved_rate']:,.0f}"

        return [
            row(f"{label}: rate asked / sent (/s)", rates),
            row("  event -> output p50 ms", latency(phase, "p50")),
            *(row(f"  {q} ms", latency(phase, q)) for q in ("p95", "p99", "max")),
        ]

    rows = [
        row("catalog items", lambda run: f"{run['items']:,}" if run["system"] != "relay" else "-"),
        row("drain events/s", lambda run: f"{run['drain']['events_per_s']:,.0f}"),
        row("  x the peer's", compare("throughput_x_peer", "{:.2f}x")),
        row("  share of the relay's", compare("throughput_of_relay", "{:.1%}")),
        row("CPU ms per 1,000 events", lambda run: f"{run['drain']['cpu_ms_per_1000']:,.0f}"),
        row("  x the peer's", compare("cpu_per_event_x_peer", "{:.2f}x")),
        row("peak RSS MB per process", lambda run: " / ".join(f"{m:,.0f}" for m in run[_RSS])),
        row("start to first output s", lambda run: f"{run['start_to_first_output_s']:.1f}"),
        row(
            "  text neighbours filled s (background)",
            lambda run: _seconds(run.get("content_filled_s")),
        ),
        *paced("latency_half_drain", "half drain"),
        *paced("latency_at_rate", "at --rate"),
        row("Redis commands per event", lambda run: f"{run['drain'][_COMMANDS]:.2f}"),
        row(
            "Redis round trips per event (reads)",
            lambda run: f"{run['drain']['redis_round_trips_per_event']:.3f}",
        ),
        row("Kafka bytes in per event", lambda run: f"{run['drain'][_BYTES_IN]:,.0f}"),
        row(
            "Kafka bytes out per event",
            lambda run: f"{run['drain']['kafka_bytes_out_per_event']:,.0f}",
        ),
        row("Redis bytes per user (mean)", memory),
        row("  MiB per 1M users", million),
        row("outputs published (drain + paced)", lambda run: f"{run['outputs']:,}"),
    ]
    return titles, rows


def _print_side_by_side(result: Json, console: Console) -> None:
    if result["runs"]:
        titles, rows = side_by_side_rows(result)
        table = Table(title="tailor bench: side by side", title_justify="left")
        table.add_column("measure", no_wrap=True)
        for title in titles:
            table.add_column(title, justify="right")
        for name, cells in rows:
            if any(cells):  # a comparison with a system that did not run is left out
                table.add_row(name, *cells)
        console.print(table)
        console.print(_FOOTNOTE, highlight=False, soft_wrap=True)
    if result["core"]:
        table = Table(title="recommender core alone (no I/O)", title_justify="left")
        table.add_column("catalog items")
        for title in ("events/s", "batch p50 ms", "batch p99 ms", "catalog load s"):
            table.add_column(title, justify="right")
        for core in result["core"]:
            table.add_row(
                f"{core['catalog_items']:,}",
                f"{core['events_per_s']:,.0f}",
                f"{core['batch_ms']['p50']:.1f}",
                f"{core['batch_ms']['p99']:.1f}",
                f"{core['catalog_load_s']:.1f}",
            )
        console.print(table)


_FOOTNOTE = (
    "Each system read the same events from topics of its own. Drain: from the first "
    "produce to the first output covering the last event, as a reader of the output topic "
    "sees it. CPU and peak RSS: /proc of the system's processes. Redis round trips: read "
    "events on the server's client sockets (INFO stats total_reads_processed), about one "
    "per request or pipeline. Kafka bytes: events in (plus model deltas read by Tailor "
    "workers), outputs out (lists, plus Tailor's model deltas). The peer handles one "
    "message at a time: a Redis GET and SET per event, in-memory co-visitation and "
    "popularity, a River logistic regression scoring each candidate; no taste vectors, "
    "content neighbours, trending decay, segments, diversity, exploration, exactly-once "
    "state or shared models (README, Benchmarks)."
)


def markdown_row(result: Json, command: str) -> str:
    """One line of the BENCHMARKS.md table: when, what, and the headline figures."""
    runs = result["runs"]

    def of(system: str, items: int | None = None) -> Json | None:
        return next(
            (
                run
                for run in runs
                if run["system"] == system and (items is None or run["items"] == items)
            ),
            None,
        )

    first = result["options"]["items"][0]
    tailor, peer, relay = of("tailor", first), of("peer", first), of("relay")
    compared: Json = next((row for row in result["comparisons"] if row["items"] == first), {})

    def each(key: Callable[[Json], float | None], shown: str) -> str:
        values = [key(run) if run else None for run in (tailor, peer, relay)]
        return " / ".join("-" if value is None else shown.format(value) for value in values)

    host = result["machine"]
    cells = [
        result["when"][:10],
        f"`{host['git'] or '?'}`",
        f"{host['cores']} cores, {host['cpu_model']}",
        f"`{command}`",
        f"{first:,}",
        each(lambda run: run["drain"]["events_per_s"], "{:,.0f}"),
        f"{compared['throughput_x_peer']:.2f}x" if "throughput_x_peer" in compared else "-",
        f"{compared['throughput_of_relay']:.1%}" if "throughput_of_relay" in compared else "-",
        each(lambda run: run["drain"]["cpu_ms_per_1000"], "{:,.0f}"),
        each(lambda run: run["latency_at_rate"]["ms"]["p99"], "{:.1f}"),
        each(lambda run: run["latency_half_drain"]["ms"]["p99"], "{:.1f}"),
        each(lambda run: max(run["peak_rss_mb"]), "{:,.0f}"),
        each(
            lambda run: run["redis_memory"]["bytes_per_user"] if run["redis_memory"] else None,
            "{:,.0f}",
        ),
    ]
    return "| " + " | ".join(cells) + " |"


_TABLE_HEAD = (
    "| date | commit | machine | command | items | drain events/s T / P / R | T x peer "
    "| T of relay | CPU ms per 1k events T / P / R | p99 ms at --rate T / P / R "
    "| p99 ms at half drain T / P / R | peak RSS MB T / P / R | Redis bytes per user T / P |\n"
    "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def append_benchmarks(result: Json, path: Path, command: str) -> None:
    """Add the run's row to the side-by-side section of ``path`` (made when missing)."""
    text = path.read_text() if path.exists() else ""
    line = markdown_row(result, command)
    lines = text.splitlines()
    if SIDE_BY_SIDE_HEADING not in lines:
        block = [
            "",
            SIDE_BY_SIDE_HEADING,
            "",
            "Rows appended by `tailor bench --append-benchmarks` (T: Tailor, P: the peer, R: "
            "the relay).",
            "",
            *_TABLE_HEAD.split("\n"),
            line,
        ]
        path.write_text(text.rstrip("\n") + "\n" + "\n".join(block) + "\n")
        return
    start = lines.index(SIDE_BY_SIDE_HEADING)
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    table = [k for k in range(start, end) if lines[k].startswith("| ")]
    if table:
        at = table[-1] + 1
        lines.insert(at, line)
    else:
        lines[end:end] = ["", *_TABLE_HEAD.split("\n"), line, ""]
    path.write_text("\n".join(lines) + "\n")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
