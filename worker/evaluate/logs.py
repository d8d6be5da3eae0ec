"""Interaction logs for the evaluation harness, read as they are published.

Two inputs: JSONL in Tailor's own event schema (what producers send to the events topic),
and delimited text (CSV, TSV, MovieLens-style ``::``) with a column mapping, so a public
log needs no conversion script. Rows are filtered by simple ``COLUMN OP VALUE``
conditions rather than code, so a command line can be written down in a README and read
by anyone. A separate item table (MovieLens' ``movies.dat``) can give the catalog: titles
and genres, which Tailor's content features read as words and categories.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from worker.contract import CatalogItem, Event, EventType

__all__ = [
    "RATING_SCALE",
    "CsvMapping",
    "ItemFile",
    "LoadedLog",
    "LogError",
    "RowFilter",
    "load_log",
    "read_catalog",
    "read_items",
]

_WORD = re.compile(r"[A-Za-z]{3,}")
_FILTER = re.compile(r"^\s*([^!=<>~]+?)\s*(==|!=|>=|<=|>|<|!~|~)\s*(.*)$")
#: The worker rejects clocks far ahead of "now" or before 2000; a replay is history, of
#: any age (MovieLens starts in 1997), so neither bound applies.
_REPLAY_CONTEXT = {
    "now": datetime(9000, 1, 1, tzinfo=UTC),
    "min_event_time": datetime(1, 1, 1, tzinfo=UTC),
}
#: Tailor reads a ``rate`` event's value on a 5-star scale (``event_weight``: value - 3),
#: so ratings out of another maximum are rescaled to it (``value_scale``).
RATING_SCALE = 5.0
#: Words of a title kept as tags; genres come first and are always kept.
_TITLE_TAGS = 32
_MAX_TAGS = 64


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
    """Which columns hold what; only ``item`` and ``time`` are required.

    ``delimiter`` may be longer than one character (MovieLens' ``::``); such files are
    split line by line, without CSV quoting. ``columns`` names the columns of a file that
    has no header line.
    """

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
    columns: tuple[str, ...] | None = None  # a header-less file's column names
    value: str | None = None  # a numeric column: the event's value (e.g. a rating)
    value_scale: float | None = None  # values out of this maximum, rescaled to RATING_SCALE


@dataclass(frozen=True, slots=True)
class ItemFile:
    """A separate item table (MovieLens' ``movies.dat``): the catalog of the replay.

    Every row becomes a :class:`CatalogItem`: its title's words are tags, its first
    category is the item's category and all its categories are tags too, so a genre
    reaches Tailor's content features both as a category and as a word.
    """

    path: Path
    key: str  # the column of item ids, matching the log's item ids
    title: str | None = None
    categories: str | None = None  # a column of categories, e.g. Crime|Drama
    categories_separator: str = "|"
    columns: tuple[str, ...] | None = None  # a header-less file's column names
    delimiter: str = ","


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
    items: ItemFile | None = None,
) -> LoadedLog:
    """Events in time order; rows with equal times keep their file order.

    The whole file is read and sorted before ``limit`` cuts it, so the first ``limit``
    events are the earliest ones even when the file is sorted by user (MovieTweetings).
    The catalog learnt from a ``title`` column holds the items of the kept events only;
    an item file or a catalog file is kept whole, as a live catalog would be.
    """
    if not path.exists():
        raise LogError(f"{path}: no such file")
    titles: dict[str, tuple[datetime, int, str]] = {}
    log = _read_jsonl(path) if mapping is None else _read_csv(path, mapping, titles)
    log.events.sort(key=lambda event: event.timestamp)
    if mapping is not None and mapping.session_gap_s is not None:
        _cut_sessions(log, mapping.session_gap_s)
    if limit is not None:
        del log.events[limit:]
    kept = {event.item_id for event in log.events}
    log.catalog = {
        item_id: _catalog_item(item_id, text)
        for item_id, (_, _, text) in titles.items()
        if item_id in kept
    }
    if items is not None:
        log.catalog.update(read_items(items))
    if catalog_path is not None:
        log.catalog.update(read_catalog(catalog_path))
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


def read_items(items: ItemFile) -> dict[str, CatalogItem]:
    """Every row of an item table as a catalog item; a bad row stops the run, naming it."""
    if not items.path.exists():
        raise LogError(f"--items {items.path}: no such file")
    table = _Table(items.delimiter, items.columns, "--items-columns", "--items-delimiter")
    catalog: dict[str, CatalogItem] = {}
    with _open_text(items.path) as handle:
        names, rows = _read_table(handle, table, items.path)
        _require_columns(
            names,
            {
                "--item-key": items.key,
                "--item-title": items.title,
                "--item-categories": items.categories,
            },
            f"the items file {items.path.name}",
            table,
        )
        for number, row in rows:
            item_id = _clean_id(row[items.key])
            if not item_id:
                raise LogError(f"--item-key {items.key}: empty on line {number} of {items.path}")
            text = row[items.title] if items.title else ""
            categories = (
                row[items.categories].split(items.categories_separator) if items.categories else []
            )
            try:
                catalog[item_id] = _catalog_item(item_id, text, categories)
            except ValidationError as error:
                raise LogError(
                    f"--items {items.path}: line {number}: not a catalog item: {_first(error)}"
                ) from None
    return catalog


def _read_jsonl(path: Path) -> LoadedLog:
    log = LoadedLog([], {})
    with _open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            log.rows_read += 1
            try:
                log.events.append(Event.model_validate_json(line, context=_REPLAY_CONTEXT))
            except ValidationError as error:
                log.rows_invalid += 1
                log.first_error = log.first_error or f"line {log.rows_read}: {_first(error)}"
    return log


def _read_csv(
    path: Path, mapping: CsvMapping, titles: dict[str, tuple[datetime, int, str]]
) -> LoadedLog:
    """The rows as events in file order; ``titles`` gets each item's earliest title."""
    if mapping.user is None and mapping.session is None:
        raise LogError("a CSV log needs --user or --session (the session then stands for a user)")
    log = LoadedLog([], {})
    parse_time = _time_parser(mapping.time_format)
    table = _Table(mapping.delimiter, mapping.columns, "--columns", "--delimiter")
    with _open_text(path) as handle:
        names, rows = _read_table(handle, table, path)
        _check_columns(names, mapping, table)
        for number, row in rows:
            log.rows_read += 1
            if not all(condition.keeps(row) for condition in mapping.filters):
                log.rows_dropped += 1
                continue
            try:
                event = _event_of(row, number, mapping, parse_time)
            except (ValueError, ValidationError) as error:
                log.rows_invalid += 1
                detail = _first(error) if isinstance(error, ValidationError) else str(error)
                log.first_error = log.first_error or f"line {number}: {detail}"
                continue
            log.events.append(event)
            if mapping.title and event.item_id:
                _keep_earliest(titles, event, number, row[mapping.title])
    return log


def _keep_earliest(
    titles: dict[str, tuple[datetime, int, str]], event: Event, number: int, text: str
) -> None:
    """An item's title is the one of its earliest event (file order breaks ties)."""
    assert event.item_id is not None
    known = titles.get(event.item_id)
    if known is None or (event.timestamp, number) < known[:2]:
        titles[event.item_id] = (event.timestamp, number, text)


def _event_of(
    row: dict[str, str],
    number: int,
    mapping: CsvMapping,
    parse_time: Callable[[str], datetime],
) -> Event:
    user = _clean_id(row[mapping.user]) if mapping.user else ""
    session = _clean_id(row[mapping.session]) if mapping.session else None
    when = parse_time(row[mapping.time].strip())
    if not user:
        if session is None:
            raise ValueError(f"empty {mapping.user} (filter such rows out with --filter)")
        user = session
    kind = row[mapping.type].strip().lower() if mapping.type else mapping.default_type.value
    return Event.model_validate(
        {
            "event_id": f"row-{number}",
            "user_id": user,
            "item_id": _clean_id(row[mapping.item]),
            "type": kind,
            "value": _value_of(row, mapping),
            "timestamp": when,
            "session_id": session,
            "context": {name: row[column].strip() for name, column in mapping.context.items()},
        },
        context=_REPLAY_CONTEXT,
    )


def _value_of(row: dict[str, str], mapping: CsvMapping) -> float | None:
    """The ``value`` column as a number, rescaled to 5 stars when ``value_scale`` is set."""
    if mapping.value is None:
        return None
    text = row[mapping.value].strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"--value {mapping.value}: {text!r} is not a number")
    if mapping.value_scale is not None:
        number *= RATING_SCALE / mapping.value_scale
    return number


def _cut_sessions(log: LoadedLog, gap_s: float) -> None:
    """Sessions for events without one, cut at gaps; on time-sorted events only.

    Cutting in file order would be wrong for a log sorted by user: a user's rows need
    not be in time order there, and gaps between them mean nothing.
    """
    cutter = _SessionCutter(gap_s)
    events: list[Event] = []
    for event in log.events:
        if event.session_id is not None:
            events.append(event)
            continue
        data = event.model_dump()
        data["session_id"] = cutter.session_of(event.user_id, event.epoch_seconds)
        try:
            events.append(Event.model_validate(data, context=_REPLAY_CONTEXT))
        except ValidationError as error:
            log.rows_invalid += 1
            log.first_error = log.first_error or f"{event.event_id}: {_first(error)}"
    log.events = events


class _SessionCutter:
    """Cuts each user's events into sessions at gaps longer than ``gap_s``."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self._last: dict[str, tuple[float, int]] = {}

    def session_of(self, user: str, at: float) -> str:
        last_at, number = self._last.get(user, (at, 0))
        if at - last_at > self.gap_s:
            number += 1
        self._last[user] = (at, number)
        return f"{user}#{number}"


def _catalog_item(item_id: str, text: str, categories: Iterable[str] = ()) -> CatalogItem:
    """Title words as tags; the first category as the category, and all as tags."""
    title = " ".join(text.split())[:200] or item_id
    names = list(dict.fromkeys(name.strip() for name in categories if name.strip()))
    words = sorted({word.lower() for word in _WORD.findall(title)})[:_TITLE_TAGS]
    tags = list(dict.fromkeys([name.lower() for name in names] + words))[:_MAX_TAGS]
    return CatalogItem(item_id=item_id, title=title, category=names[:1], tags=tags)


@dataclass(frozen=True, slots=True)
class _Table:
    """How to split a delimited file into named fields, and the options that say so."""

    delimiter: str
    columns: tuple[str, ...] | None  # None: the first line is a header
    columns_option: str
    delimiter_option: str


def _read_table(
    handle: IO[str], table: _Table, path: Path
) -> tuple[tuple[str, ...], Iterator[tuple[int, dict[str, str]]]]:
    """The column names, and each record as (line number, fields by name).

    A one-character delimiter goes through :mod:`csv` (quoting, embedded newlines); a
    longer one splits each line, as MovieLens' ``::`` files are written.
    """
    if not table.delimiter:
        raise LogError(f"{table.delimiter_option}: must not be empty")
    records = _records(handle, table.delimiter)
    if table.columns is not None:
        names = table.columns
    else:
        header = next(records, None)
        names = tuple(header[1]) if header is not None else ()
    return names, _named(records, names, table, path)


def _records(handle: IO[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank record."""
    if len(delimiter) == 1:
        reader = csv.reader(handle, delimiter=delimiter)
        for fields in reader:
            if fields:  # csv gives [] for a blank line
                yield reader.line_num, fields
        return
    for number, line in enumerate(handle, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield number, text.split(delimiter)


def _named(
    records: Iterator[tuple[int, list[str]]],
    names: tuple[str, ...],
    table: _Table,
    path: Path,
) -> Iterator[tuple[int, dict[str, str]]]:
    for number, fields in records:
        if len(fields) != len(names):
            raise LogError(_count_error(number, len(fields), names, table, path))
        yield number, dict(zip(names, fields, strict=True))


def _count_error(number: int, found: int, names: Sequence[str], table: _Table, path: Path) -> str:
    where = f"line {number} of {path.name} has {found} field{'s' * (found != 1)}"
    if table.columns is not None:
        return (
            f"{table.columns_option}: {where}, but {len(names)} columns are named "
            f"({', '.join(names)}); is {table.delimiter_option} {table.delimiter!r} right?"
        )
    return (
        f"{table.delimiter_option} {table.delimiter!r}: {where}, but the header line has "
        f"{len(names)}"
    )


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


def _check_columns(columns: Sequence[str], mapping: CsvMapping, table: _Table) -> None:
    wanted = {
        "--item": mapping.item,
        "--time": mapping.time,
        "--user": mapping.user,
        "--session": mapping.session,
        "--type": mapping.type,
        "--title": mapping.title,
        "--value": mapping.value,
        **{f"--context {name}": column for name, column in mapping.context.items()},
        **{f"--filter {f.column}{f.op}{f.value}": f.column for f in mapping.filters},
    }
    _require_columns(columns, wanted, "the log", table)


def _require_columns(
    columns: Sequence[str], wanted: dict[str, str | None], what: str, table: _Table
) -> None:
    """Every named column exists; else say which option named it, and what there is."""
    for option, column in wanted.items():
        if column is not None and column not in columns:
            hint = (
                f" (a file without a header line needs {table.columns_option})"
                if table.columns is None and _looks_like_data(columns)
                else ""
            )
            raise LogError(f"{option}: no column {column!r}; {what} has {', '.join(columns)}{hint}")


def _looks_like_data(columns: Sequence[str]) -> bool:
    """A "header" with a number in it is most likely the first row of a header-less file."""
    return any(name.strip().replace(".", "", 1).isdigit() for name in columns)


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
