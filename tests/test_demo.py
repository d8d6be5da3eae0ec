"""The demo's summary: the backlog's drain and the live events' latency, told apart.

Why: the backlog is sent all at once, so its events queue behind each other for seconds;
one mean over it and the live events ("3427 ms") read like a slow product while each live
list arrives in tens of milliseconds.
"""

from __future__ import annotations

from worker.demo import Backlog, latency_rows


def test_backlog_and_live_latency_are_reported_apart() -> None:
    rows = latency_rows(Backlog(3456, 3.1, 3.427), [26.0, 14.2, 18.4, 21.0])
    assert rows == [
        ("backlog sent at once", "3,456 events in 3.1 s (1,115/s)"),
        ("backlog: mean wait per list", "3427 ms (queued behind the rest)"),
        ("live: event sent to its list", "median 20 ms (14-26 ms, 4 events)"),
    ]


def test_rows_fit_an_80_column_table_beside_the_summary() -> None:
    """Rich folds a wider table, which breaks the rows across lines in a CI log."""
    rows = latency_rows(Backlog(123_456, 1234.5, 98.765), [12_345.0, 1.0])
    label = max(len("recommendation lists published"), *(len(label) for label, _ in rows))
    assert all(label + len(text) + 7 <= 80 for _, text in rows), rows


def test_nothing_measured_nothing_shown() -> None:
    assert latency_rows(None, []) == []
    assert latency_rows(Backlog(10, 0.0, None), []) == [
        ("backlog sent at once", "10 events in 0.0 s (0/s)")
    ]
