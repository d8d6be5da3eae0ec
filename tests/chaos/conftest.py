"""Servers of the fault suite's own, and the figures table printed at the end.

The suite restarts Kafka and Redis, so it never borrows the shared test servers (nor
``TAILOR_TEST_BOOTSTRAP`` / ``TAILOR_TEST_REDIS_URL``): it starts a broker and a Redis with
persistence on (an append-only file, so data survives a restart) in directories of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from tests.chaos.driver import Figures, write_figures
from tests.servers import KafkaServer, RedisServer
from worker.bench import machine_info

FIGURES_KEY = pytest.StashKey[list[Figures]]()
STARTED_KEY = pytest.StashKey[float]()
FIGURES_FILE = Path(".tailor") / "chaos.json"

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scenario", "scenario"),
    ("outcome", "outcome"),
    ("events", "events"),
    ("users", "users"),
    ("malformed", "malformed"),
    ("kills", "kills"),
    ("rebalances", "rebalances"),
    ("zombies", "zombies"),
    ("redis_restarts", "redis restarts"),
    ("kafka_restarts", "kafka restarts"),
    ("lost", "lost"),
    ("doubled", "doubled"),
    ("handled_twice", "handled twice"),
    ("replayed", "replayed"),
    ("stale_writes", "stale writes"),
    ("catch_up_s", "catch-up s"),
    ("seconds", "seconds"),
)
#: The shared models, merged as a starting worker merges them ("model") against one
#: uninterrupted worker replaying the same events ("replay"): the second table.
_MODEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scenario", "scenario"),
    ("model_events", "model events"),
    ("replay_events", "replay events"),
    ("model_visits", "model visits"),
    ("replay_visits", "replay visits"),
    ("model_trend_weight", "model trend weight"),
    ("replay_trend_weight", "replay trend weight"),
    ("model_pairs", "model pairs"),
    ("log_pairs", "whole-topic pairs"),
    ("replay_pairs", "replay pairs"),
    ("lessons_ratio", "lessons ratio"),
    ("model_deltas", "deltas"),
    ("refused_deltas", "refused"),
    ("duplicate_deltas", "duplicate"),
    ("restored_from", "checkpoint at"),
    ("models_s", "check s"),
)


@dataclass(frozen=True, slots=True)
class ChaosServers:
    kafka: KafkaServer
    redis: RedisServer


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES_KEY] = []
    config.stash[STARTED_KEY] = time.monotonic()


@pytest.fixture(scope="session")
def chaos_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosServers]:
    """A broker and a persistent Redis that the scenarios may stop and start at will."""
    kafka = KafkaServer(bootstrap="", directory=tmp_path_factory.mktemp("chaos-kafka")).start()
    try:
        directory = tmp_path_factory.mktemp("chaos-redis")
        redis_server = RedisServer(url="", directory=directory, persist=True).start()
        try:
            yield ChaosServers(kafka, redis_server)
        finally:
            redis_server.stop()
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def chaos_figures(pytestconfig: pytest.Config) -> list[Figures]:
    """Each scenario appends what it measured, pass or fail, for the table at the end."""
    return pytestconfig.stash[FIGURES_KEY]


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    """Print the figures (pytest hides test output) and keep them in .tailor/chaos.json."""
    figures = config.stash.get(FIGURES_KEY, [])
    if not figures:
        return
    seconds = round(time.monotonic() - config.stash[STARTED_KEY], 1)
    terminalreporter.section("chaos figures")
    _table(terminalreporter, figures, _COLUMNS)
    lost = sum(f.lost for f in figures)
    doubled = sum(f.doubled for f in figures)
    terminalreporter.write_line(
        f"total: {sum(f.events for f in figures):,} events, {sum(f.kills for f in figures)} "
        f"kills, {sum(f.rebalances for f in figures)} rebalances, {lost} lost, "
        f"{doubled} doubled, {sum(f.handled_twice for f in figures):,} events handled more "
        f"than once; suite {seconds} s"
    )
    path = config.rootpath / FIGURES_FILE
    write_figures(figures, path, {"suite_seconds": seconds, "machine": machine_info()})
    terminalreporter.write_line(f"figures written to {path}")
    terminalreporter.section("shared model totals")
    _table(terminalreporter, figures, _MODEL_COLUMNS)
    terminalreporter.write_line(
        "model: newest checkpoint + model topic; whole-topic: every delta, no checkpoint; "
        "replay: one uninterrupted worker, replayed by the test. Events, visits, pairs (co-visits) "
        "and trend weight must match; the lessons ratio is reported only."
    )


def _table(
    terminalreporter: TerminalReporter,
    figures: list[Figures],
    columns: tuple[tuple[str, str], ...],
) -> None:
    rows = [[label for _, label in columns]]
    rows += [[_cell(f.as_json()[name], name) for name, _ in columns] for f in figures]
    widths = [max(len(row[k]) for row in rows) for k in range(len(columns))]
    for row in rows:
        terminalreporter.write_line(
            "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        )


def _cell(value: object, name: str = "") -> str:
    if name == "lessons_ratio" and isinstance(value, float):
        return f"{value:.3f}"  # near 1: one decimal would hide the difference
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
