"""The wire contract: what frontends send, what the catalog holds, what Tailor publishes.

These pydantic models are the single source of truth; ``schemas/*.json`` is generated from
them (``tailor schemas``) so that producers in any language can validate against it.
"""

from worker.contract.catalog import CatalogItem
from worker.contract.events import SCHEMA_VERSION, Context, Event, EventType
from worker.contract.recommendations import Recommendation, RecommendedItem

__all__ = [
    "SCHEMA_VERSION",
    "CatalogItem",
    "Context",
    "Event",
    "EventType",
    "Recommendation",
    "RecommendedItem",
]
