"""Generate ``schemas/*.json`` (JSON Schema) from the pydantic models.

The files are committed so that frontends in any language can validate what they produce;
a test regenerates them and fails when they drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from worker.contract.catalog import CatalogItem
from worker.contract.events import Event
from worker.contract.recommendations import Recommendation

__all__ = ["MODELS", "render_schemas", "write_schemas"]

MODELS: dict[str, type[BaseModel]] = {
    "event": Event,
    "catalog_item": CatalogItem,
    "recommendation": Recommendation,
}


def render_schemas() -> dict[str, str]:
    """File name -> JSON text, deterministic so that a diff means a real change."""
    rendered: dict[str, str] = {}
    for name, model in MODELS.items():
        schema: dict[str, Any] = model.model_json_schema(mode="validation")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://tailor.dev/schemas/{name}.json",
            **schema,
        }
        rendered[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render_schemas().items():
        path = directory / filename
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
