"""What a replay found, for people (a rich table, a plot) and for machines (JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from worker.evaluate.harness import COLD_EVENTS, ModelScore

__all__ = ["results_json", "results_table", "write_plot"]


def results_table(
    scores: Sequence[ModelScore], catalog: set[str], title: str, baseline_of: str | None = None
) -> Table:
    """One row per model, the best value of each quality column in bold."""
    ks = scores[0].ks if scores else (10, 20)
    columns = [f"HR@{k}" for k in ks] + [f"MRR@{k}" for k in ks]
    columns += [f"cold@{ks[-1]}", f"coverage@{ks[-1]}"]
    caption = (
        f"cold@{ks[-1]}: HR@{ks[-1]} on the events of users with fewer than "
        f"{COLD_EVENTS} earlier events"
    )
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("model", no_wrap=True)
    for column in [*columns, "events/s"]:
        table.add_column(column, justify="right")
    rows = [_quality(score, catalog) for score in scores]
    best = {column: max(row[column] for row in rows) for column in columns} if rows else {}
    for score, row in zip(scores, rows, strict=True):
        cells = [
            f"[bold]{row[c]:.4f}[/]" if row[c] == best[c] else f"{row[c]:.4f}" for c in columns
        ]
        name = f"[bold cyan]{score.name}[/]" if score.name == baseline_of else score.name
        table.add_row(name, *cells, f"{score.events_per_s:,.0f}")
    return table


def results_json(scores: Sequence[ModelScore], catalog: set[str], run: Mapping[str, Any]) -> bytes:
    """The run's options and every model's figures and curve, for dashboards and diffs."""
    return orjson.dumps(
        {
            "run": dict(run),
            "catalog_items": len(catalog),
            "models": [
                {
                    "name": score.name,
                    "counted": score.counted,
                    **_quality(score, catalog),
                    "events_per_s": round(score.events_per_s, 1),
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


def _quality(score: ModelScore, catalog: set[str]) -> dict[str, float]:
    ks = score.ks
    figures = {f"HR@{k}": score.hit_rate(k) for k in ks}
    figures |= {f"MRR@{k}": score.mrr(k) for k in ks}
    figures[f"cold@{ks[-1]}"] = score.cold_hit_rate
    figures[f"coverage@{ks[-1]}"] = score.coverage(catalog)
    return {name: round(value, 6) for name, value in figures.items()}
