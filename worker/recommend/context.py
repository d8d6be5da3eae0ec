"""What candidate gathering and list assembly read: the shared models and the settings.

The core (:mod:`worker.recommend.core`) owns the models and hands this view of them to
:mod:`~worker.recommend.candidates` and :mod:`~worker.recommend.lists`, so those modules
depend on the models alone, not on the core that calls them (no import cycle), and what
each function may touch is written in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.config import Settings
from worker.models.catalog import Catalog
from worker.models.content import ContentNeighbours
from worker.models.covisitation import CoVisitation
from worker.models.index import ItemIndex
from worker.models.ranker import Ranker
from worker.models.sessions import SessionNeighbours
from worker.models.taste import TasteModel
from worker.models.trending import Trending

__all__ = ["ModelContext"]


@dataclass(frozen=True, slots=True)
class ModelContext:
    """The models one batch is recommended from (built per batch: the core may replace
    its random generator when a checkpoint is installed)."""

    settings: Settings
    index: ItemIndex
    catalog: Catalog
    trending: Trending
    covis: CoVisitation
    content: ContentNeighbours
    sessions: SessionNeighbours
    taste: TasteModel
    ranker: Ranker
    rng: np.random.Generator
    deny_categories: frozenset[str]
    #: the ``n`` most popular items of a category (cached by the core across batches)
    category_top: Callable[[int, int], npt.NDArray[np.int64]]
    #: reason sentences by (reason, detail), kept by the core across batches and emptied
    #: when the catalog (titles, category names) changes
    sentences: dict[tuple[int, int], str | None]
