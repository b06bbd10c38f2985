"""What the `ItemIndex` planner derives from an allowed bitmap, and its input checks."""

from __future__ import annotations

from functools import cached_property

import numpy as np


class Subset:
    """An allowed bitmap (None = every row) and what the planner derives from it, computed
    lazily; cached per scope key so a frequent bitmap pays for these once."""

    def __init__(self, allowed: np.ndarray | None, vectors: np.ndarray, stale: np.ndarray):
        self.allowed = allowed
        self._vectors = vectors
        self._stale = stale

    @cached_property
    def count(self) -> int:
        """How many rows are allowed."""
        return len(self._vectors) if self.allowed is None else int(self.allowed.sum())

    @cached_property
    def rows(self) -> np.ndarray | None:  # None: every row, in order
        """(M,) int64 allowed row ids, or None when every row is."""
        return None if self.allowed is None else np.flatnonzero(self.allowed)

    @cached_property
    def matrix(self) -> np.ndarray:
        """(M, D) float32 vectors of the allowed rows (the stored matrix itself when all are)."""
        return self._vectors if self.rows is None else self._vectors[self.rows]

    @cached_property
    def stale_rows(self) -> np.ndarray:
        """Allowed rows the ANN cannot return right (stale or misplaced), to scan exactly."""
        stale = np.flatnonzero(self._stale)
        return stale if self.allowed is None else stale[self.allowed[stale]]

    @cached_property
    def ann_bitmap(self) -> np.ndarray | None:  # packed for faiss.IDSelectorBitmap
        """Allowed, non-stale rows as a little-endian packed bitmap; None when that is every row."""
        if self.allowed is None and not self.stale_rows.size:
            return None
        usable = ~self._stale if self.allowed is None else self.allowed & ~self._stale
        return np.packbits(usable, bitorder="little")


# -- input validation -----------------------------------------------------------------
def checked_matrix(
    array: np.ndarray, name: str, dim: int | None = None, copy: bool = False
) -> np.ndarray:
    """A C-contiguous float32 (rows, dim) matrix of finite values, or a ValueError."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(
            f"{name} must be a 2-D (rows, dim) array, got shape {array.shape}; "
            "reshape a single vector with .reshape(1, -1)"
        )
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"{name} have dimension {array.shape[1]} but the index has dimension "
            f"{dim}: use vectors from the same model as the index"
        )
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric (float32), got dtype {array.dtype}")
    array = np.array(array, dtype=np.float32, order="C", copy=True if copy else None)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"{name} row {np.flatnonzero(~finite)[0]} has NaN or infinite values "
            f"({(~finite).sum()} such rows): fix or drop them"
        )
    return array


def checked_allowed(allowed: np.ndarray | None, size: int) -> np.ndarray | None:
    """`allowed` as an (size,) bool bitmap (None stays None), or a ValueError."""
    if allowed is None:
        return None
    allowed = np.asarray(allowed)
    if allowed.dtype != bool or allowed.shape != (size,):
        raise ValueError(
            f"allowed must be a bool bitmap of shape ({size},), one flag per row, "
            f"got {allowed.dtype} of shape {allowed.shape}"
        )
    return allowed


def checked_rows(rows: np.ndarray, size: int, name: str) -> np.ndarray:
    """`rows` as flat int64 row ids in 0..size-1, or a ValueError naming `name`."""
    rows = np.asarray(rows).ravel()
    if rows.size == 0:
        return rows.astype(np.int64)
    if rows.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer row ids, got dtype {rows.dtype}")
    if rows.min() < 0 or rows.max() >= size:
        raise ValueError(f"{name} has rows outside 0..{size - 1}: {rows.min()}, {rows.max()}")
    return rows.astype(np.int64)
