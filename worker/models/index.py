"""Dense integer ids for items, so every per-item model is a numpy array indexed by row."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["ItemIndex"]

IntArray = npt.NDArray[np.int64]


class ItemIndex:
    """Maps item ids to rows; rows are never reused, bounded by ``max_items``.

    Unknown items beyond the bound map to -1 and are simply not learned from, so a flood
    of junk ids cannot grow memory without limit.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def row(self, item_id: str) -> int:
        """Row of an item, adding it when there is room; -1 when the index is full."""
        found = self._rows.get(item_id)
        if found is not None:
            return found
        if len(self._ids) >= self.max_items:
            return -1
        row = len(self._ids)
        self._rows[item_id] = row
        self._ids.append(item_id)
        return row

    def lookup(self, item_id: str) -> int:
        """Row of an indexed item, -1 when unknown (never adds)."""
        return self._rows.get(item_id, -1)

    def known_rows(self, item_ids: Iterable[str]) -> IntArray:
        """Rows of items already indexed (unknown ones are skipped, never added)."""
        get = self._rows.get
        found = (get(item) for item in item_ids)
        return np.fromiter((row for row in found if row is not None), dtype=np.int64)

    @property
    def ids(self) -> list[str]:
        """Item ids by row (read-only by convention: rows are never reused)."""
        return self._ids

    def item_id(self, row: int) -> str:
        return self._ids[row]
