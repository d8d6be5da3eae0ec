"""Tuning on the warm-up share only: the same effort for Tailor and for every baseline.

Each model gets a small grid of settings; every grid point replays the leading share of
the log (the part ``--warmup`` keeps out of the scores) in one pass, scored after the
first quarter of that share, and the point with the best HR@K wins. Nothing from the
scored part of the log can leak into the choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.config import Settings
from worker.contract import CatalogItem, Event
from worker.evaluate.baselines import PARAM_GRIDS, make_baseline
from worker.evaluate.harness import Model, ModelScore, TailorModel, replay

__all__ = ["TAILOR_GRID", "GridPoint", "tune"]

#: Tailor's grid: settings a shop would try first (each point overrides TAILOR_* settings).
TAILOR_GRID: list[dict[str, object]] = [
    {},
    {"covis_neighbours": 64},
    {"covis_neighbours": 128},
    {"covis_half_life_s": 3 * 24 * 3600.0},
    {"covis_session_gap_s": 1e9},  # pair across sessions too
    {"covis_recent": 2},
    {"just_bought_window_s": 3600.0},
]

#: Share of the tuning slice replayed before scoring starts.
_TUNING_WARMUP = 0.25


@dataclass(frozen=True, slots=True)
class GridPoint:
    model: str  # "tailor" or a baseline name
    params: dict[str, object]
    score: ModelScore

    @property
    def label(self) -> str:
        return f"{self.model} {json.dumps(self.params, sort_keys=True)}"


def tune(
    events: Sequence[Event],
    settings: Settings,
    catalog: Mapping[str, CatalogItem],
    baselines: Sequence[str],
    k: int = 20,
    batch_size: int = 256,
    on_progress: Callable[[int], None] = lambda done: None,
) -> list[GridPoint]:
    """Every grid point of Tailor and ``baselines`` replayed over ``events``, in one pass."""
    points: list[tuple[str, dict[str, object], Model]] = [
        (
            "tailor",
            params,
            TailorModel(settings.with_overrides(**params), catalog, name=f"tailor {params}"),
        )
        for params in TAILOR_GRID
    ]
    for name in baselines:
        for params in PARAM_GRIDS.get(name, [{}]):
            points.append((name, params, make_baseline(name, params, seed=settings.seed)))
    scores = replay(
        events,
        [model for _, _, model in points],
        k=k,
        warmup=_TUNING_WARMUP,
        batch_size=batch_size,
        on_progress=on_progress,
    )
    return [
        GridPoint(name, params, score)
        for (name, params, _), score in zip(points, scores, strict=True)
    ]


def best_params(points: Sequence[GridPoint], k: int) -> dict[str, dict[str, Any]]:
    """The winning grid point of each model, by HR@K (MRR@K breaks ties)."""
    best: dict[str, GridPoint] = {}
    for point in points:
        current = best.get(point.model)
        key = (point.score.hit_rate(k), point.score.mrr(k))
        if current is None or key > (current.score.hit_rate(k), current.score.mrr(k)):
            best[point.model] = point
    return {name: dict(point.params) for name, point in best.items()}
