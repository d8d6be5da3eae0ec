"""What a benchmark run says about itself and how it is shown: the machine and commit it
ran on, the rich table, and the JSON that ``--json`` writes."""

from __future__ import annotations

import os
import platform
import subprocess
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

__all__ = ["machine_info", "now_iso", "print_report", "write_json"]


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
    table = Table(title=f"tailor bench {result['bench']}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in _rows(result):
        table.add_row(name, value)
    console.print(table)
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
        ]
    drain, latency = result["drain"], result["latency"]
    ms = latency["ms"]
    return [
        ("items in catalog", f"{result['catalog_items']:,}"),
        ("catalog load s (worker start)", f"{result['catalog_load_s']:.1f}"),
        ("worker process start s (spawn to consuming)", f"{result['worker_start_s']:.1f}"),
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
