"""Recommendations: what Tailor publishes to the output topic (key = user_id)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from worker.contract.events import SCHEMA_VERSION
from worker.contract.types import Identifier

__all__ = ["Recommendation", "RecommendedItem"]


class RecommendedItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    item_id: Identifier
    score: float
    reasons: list[str] = Field(description="where the item came from, in the user's words")


class Recommendation(BaseModel):
    """A user's refreshed top-K.

    One list may cover several events of the user from one micro-batch: ``source_event_id``
    is the latest of them and ``covered_event_ids`` names them all, so a reader can drop
    duplicates (output is at least once).

    ``variant`` names the experiment variant that made the list (README "Experiments"); it
    is absent when no experiment is configured. Adding an optional field keeps
    ``schema_version`` 1: readers ignore fields they do not know (the schema allows them).
    The version goes up only when a field is removed, renamed, made required or changes
    meaning.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    user_id: Identifier
    items: list[RecommendedItem]
    source_event_id: Identifier
    covered_event_ids: list[Identifier]
    generated_at: datetime
    model_version: str
    variant: str | None = Field(
        None,
        max_length=32,
        description="the experiment variant that made this list ('control' for users outside "
        "every variant's share); absent without an experiment",
    )
