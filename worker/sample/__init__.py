"""The bundled sample stream the demo plays (a CC BY 4.0 slice of UCI Online Retail)."""

from __future__ import annotations

import gzip
from importlib import resources

__all__ = ["sample_catalog", "sample_events"]


def _lines(name: str) -> list[bytes]:
    data = resources.files(__package__).joinpath(name).read_bytes()
    return [line for line in gzip.decompress(data).splitlines() if line.strip()]


def sample_events() -> list[bytes]:
    """Event messages, one JSON document each, in time order."""
    return _lines("events.jsonl.gz")


def sample_catalog() -> list[bytes]:
    """Catalog messages, one JSON document each."""
    return _lines("catalog.jsonl.gz")
