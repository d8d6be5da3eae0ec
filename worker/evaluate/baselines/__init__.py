"""Baselines for the prequential harness: what Tailor has to beat, each given a fair setup.

Every baseline learns from the same micro-batches as Tailor and is asked for each touched
user's top-k right after; all of them hide the current session's items when tuned to,
top lists up with popular items, and were tuned on the first fifth of a log only, over
the small grids in :data:`PARAM_GRIDS` (``tailor evaluate --tune`` reruns that search).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from worker.contract import Event
from worker.evaluate.baselines.als import RetrainedAls
from worker.evaluate.baselines.common import BaselineBase
from worker.evaluate.baselines.cooccurrence import Cooccurrence
from worker.evaluate.baselines.popularity import Popular, Trending
from worker.evaluate.baselines.river_mf import RiverMF
from worker.evaluate.baselines.sknn import SessionKnn

__all__ = [
    "BASELINE_NAMES",
    "DEFAULT_PARAMS",
    "PARAM_GRIDS",
    "Baseline",
    "make_baseline",
    "make_baselines",
]


class Baseline(Protocol):
    """What the harness calls; the same shape as its ``Model``."""

    name: str

    def learn(self, events: Sequence[Event]) -> None: ...

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]: ...


_CLASSES: dict[str, type[BaselineBase]] = {
    cls.name: cls for cls in (Popular, Trending, Cooccurrence, SessionKnn, RiverMF, RetrainedAls)
}

BASELINE_NAMES: tuple[str, ...] = tuple(_CLASSES)

#: Tuned on the first fifth of the UCI Online Retail log (397,924 purchases with a customer;
#: user = CustomerID, item = StockCode, session = InvoiceNo), keeping the best HR@20 of
#: :data:`PARAM_GRIDS`, replayed one event per batch. HR@20 / MRR@20 on that fifth:
#: popular .071/.018, trending .081/.020, cooccurrence .307/.147, sknn .300/.139,
#: river-mf .089/.021, als .111/.028. Why these values:
#:
#: - popular, trending: hiding the current basket helps a little (the next item of a
#:   basket is rarely already in it); a week's half-life beats a day or a month.
#: - cooccurrence: pairs within the basket (not across baskets), only the 20 previous items
#:   of it, and the last two items of the user with the older weighing 0.3: the order of
#:   scanning makes the last item by far the best cue.
#: - sknn: V-SKNN (linear weighting) on the last 2 items of the basket (10 items: .269);
#:   the last items are the cue here too; a larger sample costs time and changes nothing.
#: - river-mf: uniform negatives beat popularity-sampled ones (the item bias then carries
#:   popularity), a learning rate of 0.1 beats 0.02-0.05 and diverges at 0.2.
#: - als: 64 factors, 5 iterations (conjugate gradient) fit about 300 daily refits of the
#:   whole year in the time budget (32 factors: -0.006 HR); regularisation barely matters;
#:   confidence alpha=1 on summed weights (a purchase weighs 4); already-bought items are
#:   NOT filtered (that halves HR: customers of this shop reorder).
DEFAULT_PARAMS: dict[str, dict[str, object]] = {
    "popular": {"hide_session": True},
    "trending": {"half_life_s": 604800.0, "hide_session": True},
    "cooccurrence": {"scope": "session", "window": 20, "recent": 2, "decay": 0.3},
    "sknn": {"k_neighbours": 100, "sample_size": 500, "current_items": 2, "weighting": "linear"},
    "river-mf": {
        "factors": 32,
        "learning_rate": 0.1,
        "l2": 0.001,
        "negatives": 4,
        "sampling": "uniform",
        "candidates": 300,
    },
    "als": {
        "factors": 64,
        "regularization": 0.05,
        "iterations": 5,
        "alpha": 1.0,
        "filter_liked": False,
        "retrain_every_s": 86400.0,
    },
}


def _grid(name: str, *changes: dict[str, object]) -> list[dict[str, object]]:
    """Whole parameter sets: each change applied to the tuned defaults."""
    return [{**DEFAULT_PARAMS[name], **change} for change in changes]


#: The grid each baseline was tuned over (complete parameter sets, defaults included), for
#: ``tailor evaluate --tune``: replay each point on the first fifth, keep the best HR@K.
PARAM_GRIDS: dict[str, list[dict[str, object]]] = {
    "popular": _grid(
        "popular",
        {"hide_session": False},
        {"hide_session": True},
        {"hide_session": True, "session_gap_s": 3600.0},
    ),
    "trending": _grid(
        "trending",
        {"half_life_s": 3600.0},
        {"half_life_s": 21600.0},
        {"half_life_s": 86400.0},
        {"half_life_s": 604800.0},
        {"half_life_s": 2592000.0},
        {"half_life_s": 604800.0, "hide_session": False},
    ),
    "cooccurrence": _grid(
        "cooccurrence",
        {"window": 50, "recent": 5, "decay": 0.8},
        {"window": 50, "recent": 5, "decay": 0.8, "scope": "user"},
        {"window": 50, "recent": 10, "decay": 0.9},
        {"window": 20, "recent": 5, "decay": 0.8},
        {"window": 20, "recent": 1},
        {"window": 10, "recent": 1},
        {"window": 20, "recent": 2, "decay": 0.3},
        {"window": 20, "recent": 3, "decay": 0.5},
    ),
    "sknn": _grid(
        "sknn",
        {"current_items": 10},
        {"current_items": 10, "weighting": "none"},
        {"current_items": 10, "k_neighbours": 50},
        {"current_items": 20},
        {"current_items": 5},
        {"current_items": 3},
        {"current_items": 3, "k_neighbours": 50},
        {},
    ),
    "river-mf": _grid(
        "river-mf",
        {"sampling": "popularity", "learning_rate": 0.05, "factors": 16},
        {"sampling": "popularity", "learning_rate": 0.1, "factors": 16},
        {"learning_rate": 0.05, "factors": 16},
        {"learning_rate": 0.1, "factors": 16},
        {"learning_rate": 0.2, "factors": 16},
        {},
        {"candidates": 1000, "factors": 16},
        {"l2": 0.0001, "factors": 16},
    ),
    "als": _grid(
        "als",
        {"factors": 32},
        {"factors": 32, "alpha": 0.25},
        {"factors": 32, "alpha": 4.0},
        {"factors": 32, "regularization": 1.0},
        {"factors": 32, "regularization": 10.0},
        {},
        {"factors": 32, "filter_liked": True},
    ),
}


def make_baseline(name: str, params: Mapping[str, object] | None = None, seed: int = 7) -> Baseline:
    """One baseline by name, ``params`` over its defaults; unknown or ill-typed knobs fail."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINE_NAMES)}")
    merged: dict[str, object] = {**DEFAULT_PARAMS.get(name, {}), **(params or {})}
    hints = typing.get_type_hints(cls.__init__)
    accepted = {
        parameter.name
        for parameter in inspect.signature(cls.__init__).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    arguments: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in accepted or key == "seed":
            choices = ", ".join(sorted(accepted - {"seed"}))
            raise ValueError(f"{name}: unknown parameter {key!r}; it takes {choices}")
        arguments[key] = _checked(name, key, value, hints[key])
    if "seed" in accepted:
        arguments["seed"] = seed
    baseline: Baseline = cls(**arguments)
    return baseline


def make_baselines(
    names: Sequence[str],
    params: Mapping[str, Mapping[str, object]] | None = None,
    seed: int = 7,
) -> list[Baseline]:
    """The named baselines, each with ``params[name]`` over its tuned defaults."""
    params = params or {}
    return [make_baseline(name, params.get(name), seed) for name in names]


def _checked(name: str, key: str, value: object, kind: object) -> object:
    """Params come from JSON and command lines: accept 3 for 3.0, refuse True for 1."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    raise ValueError(f"{name}: parameter {key!r} must be {getattr(kind, '__name__', kind)}")
