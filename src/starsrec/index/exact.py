"""Exact top-k by inner product, the reference path and the exact half of `ItemIndex`.

Scores come from `inner_scores`, an einsum without BLAS whose sum order per element does not
depend on which rows are scored together (BLAS sgemm's does), so scores computed on a subset,
on ANN candidates or on the whole matrix agree bit for bit, and lists merge exactly. Ties go
to the lower row everywhere; -1 / -inf pad lists where fewer than k rows qualify.
"""

from __future__ import annotations

import numpy as np

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
    results = [np.empty((0, k), np.int64)], [np.empty((0, k), np.float32)]
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
        for part, out in zip(top_k_rows(scores, rows, k), results, strict=True):
            out.append(part)
    return np.concatenate(results[0]), np.concatenate(results[1])


def top_k_rows(
    scores: np.ndarray, rows: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best k entries per query of (Q, M) `scores`, ties by lower row; -inf entries are absent.
    rows: (M,) or (Q, M) row ids of the columns, None for 0..M-1."""
    count, m = scores.shape
    out_rows = np.full((count, k), -1, dtype=np.int64)
    out_scores = np.full((count, k), -np.inf, dtype=np.float32)
    take = min(k, m)
    if take == 0:
        return out_rows, out_scores
    labels = np.broadcast_to(np.arange(m) if rows is None else rows, scores.shape)
    # The take-th best value per query; everything at least as good is a candidate, so ties
    # at the boundary are settled by row, not by where partition happened to put them.
    kth = np.partition(scores, m - take, axis=1)[:, m - take]
    for q in range(count):
        candidates = np.flatnonzero((scores[q] >= kth[q]) & (scores[q] > -np.inf))
        order = np.lexsort((labels[q, candidates], -scores[q, candidates]))[:take]
        chosen = candidates[order]
        out_rows[q, : len(chosen)] = labels[q, chosen]
        out_scores[q, : len(chosen)] = scores[q, chosen]
    return out_rows, out_scores


def merge_top_k(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top k of two (rows, scores) lists over disjoint rows: best first, ties by lower row."""
    rows = np.concatenate([first[0], second[0]], axis=1)
    scores = np.concatenate([first[1], second[1]], axis=1)
    return top_k_rows(scores, rows, k)
