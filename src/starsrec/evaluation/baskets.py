"""Multi-target ranking metrics: each query's right answer is a set of items (a basket).

Targets are passed in CSR form, `(offsets, items)`: the targets of query q are
`items[offsets[q]:offsets[q + 1]]`, distinct, at least one per query. One flat array holds
every query's targets, so memory grows with the number of targets, not with Q times the
largest basket. `csr_targets` builds the pair from a list of arrays.

For each cut-off K, per query (binary relevance, T = the query's target set):

- recall@K: the share of T ranked in the top K;
- ndcg@K: DCG@K over T divided by the ideal DCG@K, whose min(|T|, K) relevant items fill
  the first positions; the discount of 0-based position p is 1/log2(p + 2);
- hit@K: 1 when at least one target is in the top K;
- mrr@K: 1/(p + 1) for the position p of the first target when p < K, else 0.

Ties are scored by their expected value over every order of the tied items, all equally
likely, never by catalogue index. A target with score s has g items strictly above it and
shares a block of m items scoring exactly s (itself included), which fills positions
g .. g + m - 1; under a random order it sits at each of them with probability 1/m. So, with
D(n) = sum of the discounts of positions 0 .. n - 1:

- its expected share of the top K is clip(K - g, 0, m) / m (recall);
- its expected DCG@K is (D(min(g + m, K)) - D(min(g, K))) / m, the average over the block's
  positions of the discount, counting positions at or past K as 0 (ndcg).

Both sums are linear in the targets, so they add up over T exactly. Hit and MRR depend on
the first target only, which lies in the best-scoring block that holds a target: say that
block starts at g, has m items and t of them are targets. The first target's offset j in the
block is the minimum of t positions drawn without replacement from m, so
S(j) = P(offset >= j) = C(m - j, t) / C(m, t) = prod_{i < j} (m - t - i) / (m - i), and with
c = clip(K - g, 0, m) positions of the block inside the top K:

- hit@K = 1 - S(c);
- mrr@K = sum_{j < c} (S(j) - S(j + 1)) / (g + j + 1).

Blocks below the first one start at or after g + m, so they can only reach the top K when the
first block lies wholly inside it, and then the hit is already certain. Only the first K
terms of S are ever needed, so no full sort is made: every target's g and m come from two
comparisons of its query's row against its score.

Filtered items (-inf) are never ranked: they are not counted above any finite score, and a
target scoring -inf is a miss at every K (it still counts in |T| and so in the ideal DCG).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CUTOFFS = (5, 10, 20)
METRICS = ("recall", "ndcg", "hit", "mrr")


def csr_targets(targets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The CSR pair ((Q + 1,) offsets, (T,) items) of a list of Q integer item arrays."""
    lengths = np.array([len(t) for t in targets], dtype=np.int64)
    offsets = np.zeros(len(targets) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    parts = [np.asarray(t, dtype=np.int64).ravel() for t in targets]
    items = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return offsets, items


def basket_metrics(
    scores: np.ndarray,
    targets: tuple[np.ndarray, np.ndarray],
    ks: Sequence[int] = CUTOFFS,
    max_elements: int = 1 << 22,
) -> dict[str, np.ndarray]:
    """Per-query recall@k, ndcg@k, hit@k and mrr@k, each a (Q,) float64 array.

    scores: (Q, N) scores of the whole catalogue per query, -inf for filtered items (never
    ranked); NaN is rejected. targets: the CSR pair ((Q + 1,) offsets, (T,) items) of each
    query's distinct target items, at least one per query. Ties get their expected value
    over the orders of the tied items (see the module docstring for the formulas).
    max_elements: upper bound on the score entries copied at once, which bounds the memory
    used on top of `scores`.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (Q, N), got shape {scores.shape}")
    n_queries, n_items = scores.shape
    offsets, items = _check_targets(targets, n_queries, n_items)
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")

    sizes = np.diff(offsets)
    query = np.repeat(np.arange(n_queries), sizes)
    target_scores = scores[query, items]
    above, tied = _blocks(scores, query, target_scores, max_elements)
    ranked = target_scores > -np.inf
    # A filtered target is never ranked: put it alone in a block past every cut-off.
    tied = np.where(ranked, tied, 1)
    above = np.where(ranked, above, np.iinfo(np.int64).max // 2)

    k_max = max(ks, default=0)
    discounts = np.cumsum(np.concatenate([[0.0], 1.0 / np.log2(np.arange(k_max) + 2.0)]))
    first = _first_blocks(offsets, query, target_scores, above, tied)
    survival = _survival(first["tied"], first["targets"], k_max)

    # (Q, k_max) chance that the first target sits at offset j of its block, over its rank.
    offset = np.arange(k_max)
    reciprocal = (survival[:, :-1] - survival[:, 1:]) / (first["above"][:, None] + offset + 1.0)

    result: dict[str, np.ndarray] = {}
    rows = np.arange(n_queries)
    for k in ks:
        share = np.clip(k - above, 0, tied) / tied
        # Positions at or past k add nothing: both ends clip to k.
        gain = (discounts[np.minimum(above + tied, k)] - discounts[np.minimum(above, k)]) / tied
        ideal = discounts[np.minimum(sizes, k)]
        result[f"recall@{k}"] = np.bincount(query, weights=share, minlength=n_queries) / sizes
        result[f"ndcg@{k}"] = np.bincount(query, weights=gain, minlength=n_queries) / ideal
        inside = np.clip(k - first["above"], 0, first["tied"])
        result[f"hit@{k}"] = 1.0 - survival[rows, inside]
        result[f"mrr@{k}"] = np.where(offset < inside[:, None], reciprocal, 0.0).sum(axis=1)
    return {f"{m}@{k}": result[f"{m}@{k}"] for m in METRICS for k in ks}


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """The mean over queries of each per-query metric array; NaN for no queries."""
    return {
        name: float(np.mean(values)) if np.size(values) else float("nan")
        for name, values in per_query.items()
    }


def _check_targets(
    targets: tuple[np.ndarray, np.ndarray], n_queries: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    offsets, items = (np.asarray(a) for a in targets)
    if offsets.shape != (n_queries + 1,):
        raise ValueError(f"offsets must have shape ({n_queries + 1},), got {offsets.shape}")
    if items.ndim != 1:
        raise ValueError(f"target items must be 1-D, got shape {items.shape}")
    if not (np.issubdtype(offsets.dtype, np.integer) and np.issubdtype(items.dtype, np.integer)):
        raise ValueError("offsets and target items must be integers")
    offsets = offsets.astype(np.int64)
    items = items.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != len(items):
        raise ValueError(f"offsets must run from 0 to {len(items)}")
    sizes = np.diff(offsets)
    if (sizes < 1).any():
        raise ValueError("every query needs at least one target (offsets must increase)")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"target items must lie in [0, {n_items})")
    # A repeated target would count twice in DCG and recall but once in |T|.
    query = np.repeat(np.arange(n_queries), sizes)
    order = np.lexsort((items, query))
    same = (query[order][1:] == query[order][:-1]) & (items[order][1:] == items[order][:-1])
    if same.any():
        raise ValueError("a query's targets must be distinct")
    return offsets, items


def _blocks(
    scores: np.ndarray, query: np.ndarray, target_scores: np.ndarray, max_elements: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each target: the items scoring strictly above it and those tied with it."""
    n_items = scores.shape[1]
    above = np.empty(len(query), dtype=np.int64)
    tied = np.empty(len(query), dtype=np.int64)
    step = max(1, max_elements // max(n_items, 1))
    for lo in range(0, len(query), step):
        part = slice(lo, lo + step)
        rows = scores[query[part]]
        threshold = target_scores[part][:, None]
        above[part] = (rows > threshold).sum(axis=1)
        tied[part] = (rows == threshold).sum(axis=1)
    return above, tied


def _first_blocks(
    offsets: np.ndarray,
    query: np.ndarray,
    target_scores: np.ndarray,
    above: np.ndarray,
    tied: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per query: start, size and target count of the best-scoring block holding a target."""
    n_queries = len(offsets) - 1
    # Sorted by query, then best score first: each query's first entry is a top target.
    order = np.lexsort((-target_scores, query))
    lead = order[offsets[:-1]]
    best = target_scores[lead]
    count = np.bincount(query, weights=target_scores == best[query], minlength=n_queries)
    # All filtered: the sentinel block (start past every cut-off, one item) never hits.
    count = np.where(best > -np.inf, count, 1).astype(np.int64)
    return {"above": above[lead], "tied": tied[lead], "targets": count}


def _survival(block: np.ndarray, targets: np.ndarray, k_max: int) -> np.ndarray:
    """(Q, k_max + 1) S[q, j]: chance that none of t targets among m tied items lands in the
    block's first j positions, C(m - j, t) / C(m, t), as a running product of ratios."""
    m = block[:, None].astype(np.float64)
    t = targets[:, None].astype(np.float64)
    i = np.arange(k_max, dtype=np.float64)[None, :]
    left = m - i
    # Once i reaches m - t the factor is 0 and the product stays 0; past m the ratio is
    # undefined but only ever multiplies that 0.
    ratio = np.divide(np.maximum(m - t - i, 0.0), left, out=np.zeros_like(left), where=left > 0)
    survival = np.ones((len(block), k_max + 1))
    np.cumprod(ratio, axis=1, out=survival[:, 1:])
    return survival
