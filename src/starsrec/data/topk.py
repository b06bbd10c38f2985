"""The one top-k, in the lowest layer so that every layer ranks with it: the models, the
evaluation, the index and the service (through `starsrec.recommender`, which re-exports it)
and the zero-shot tagger (`starsrec.features.tags`)."""

from __future__ import annotations

import numpy as np


def top_k(
    scores: np.ndarray, k: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The one top-k: (Q, k) rows and scores of the best k entries per query of (Q, M)
    `scores`, best first, ties by lower row; -inf entries (filtered) are absent, and rows
    with fewer than k others are padded with row -1 and score -inf.
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
