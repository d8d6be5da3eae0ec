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
    """

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    user_id: Identifier
    items: list[RecommendedItem]
    source_event_id: Identifier
    covered_event_ids: list[Identifier]
    generated_at: datetime
    model_version: str
