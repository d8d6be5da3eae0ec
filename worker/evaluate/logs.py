"""Interaction logs for the evaluation harness, read as they are published.

Two inputs: JSONL in Tailor's own event schema (what producers send to the events topic),
and CSV with a column mapping, so a public log needs no conversion script. Rows are
filtered by simple ``COLUMN OP VALUE`` conditions rather than code, so a command line can
be written down in a README and read by anyone.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from worker.contract import CatalogItem, Event, EventType

__all__ = [
    "CsvMapping",
    "LoadedLog",
    "LogError",
    "RowFilter",
    "load_log",
    "read_catalog",
]

_WORD = re.compile(r"[A-Za-z]{3,}")
_FILTER = re.compile(r"^\s*([^!=<>~]+?)\s*(==|!=|>=|<=|>|<|!~|~)\s*(.*)$")
#: The worker rejects clocks far ahead of "now" or before 2000; a replay is history, of
#: any age (MovieLens starts in 1997), so neither bound applies.
_REPLAY_CONTEXT = {
    "now": datetime(9000, 1, 1, tzinfo=UTC),
    "min_event_time": datetime(1, 1, 1, tzinfo=UTC),
}


class LogError(ValueError):
    """The log or its mapping cannot be read; the message says which row or option."""


@dataclass(frozen=True, slots=True)
class RowFilter:
    """Keep a row only when ``column op value`` holds (``~`` is a regex search)."""

    column: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        match = _FILTER.match(text)
        if match is None:
            raise LogError(
                f"--filter {text!r}: expected COLUMN OP VALUE with OP one of "
                "== != > >= < <= ~ !~ (e.g. 'Quantity>0', 'InvoiceNo!~^C')"
            )
        column, op, value = match.groups()
        if op in {"~", "!~"}:
            try:
                re.compile(value)
            except re.error as error:
                raise LogError(f"--filter {text!r}: bad regular expression: {error}") from None
        return cls(column.strip(), op, value.strip())

    def keeps(self, row: dict[str, str]) -> bool:
        cell = (row.get(self.column) or "").strip()
        if self.op in {"~", "!~"}:
            return (re.search(self.value, cell) is not None) == (self.op == "~")
        if self.op in {"==", "!="}:
            return (cell == self.value) == (self.op == "==")
        try:
            left, right = float(cell), float(self.value)
        except ValueError:
            return False  # a number comparison on a non-number keeps nothing
        return {">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right}[
            self.op
        ]


@dataclass(frozen=True, slots=True)
class CsvMapping:
    """Which CSV columns hold what; only ``item`` and ``time`` are required."""

    item: str
    time: str
    user: str | None = None
    session: str | None = None
    type: str | None = None  # a column of event types; else every row is ``default_type``
    default_type: EventType = EventType.PURCHASE
    time_format: str = "iso"  # iso, epoch, epoch_ms, or a strptime format (read as UTC)
    delimiter: str = ","
    filters: tuple[RowFilter, ...] = ()
    session_gap_s: float | None = None
    context: dict[str, str] = field(default_factory=dict)  # Context field -> column
    title: str | None = None  # a column of item text: the catalog for content features


@dataclass(slots=True)
class LoadedLog:
    events: list[Event]
    catalog: dict[str, CatalogItem]
    rows_read: int = 0
    rows_dropped: int = 0  # by filters
    rows_invalid: int = 0  # could not be made an event
    first_error: str | None = None


def load_log(
    path: Path,
    mapping: CsvMapping | None = None,
    catalog_path: Path | None = None,
    limit: int | None = None,
) -> LoadedLog:
    """Events in time order (stable: rows with equal times keep their file order)."""
    if not path.exists():
        raise LogError(f"{path}: no such file")
    log = _read_jsonl(path, limit) if mapping is None else _read_csv(path, mapping, limit)
    if catalog_path is not None:
        log.catalog.update(read_catalog(catalog_path))
    log.events.sort(key=lambda event: event.timestamp)
    return log


def read_catalog(path: Path) -> dict[str, CatalogItem]:
    """A JSONL catalog in Tailor's catalog schema (what the catalog topic carries)."""
    items: dict[str, CatalogItem] = {}
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = CatalogItem.model_validate_json(line)
            except ValidationError as error:
                raise LogError(f"{path}:{number}: not a catalog item: {_first(error)}") from None
            items[item.item_id] = item
    return items


def _read_jsonl(path: Path, limit: int | None) -> LoadedLog:
    log = LoadedLog([], {})
    with _open_text(path) as handle:
        for line in handle:
            if limit is not None and len(log.events) >= limit:
                break
            if not line.strip():
                continue
            log.rows_read += 1
            try:
                log.events.append(Event.model_validate_json(line, context=_REPLAY_CONTEXT))
            except ValidationError as error:
                log.rows_invalid += 1
                log.first_error = log.first_error or f"line {log.rows_read}: {_first(error)}"
    return log


