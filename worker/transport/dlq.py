"""Dead letters: the original bytes, the original headers, and why, where from."""

from __future__ import annotations

from worker.decode import DeadLetter
from worker.transport.ports import Incoming

__all__ = ["HEADER_PREFIX", "dead_letter_headers"]

HEADER_PREFIX = "tailor.dlq."


def dead_letter_headers(
    letter: DeadLetter, message: Incoming
) -> list[tuple[str, str | bytes | None]]:
    """Original headers first, then reason, field, detail and the source coordinates."""
    original = message.headers() or []
    pairs = original.items() if isinstance(original, dict) else original
    headers: list[tuple[str, str | bytes | None]] = list(pairs)
    return [
        *headers,
        (f"{HEADER_PREFIX}reason", letter.reason.value.encode()),
        (f"{HEADER_PREFIX}field", letter.field.encode()),
        (f"{HEADER_PREFIX}detail", letter.detail.encode("utf-8", "replace")),
        (f"{HEADER_PREFIX}source.topic", str(message.topic()).encode()),
        (f"{HEADER_PREFIX}source.partition", str(message.partition()).encode()),
        (f"{HEADER_PREFIX}source.offset", str(message.offset()).encode()),
    ]
