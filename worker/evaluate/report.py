"""What a replay found, for people (a rich table, a plot) and for machines (JSON)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from worker.evaluate.harness import COLD_EVENTS, LONG_HISTORY, SPLITS, ModelScore

__all__ = ["results_json", "results_table", "split_definitions", "write_plot"]


#: Table columns of the splits but "first", which is the cold@K column already.
_SPLIT_COLUMNS = {
    "5-50": f"HR {COLD_EVENTS}-{LONG_HISTORY}",
    "more": f"HR >{LONG_HISTORY}",
    "seen": "HR seen",
    "new": "HR new",
}


def split_definitions(k: int) -> dict[str, Any]:
    """What each split holds, in words, for the JSON (its figures are HR and MRR at ``k``)."""
    return {
        "k": k,
        "first": f"users with fewer than {COLD_EVENTS} earlier events (cold@{k})",
        "5-50": f"users with {COLD_EVENTS} to {LONG_HISTORY} earlier events",
        "more": f"users with more than {LONG_HISTORY} earlier events",
        "seen": "the user had an earlier event on the item",
        "new": "the user had no earlier event on the item",
        "earlier_events": "every event of the user before this one, warm-up included, "
        "since the user's last forget",
    }


def results_table(
    scores: Sequence[ModelScore], catalog: set[str], title: str, baseline_of: str | None = None
) -> Table:
    """One row per model, the best value of each quality column in bold.

    An empty split (no scored event in it) shows a dash rather than a misleading 0.
    """
    ks = scores[0].ks if scores else (10, 20)
    columns = [f"HR@{k}" for k in ks] + [f"MRR@{k}" for k in ks]
    columns += [f"cold@{ks[-1]}", f"coverage@{ks[-1]}", *_SPLIT_COLUMNS.values()]
    table = Table(
        title=title,
        title_justify="left",
        caption=_caption(scores[0] if scores else None, ks[-1]),
        caption_justify="left",
    )
    table.add_column("model", no_wrap=True)
    for column in [*columns, "events/s"]:
        table.add_column(column, justify="right")
    rows: list[dict[str, float | None]] = [
        {**_quality(score, catalog), **_split_cells(score)} for score in scores
    ]
    best = {column: _best(row[column] for row in rows) for column in columns}
    for score, row in zip(scores, rows, strict=True):
        cells = [_cell(row[column], best[column]) for column in columns]
        name = f"[bold cyan]{score.name}[/]" if score.name == baseline_of else score.name
        table.add_row(name, *cells, f"{score.events_per_s:,.0f}")
    return table


def _best(values: Iterable[float | None]) -> float | None:
    return max((value for value in values if value is not None), default=None)


def _cell(value: float | None, best: float | None) -> str:
    if value is None:
        return "-"
    return f"[bold]{value:.4f}[/]" if value == best else f"{value:.4f}"


def _split_cells(score: ModelScore) -> dict[str, float | None]:
    return {
        column: round(score.splits[name].hit_rate, 6) if score.splits[name].counted else None
        for name, column in _SPLIT_COLUMNS.items()
    }


def _caption(score: ModelScore | None, k: int) -> str:
    """What the split columns hold, with each split's share of the scored events."""

    def share(name: str) -> str:
        if score is None or not score.counted:
            return "-"
        return f"{score.splits[name].counted / score.counted:.0%}"

    return (
        f"HR@{k} by the user's earlier events: cold@{k} fewer than {COLD_EVENTS} "
        f"({share('first')} of scored events), HR {COLD_EVENTS}-{LONG_HISTORY} "
        f"({share('5-50')}), HR >{LONG_HISTORY} ({share('more')}); by the item: HR seen, "
        f"the user had it before ({share('seen')}), HR new ({share('new')})"
    )


def results_json(scores: Sequence[ModelScore], catalog: set[str], run: Mapping[str, Any]) -> bytes:
    """The run's options and every model's figures and curve, for dashboards and diffs."""
    return orjson.dumps(
        {
            "run": dict(run),
            "catalog_items": len(catalog),
            "split_definitions": split_definitions(scores[0].ks[-1] if scores else 20),
            "models": [
                {
                    "name": score.name,
                    "counted": score.counted,
                    **_quality(score, catalog),
                    "events_per_s": round(score.events_per_s, 1),
                    "splits": _splits_json(score),
                    "curve": score.curve,
                }
                for score in scores
            ],
        },
        option=orjson.OPT_INDENT_2,
    )


def write_plot(scores: Sequence[ModelScore], path: Path, title: str) -> None:
    """HR@K of every model over the replay: where one pulls ahead is easier seen than read."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed for a file
    import matplotlib.pyplot as plt

    k = scores[0].ks[-1] if scores else 20
    figure, axes = plt.subplots(figsize=(10, 5.5), dpi=120)
    for score in scores:
        if score.curve:
            xs, _, ys = zip(*score.curve, strict=True)
            axes.plot(xs, ys, label=score.name, linewidth=2.4 if score.name == "tailor" else 1.2)
    axes.set_xlabel("events replayed")
    axes.set_ylabel(f"HR@{k} of the scored events so far")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _splits_json(score: ModelScore) -> dict[str, dict[str, float | int | None]]:
    """Each split's counts, with HR and MRR at the largest K (null when it is empty)."""
    figures: dict[str, dict[str, float | int | None]] = {}
    for name in SPLITS:
        split = score.splits[name]
        empty = split.counted == 0
        figures[name] = {
            "counted": split.counted,
            "hits": split.hits,
            "hr": None if empty else round(split.hit_rate, 6),
            "mrr": None if empty else round(split.mrr, 6),
        }
    return figures


def _quality(score: ModelScore, catalog: set[str]) -> dict[str, float]:
    ks = score.ks
    figures = {f"HR@{k}": score.hit_rate(k) for k in ks}
    figures |= {f"MRR@{k}": score.mrr(k) for k in ks}
    figures[f"cold@{ks[-1]}"] = score.cold_hit_rate
    figures[f"coverage@{ks[-1]}"] = score.coverage(catalog)
    return {name: round(value, 6) for name, value in figures.items()}
