"""``tailor bench --log``: a real interaction log as the load, instead of the synthetic stream.

The log is read by ``tailor evaluate``'s readers (:mod:`worker.evaluate.logs`): JSONL in
Tailor's event schema as it is, or delimited text through a subset of ``tailor
evaluate``'s column options, given as one ``--log-map`` (``user=COL,item=COL,time=COL``
and optionally ``session``, ``title``, ``type`` and the context fields). Events keep the
log's order and event time; the paced ones are stamped with the send time, as the
synthetic ones are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.bench.common import BenchError, Json
from worker.contract import EventType
from worker.evaluate.logs import CsvMapping, LogError, RowFilter, load_log

__all__ = ["LOG_MAP_FIELDS", "Replay", "load_replay", "parse_log_map"]

#: What ``--log-map`` may name: the columns of a :class:`CsvMapping`, and context fields.
LOG_MAP_FIELDS = ("user", "item", "time", "session", "title", "type")
_CONTEXT_FIELDS = ("country", "device", "locale", "page", "referrer")


@dataclass(frozen=True, slots=True)
class Replay:
    """A log's events and catalog as the topics carry them (JSON bodies)."""

    path: Path
    events: list[Json]
    catalog: list[Json]


def parse_log_map(
    text: str, time_format: str, filters: list[str], delimiter: str = ","
) -> CsvMapping:
    """``user=CustomerID,item=StockCode,time=InvoiceDate,...`` as a :class:`CsvMapping`."""
    named: dict[str, str] = {}
    for pair in (part.strip() for part in text.split(",") if part.strip()):
        name, _, column = pair.partition("=")
        if name not in LOG_MAP_FIELDS + _CONTEXT_FIELDS or not column or name in named:
            raise BenchError(
                f"--log-map {pair!r}: expected FIELD=COLUMN once per FIELD, FIELD one of "
                f"{', '.join(LOG_MAP_FIELDS + _CONTEXT_FIELDS)}"
            )
        named[name] = column
    missing = [name for name in ("item", "time") if name not in named]
    if missing:
        raise BenchError("--log-map needs " + " and ".join(f"{name}=COLUMN" for name in missing))
    try:
        parsed = tuple(RowFilter.parse(expression) for expression in filters)
    except LogError as error:
        raise BenchError(str(error)) from error
    return CsvMapping(
        item=named["item"],
        time=named["time"],
        user=named.get("user"),
        session=named.get("session"),
        type=named.get("type"),
        default_type=EventType.PURCHASE,
        time_format=time_format,
        delimiter=delimiter,
        filters=parsed,
        context={name: named[name] for name in _CONTEXT_FIELDS if name in named},
        title=named.get("title"),
    )


def load_replay(
    path: Path, mapping: CsvMapping | None, catalog: Path | None, events: int
) -> Replay:
    """The log's first ``events`` events (in time order) and its catalog."""
    try:
        log = load_log(path, mapping, catalog, events)
    except LogError as error:
        raise BenchError(f"--log: {error}") from error
    if len(log.events) < events:
        raise BenchError(
            f"--log {path}: {len(log.events):,} events, fewer than the {events:,} the run "
            "plays (warm-up, drain and both latency phases): lower --events"
        )
    return Replay(
        path=path,
        events=[event.model_dump(mode="json", exclude_none=True) for event in log.events],
        catalog=[item.model_dump(mode="json", exclude_none=True) for item in log.catalog.values()],
    )
