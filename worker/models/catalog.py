"""Item content from the catalog topic: availability, category, titles, content vectors.

Feeds content-based filtering (same-category candidates, content-initialised item
vectors), the business filters (unavailable, deny-listed categories) and the reasons.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import sparse

from worker.contract import CatalogItem
from worker.models.arrays import grow_rows

__all__ = ["Catalog", "content_vectors"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

_NO_CATEGORY = -1


class Catalog:
    def __init__(self) -> None:
        self.available: npt.NDArray[np.bool_] = np.ones(0, dtype=bool)
        self.category: npt.NDArray[np.int64] = np.full(0, _NO_CATEGORY, dtype=np.int64)
        self.category_names: list[str] = []
        self._category_ids: dict[str, int] = {}
        self.members: dict[int, list[int]] = {}
        self.titles: dict[int, str] = {}
        self.size = 0

    def upsert(self, row: int, item: CatalogItem) -> None:
        self._ensure(row + 1)
        old = int(self.category[row])
        new = self._category_id(item.leaf_category) if item.leaf_category else _NO_CATEGORY
        if old != new:
            if old != _NO_CATEGORY:
                self.members[old].remove(row)
            if new != _NO_CATEGORY:
                self.members.setdefault(new, []).append(row)
            self.category[row] = new
        if row not in self.titles:
            self.size += 1
        self.titles[row] = item.title or item.item_id
        self.available[row] = item.available

    def delete(self, row: int) -> None:
        """A tombstone: the item may still appear in history, but is never recommended."""
        self._ensure(row + 1)
        self.available[row] = False
        if self.titles.pop(row, None) is not None:
            self.size -= 1

    def ensure(self, rows: int) -> None:
        self._ensure(rows)

    def available_mask(self, rows: IntArray) -> npt.NDArray[np.bool_]:
        """Rows the catalog has not marked unavailable or deleted (unknown = available)."""
        known = rows < self.available.size
        mask = np.ones(rows.size, dtype=bool)
        mask[known] = self.available[rows[known]]
        return mask

    def title(self, row: int, fallback: str) -> str:
        return self.titles.get(row, fallback)

    def categories_of(self, rows: IntArray) -> IntArray:
        safe = np.clip(rows, 0, max(self.category.size - 1, 0))
        if self.category.size == 0:
            return np.full(rows.size, _NO_CATEGORY, dtype=np.int64)
        return np.where(rows < self.category.size, self.category[safe], _NO_CATEGORY)

    def category_ids(self, names: list[str]) -> IntArray:
        found = (self._category_ids.get(name) for name in names)
        return np.fromiter((cid for cid in found if cid is not None), dtype=np.int64)

    def _category_id(self, name: str) -> int:
        found = self._category_ids.get(name)
        if found is None:
            found = self._category_ids[name] = len(self.category_names)
            self.category_names.append(name)
        return found

    def _ensure(self, rows: int) -> None:
        self.available = grow_rows(self.available, rows, fill=True)
        self.category = grow_rows(self.category, rows, fill=_NO_CATEGORY)


def content_vectors(
    words: Sequence[Sequence[str]], embeddings: Sequence[list[float] | None], dim: int
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Unit vectors from items' words and embeddings (hashed random projection).

    Items that share words land near each other, which is what gives a brand-new item
    sensible taste neighbours before anybody has touched it. Computed for many items at
    once (a catalog load is 100k upserts): one sparse product of item-by-word weights
    (categories count double) with the words' fixed random directions. ``words`` are
    :func:`~worker.models.content.item_words`, repeats counted. Returns
    ``[len(words), dim]`` float32 rows and which of them exist (an item without any word
    or embedding has no direction).
    """
    rows: list[int] = []
    columns: list[int] = []
    weights: list[float] = []
    vocabulary: dict[str, int] = {}
    for slot, tokens in enumerate(words):
        for token in tokens:
            rows.append(slot)
            columns.append(vocabulary.setdefault(token, len(vocabulary)))
            weights.append(2.0 if token.startswith("c:") else 1.0)
    vectors = np.zeros((len(words), dim), dtype=np.float64)
    if vocabulary:
        directions = np.stack([_token_vector(token, dim) for token in vocabulary])
        counts = sparse.csr_matrix((weights, (rows, columns)), shape=(len(words), len(vocabulary)))
        vectors += counts @ directions
    for slot, embedding in enumerate(embeddings):
        if embedding:
            values = np.asarray(embedding, dtype=np.float64)
            projection = np.random.default_rng(values.size).standard_normal((values.size, dim))
            vectors[slot] += 3.0 * (values @ projection) / max(float(np.linalg.norm(values)), 1e-9)
    norms = np.linalg.norm(vectors, axis=1)
    valid = norms > 0.0
    vectors[valid] /= norms[valid, None]
    return vectors.astype(np.float32), valid


@functools.lru_cache(maxsize=200_000)
def _token_vector(token: str, dim: int) -> npt.NDArray[np.float64]:
    """A fixed random direction per word (cached: catalogs repeat their words). Changing
    how it is drawn would move every item's content start, and with it the lists."""
    seed = zlib.crc32(token.encode("utf-8"))
    vector: npt.NDArray[np.float64] = np.random.default_rng(seed).standard_normal(dim)
    vector /= np.sqrt(dim)
    return vector
