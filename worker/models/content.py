"""Content neighbours: items whose catalog text (category, tags, title) reads alike.

This is the content-based half of the recommender where a log has nothing but item text
(a retailer's product descriptions): "WHITE HANGING HEART T-LIGHT HOLDER" finds the red
one before anybody has bought both, and a brand-new item has neighbours from its first
minute. Texts become L2-normalised TF-IDF rows of one sparse matrix; every item's top-M
neighbours are kept in fixed ``[items, M]`` arrays, so memory is bounded by ``items * M``
and lookups in the hot path are a gather.

Catalog changes mark the matrix stale; it is rebuilt (and the neighbour cache cleared)
when enough upserts have accumulated, so a stream of single upserts costs no rebuild each.
After each rebuild a background thread fills the neighbours of every item, a chunk at a
time, at the lowest CPU priority: a 100k-item catalog takes about half a minute of one
core (the products are dense-ish: a department word links thousands of items), far too
long for start-up and too much for the event path. The sparse product releases the GIL,
so the fill runs beside the event loop on the machine's idle core. Until the fill reaches
an item, a batch that asks for it computes it on the spot, exactly as the fill would: an
item's row of the product depends on nothing else, so the lists are the same whichever
computes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
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
_FILL_CHUNK = 256  # rows per background product: ~50 MB of temporaries at 15k links a row
_LOWEST_PRIORITY = 19


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
    def __init__(self, neighbours: int, *, background: bool = True) -> None:
        self.m = neighbours
        self._tokens: dict[int, list[str]] = {}
        self._matrix: sparse.csr_matrix | None = None
        self._transposed: sparse.csr_matrix | None = None  # kept: converting costs a product
        self._changed = 0
        self.neighbour: npt.NDArray[np.int32] = np.full((0, neighbours), _UNKNOWN, dtype=np.int32)
        self.similarity: npt.NDArray[np.float32] = np.zeros((0, neighbours), dtype=np.float32)
        self._background = background
        #: Held while neighbour rows are written or the arrays replaced; the products run
        #: outside it. A rebuild bumps the generation, which tells a running fill to stop.
        self._lock = threading.Lock()
        self._generation = 0
        self._filler: threading.Thread | None = None
        #: seconds the latest completed fill took (None: none completed yet)
        self.fill_s: float | None = None
        self._pending = 0  # catalog rows whose neighbours are not known yet

    def upsert(self, row: int, tokens: list[str]) -> None:
        if self._tokens.get(row) != tokens:
            self._tokens[row] = tokens
            self._changed += 1

    def delete(self, row: int) -> None:
        if self._tokens.pop(row, None) is not None:
            self._changed += 1

    def neighbours_of(self, rows: IntArray) -> tuple[IntArray, FloatArray]:
        """``[len(rows), M]`` neighbour rows (-1 = none) and cosine similarities."""
        self.refresh()
        neighbours = np.full((rows.size, self.m), -1, dtype=np.int64)
        similarity = np.zeros((rows.size, self.m))
        built = self._matrix.shape[0] if self._matrix is not None else 0
        valid = (rows >= 0) & (rows < built)
        if not valid.any():
            return neighbours, similarity
        with self._lock:
            unknown = np.unique(rows[valid][self.neighbour[rows[valid], 0] == _UNKNOWN])
            if unknown.size:
                self._store(unknown, self._top(unknown, self._products(unknown)))
            found = self.neighbour[rows[valid]]
            neighbours[valid] = np.where(found >= 0, found, -1)
            similarity[valid] = self.similarity[rows[valid]]
        return neighbours, similarity

    def filled(self) -> bool:
        """Whether every item's neighbours are known (the background fill is done)."""
        return self.pending() == 0

    def pending(self) -> int:
        """Catalog rows whose neighbours are not known yet (a gauge: the fill's progress)."""
        return self._pending

    def wait_filled(self, timeout_s: float | None = None) -> bool:
        """Wait for the background fill (tests and benchmarks); whether it is done."""
        filler = self._filler
        if filler is not None:
            filler.join(timeout_s)
        return self.filled()

    def refresh(self) -> None:
        """Rebuild the matrix (and start the fill) when enough of the catalog changed; a
        lookup does this itself, so calling it is only to start the fill sooner."""
        items = len(self._tokens)
        needed = max(1, min(max(_REBUILD_MIN, int(_REBUILD_SHARE * items)), items // 2))
        if self._matrix is not None and self._changed < needed:
            return
        matrix = _tfidf(self._tokens.items(), max(self._tokens, default=-1) + 1)
        with self._lock:
            self._generation += 1
            self._matrix = matrix
            self._transposed = matrix.T.tocsr()
            self._changed = 0
            rows = matrix.shape[0]
            self.neighbour = grow_rows(self.neighbour[:0], rows, fill=_UNKNOWN)
            self.similarity = grow_rows(self.similarity[:0], rows, fill=0.0)
            self._pending = rows
            generation = self._generation
        if self._background and rows:
            self._filler = threading.Thread(
                target=self._fill, args=(generation,), name="content-neighbours", daemon=True
            )
            self._filler.start()

    def _fill(self, generation: int) -> None:
        """Every row's neighbours, a chunk at a time, until done or the matrix is rebuilt."""
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread's own nice
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _LOWEST_PRIORITY)
        with self._lock:
            matrix, transposed = self._matrix, self._transposed
        if matrix is None or transposed is None:
            return
        total = matrix.shape[0]  # the arrays may be longer: they grow by doubling
        started = time.perf_counter()
        for start in range(0, total, _FILL_CHUNK):
            with self._lock:
                if self._generation != generation:
                    return
                chunk = np.arange(start, min(start + _FILL_CHUNK, total))
                chunk = chunk[self.neighbour[chunk, 0] == _UNKNOWN]
            if chunk.size == 0:
                continue
            top = self._top(chunk, (matrix[chunk] @ transposed).tocsr())  # mostly GIL-free
            with self._lock:
                if self._generation != generation:
                    return
                self._store(chunk, top)
        self.fill_s = time.perf_counter() - started

    def _products(self, rows: IntArray) -> sparse.csr_matrix:
        assert self._matrix is not None
        assert self._transposed is not None
        return (self._matrix[rows] @ self._transposed).tocsr()

    def _top(
        self, rows: IntArray, products: sparse.csr_matrix
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """Each row's top-M from its row of ``products``: one numpy pass drops the item
        itself and the weak links (most of a row), a short loop per row keeps the best.

        Needs no lock (the fill runs it beside the event loop); a row's result depends on
        its row of the product alone, so whoever computes it, the neighbours are the same.
        """
        slot_of = np.repeat(np.arange(rows.size), np.diff(products.indptr))
        keep = (products.indices != rows[slot_of]) & (products.data >= _MIN_SIMILARITY)
        found, scores = products.indices[keep], products.data[keep]
        ends = np.cumsum(np.bincount(slot_of[keep], minlength=rows.size)).tolist()
        neighbour = np.full((rows.size, self.m), -1, dtype=np.int32)
        similarity = np.zeros((rows.size, self.m), dtype=np.float32)
        start = 0
        for slot, end in enumerate(ends):
            row_found, row_scores = found[start:end], scores[start:end]
            if row_found.size > self.m:
                best = np.argpartition(-row_scores, self.m - 1)[: self.m]
                row_found, row_scores = row_found[best], row_scores[best]
            neighbour[slot, : row_found.size] = row_found
            similarity[slot, : row_found.size] = row_scores
            start = end
        return neighbour, similarity

    def _store(
        self, rows: IntArray, top: tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]
    ) -> None:
        """Called with the lock held."""
        self._pending -= int(np.count_nonzero(self.neighbour[rows, 0] == _UNKNOWN))
        self.neighbour[rows], self.similarity[rows] = top


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