def _read_csv(path: Path, mapping: CsvMapping, limit: int | None) -> LoadedLog:
    if mapping.user is None and mapping.session is None:
        raise LogError("a CSV log needs --user or --session (the session then stands for a user)")
    log = LoadedLog([], {})
    parse_time = _time_parser(mapping.time_format)
    sessions = _SessionCutter(mapping.session_gap_s)
    with _open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=mapping.delimiter)
        _check_columns(reader.fieldnames or [], mapping)
        for number, row in enumerate(reader, start=2):
            if limit is not None and len(log.events) >= limit:
                break
            log.rows_read += 1
            if not all(condition.keeps(row) for condition in mapping.filters):
                log.rows_dropped += 1
                continue
            try:
                event = _event_of(row, number, mapping, parse_time, sessions)
            except (ValueError, ValidationError) as error:
                log.rows_invalid += 1
                detail = _first(error) if isinstance(error, ValidationError) else str(error)
                log.first_error = log.first_error or f"row {number}: {detail}"
                continue
            log.events.append(event)
            if mapping.title and event.item_id and event.item_id not in log.catalog:
                log.catalog[event.item_id] = _catalog_item(event.item_id, row[mapping.title])
    return log


def _event_of(
    row: dict[str, str],
    number: int,
    mapping: CsvMapping,
    parse_time: Callable[[str], datetime],
    sessions: _SessionCutter,
) -> Event:
    user = _clean_id(row[mapping.user]) if mapping.user else ""
    session = _clean_id(row[mapping.session]) if mapping.session else None
    when = parse_time(row[mapping.time].strip())
    if not user:
        if session is None:
            raise ValueError(f"empty {mapping.user} (filter such rows out with --filter)")
        user = session
    if session is None and mapping.session_gap_s is not None:
        session = sessions.session_of(user, when.timestamp())
    kind = row[mapping.type].strip().lower() if mapping.type else mapping.default_type.value
    return Event.model_validate(
        {
            "event_id": f"row-{number}",
            "user_id": user,
            "item_id": _clean_id(row[mapping.item]),
            "type": kind,
            "timestamp": when,
            "session_id": session,
            "context": {name: row[column].strip() for name, column in mapping.context.items()},
        },
        context=_REPLAY_CONTEXT,
    )


class _SessionCutter:
    """Cuts each user's events into sessions at gaps longer than ``gap_s``."""

    def __init__(self, gap_s: float | None) -> None:
        self.gap_s = gap_s
        self._last: dict[str, tuple[float, int]] = {}

    def session_of(self, user: str, at: float) -> str:
        assert self.gap_s is not None
        last_at, number = self._last.get(user, (at, 0))
        if at - last_at > self.gap_s:
            number += 1
        self._last[user] = (at, number)
        return f"{user}#{number}"


def _catalog_item(item_id: str, text: str) -> CatalogItem:
    title = " ".join(text.split())[:200] or item_id
    tags = sorted({word.lower() for word in _WORD.findall(title)})[:32]
    return CatalogItem(item_id=item_id, title=title, tags=tags)


def _time_parser(time_format: str) -> Callable[[str], datetime]:
    if time_format == "iso":
        return _iso
    if time_format == "epoch":
        return lambda text: datetime.fromtimestamp(float(text), tz=UTC)
    if time_format == "epoch_ms":
        return lambda text: datetime.fromtimestamp(float(text) / 1000.0, tz=UTC)
    if "%" not in time_format:
        raise LogError(
            f"--time-format {time_format!r}: use iso, epoch, epoch_ms or a strptime format"
        )
    return lambda text: datetime.strptime(text, time_format).replace(tzinfo=UTC)


def _iso(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _check_columns(columns: Sequence[str], mapping: CsvMapping) -> None:
    wanted = {
        "--item": mapping.item,
        "--time": mapping.time,
        "--user": mapping.user,
        "--session": mapping.session,
        "--type": mapping.type,
        "--title": mapping.title,
        **{f"--context {name}": column for name, column in mapping.context.items()},
        **{f"--filter {f.column}{f.op}{f.value}": f.column for f in mapping.filters},
    }
    for option, column in wanted.items():
        if column is not None and column not in columns:
            raise LogError(f"{option}: no column {column!r}; the log has {', '.join(columns)}")


def _clean_id(text: str) -> str:
    """Ids exported through spreadsheets often read ``17850.0``; drop that ``.0``."""
    text = text.strip()
    return text[:-2] if text.endswith(".0") and text[:-2].isdigit() else text


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _first(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "event"
    return f"{where}: {problem['msg']}"
