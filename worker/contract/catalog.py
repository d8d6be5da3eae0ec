"""Catalog items: the compacted catalog topic (key = item_id, null value = deleted)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.contract.types import Identifier, ShortText

__all__ = ["MAX_EMBEDDING_DIM", "CatalogItem"]

MAX_EMBEDDING_DIM = 1024


class CatalogItem(BaseModel):
    """Content features for content-based filtering, and availability for the filters."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    item_id: Identifier
    title: str = Field(default="", max_length=512)
    category: list[ShortText] = Field(
        default_factory=list, max_length=8, description="category path, most general first"
    )
    tags: list[ShortText] = Field(default_factory=list, max_length=64)
    price: float | None = Field(default=None, ge=0)
    available: bool = True
    embedding: list[float] | None = Field(default=None, max_length=MAX_EMBEDDING_DIM)

    @field_validator("embedding")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(math.isfinite(x) for x in value):
            raise ValueError("embedding values must be finite")
        return value

    @property
    def leaf_category(self) -> str | None:
        return self.category[-1] if self.category else None
