"""Content neighbours: items whose catalog text (category, tags, title) reads alike.

This is the content-based half of the recommender where a log has nothing but item text
(a retailer's product descriptions): "WHITE HANGING HEART T-LIGHT HOLDER" finds the red
one before anybody has bought both, and a brand-new item has neighbours from its first
minute. Texts become L2-normalised TF-IDF rows of one sparse matrix; an item's top-M
neighbours are computed when it is first asked for (one sparse product for all the
batch's new anchors) and kept in fixed ``[items, M]`` arrays, so memory is bounded by
``items * M`` and steady-state lookups are a gather.

Catalog changes mark the matrix stale; it is rebuilt (and the neighbour cache cleared)
when enough upserts have accumulated, so a stream of single upserts costs no rebuild each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from scipy import sparse

from worker.contract import CatalogItem
from worker.models.arrays import grow_rows

__all__ = ["ContentNeighbours", "content_tokens", "item_words"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_WORD = re.compile(r"[a-z0-9]{3,}")
_UNKNOWN = -2  # neighbours not computed yet
_REBUILD_SHARE = 0.01  # rebuild once 1 % of the items changed (at least _REBUILD_MIN)
_REBUILD_MIN = 100
_MIN_SIMILARITY = 0.2


def item_words(item: CatalogItem) -> list[str]:
    """The words an item is known by, repeats kept: category path, tags, title words."""
    tokens = [f"c:{name.lower()}" for name in item.category]
    tokens += [f"t:{tag.lower()}" for tag in item.tags]
    tokens += [f"w:{word}" for word in _WORD.findall(item.title.lower())]
    return tokens


def content_tokens(item: CatalogItem) -> list[str]:
    """The distinct words of an item (TF-IDF counts each once)."""
    return list(dict.fromkeys(item_words(item)))


class ContentNeighbours:
    def __init__(self, neighbours: int) -> None:
        self.m = neighbours
        self._tokens: dict[int, list[str]] = {}
        self._matrix: sparse.csr_matrix | None = None
        self._transposed: sparse.csr_matrix | None = None  # kept: converting costs a product
        self._changed = 0
        self.neighbour: npt.NDArray[np.int32] = np.full((0, neighbours), _UNKNOWN, dtype=np.int32)
        self.similarity: npt.NDArray[np.float32] = np.zeros((0, neighbours), dtype=np.float32)

    def upsert(self, row: int, tokens: list[str]) -> None:
        if self._tokens.get(row) != tokens:
            self._tokens[row] = tokens
            self._changed += 1

    def delete(self, row: int) -> None:
        if self._tokens.pop(row, None) is not None:
            self._changed += 1

    def neighbours_of(self, rows: IntArray) -> tuple[IntArray, FloatArray]:
        """``[len(rows), M]`` neighbour rows (-1 = none) and cosine similarities."""
        self._refresh()
        neighbours = np.full((rows.size, self.m), -1, dtype=np.int64)
        similarity = np.zeros((rows.size, self.m))
        built = self._matrix.shape[0] if self._matrix is not None else 0
        valid = (rows >= 0) & (rows < built)
        if not valid.any():
            return neighbours, similarity
        unknown = np.unique(rows[valid][self.neighbour[rows[valid], 0] == _UNKNOWN])
        if unknown.size:
            self._compute(unknown)
        found = self.neighbour[rows[valid]]
        neighbours[valid] = np.where(found >= 0, found, -1)
        similarity[valid] = self.similarity[rows[valid]]
        return neighbours, similarity

    def _refresh(self) -> None:
        items = len(self._tokens)
        needed = max(1, min(max(_REBUILD_MIN, int(_REBUILD_SHARE * items)), items // 2))
        if self._matrix is not None and self._changed < needed:
            return
        self._matrix = _tfidf(self._tokens.items(), max(self._tokens, default=-1) + 1)
        self._transposed = self._matrix.T.tocsr()
        self._changed = 0
        rows = self._matrix.shape[0]
        self.neighbour = grow_rows(self.neighbour[:0], rows, fill=_UNKNOWN)
        self.similarity = grow_rows(self.similarity[:0], rows, fill=0.0)

    def _compute(self, rows: IntArray) -> None:
        """Top-M neighbours of ``rows`` in one sparse product, then a small loop per row."""
        assert self._matrix is not None
        products = (self._matrix[rows] @ self._transposed).tocsr()
        self.neighbour[rows] = -1
        self.similarity[rows] = 0.0
        for slot, row in enumerate(rows.tolist()):
            start, end = products.indptr[slot], products.indptr[slot + 1]
            found, scores = products.indices[start:end], products.data[start:end]
            keep = (found != row) & (scores >= _MIN_SIMILARITY)
            found, scores = found[keep], scores[keep]
            if found.size > self.m:
                best = np.argpartition(-scores, self.m - 1)[: self.m]
                found, scores = found[best], scores[best]
            self.neighbour[row, : found.size] = found
            self.similarity[row, : found.size] = scores


def _tfidf(items: Iterable[tuple[int, list[str]]], rows: int) -> sparse.csr_matrix:
    """Rows of L2-normalised TF-IDF; words in one item only carry no neighbour signal."""
    vocabulary: dict[str, int] = {}
    row_ids: list[int] = []
    columns: list[int] = []
    for row, tokens in items:
        for token in tokens:
            row_ids.append(row)
            columns.append(vocabulary.setdefault(token, len(vocabulary)))
    if not row_ids:
        return sparse.csr_matrix((max(rows, 0), 0), dtype=np.float64)
    column_array = np.array(columns, dtype=np.int64)
    frequency = np.bincount(column_array, minlength=len(vocabulary))
    documents = max(len(set(row_ids)), 1)
    idf = np.log(documents / frequency) * (frequency > 1)
    values = idf[column_array]
    matrix = sparse.csr_matrix(
        (values, (np.array(row_ids), column_array)), shape=(rows, len(vocabulary))
    )
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    scale = sparse.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0))
    result: sparse.csr_matrix = (scale @ matrix).tocsr()
    return result
