"""Ranking metrics from the 0-based rank of each query's target in a full ranking.

With one relevant item per query, Hit@k is 1 when rank < k, NDCG@k is 1/log2(rank + 2)
when rank < k (the ideal DCG is 1), and the reciprocal rank is 1/(rank + 1) over the
whole catalogue (no cut-off).
"""

from __future__ import annotations

import numpy as np

CUTOFFS = (5, 10, 20)


def metrics_from_ranks(ranks: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """Mean Hit@k, NDCG@k and MRR over queries; NaN for an empty set of queries."""
    ranks = np.asarray(ranks, dtype=np.float64)
    result: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks < k
        result[f"hit@{k}"] = _mean(hit)
        result[f"ndcg@{k}"] = _mean(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0))
    result["mrr"] = _mean(1.0 / (ranks + 1.0))
    return result


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one top list (-1: padding)."""
    if n_items == 0:
        return float("nan")
    return len(np.unique(top_items[top_items >= 0])) / n_items


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")
