"""What the benchmarks share: their error, percentiles, warm-up, chunks, progress bar."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = [
    "BenchError",
    "Json",
    "chunks",
    "percentiles",
    "progress_bar",
    "warmup_count",
    "warn_unfilled",
]


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Json = dict[str, Any]
T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark could not finish (a server away, the worker stopped, a timeout)."""


def percentiles(values: Sequence[float]) -> Json:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(array.max()),
        "mean": float(array.mean()),
    }


def warmup_count(events: int, share: float) -> int:
    if not 0 <= share < 1:
        raise ValueError("the warm-up share must be in [0, 1)")
    return int(events * share)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )


def warn_unfilled(console: Console, pending: int, timeout_s: float) -> None:
    """Say that the timed phases started before the text neighbours were all filled."""
    console.print(
        f"warning: text neighbours of {pending:,} items still unfilled after {timeout_s:.0f} s; "
        "the timed phases include what batches compute on the spot",
        style="yellow",
        highlight=False,
    )
