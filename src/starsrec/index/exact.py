"""Exact top-k by inner product, the reference path and the exact half of `ItemIndex`.

Scores come from `inner_scores`, an einsum without BLAS whose sum order per element does not
depend on which rows are scored together (BLAS sgemm's does), so scores computed on a subset,
on ANN candidates or on the whole matrix agree bit for bit, and lists merge exactly. Ties go
to the lower row everywhere; -1 / -inf pad lists where fewer than k rows qualify.
"""

from __future__ import annotations

import numpy as np

from starsrec.recommender import top_k

SCORE_BLOCK = 1 << 24  # scores held at once by exact scans (64 MiB of float32)


def inner_scores(queries: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(Q, M) scores against (M, D) rows, or (Q, K) against per-query (Q, K, D) candidates;
    einsum without BLAS, for the bit-identical scores the module docstring promises."""
    if matrix.ndim == 3:
        return np.einsum("qkd,qd->qk", matrix, queries, optimize=False)
    return np.einsum("qd,nd->qn", queries, matrix, optimize=False)


def scan_top_k(
    queries: np.ndarray,
    k: int,
    rows: np.ndarray | None,
    matrix: np.ndarray,
    exclude: list[np.ndarray] | None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k over `matrix`, whose rows are the sorted row ids `rows` (None: 0..M-1)."""
    results: tuple[list[np.ndarray], list[np.ndarray]] = (
        [np.empty((0, k), np.int64)],
        [np.empty((0, k), np.float32)],
    )
    block = max(1, SCORE_BLOCK // max(1, len(matrix)))
    for start in range(0, len(queries), block):
        scores = inner_scores(queries[start : start + block], matrix)
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        for q, banned in enumerate((exclude or [])[start : start + block]):
            if rows is not None:  # row ids -> positions in the subset
                positions = np.searchsorted(rows, banned)
                inside = positions < len(rows)
                positions, banned = positions[inside], banned[inside]
                banned = positions[rows[positions] == banned]
            scores[q, banned] = -np.inf
        for part, out in zip(top_k(scores, k, rows), results, strict=True):
            out.append(part)
    return np.concatenate(results[0]), np.concatenate(results[1])


def merge_top_k(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top k of two (rows, scores) lists over disjoint rows: best first, ties by lower row."""
    rows = np.concatenate([first[0], second[0]], axis=1)
    scores = np.concatenate([first[1], second[1]], axis=1)
    return top_k(scores, k, rows)
