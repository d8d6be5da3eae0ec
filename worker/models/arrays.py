"""Growable per-item numpy arrays: capacity doubles so appends stay amortised O(1)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["grow_rows"]


def grow_rows(
    array: np.ndarray[Any, Any], needed: int, fill: float | int = 0
) -> np.ndarray[Any, Any]:
    """Return ``array`` with at least ``needed`` rows, new rows set to ``fill``."""
    if needed <= array.shape[0]:
        return array
    capacity = max(needed, 2 * array.shape[0], 1024)
    grown = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown
