"""Item-to-item co-occurrence: "people who bought this with that".

`similarity_table` counts, within each user's sequence of target events, how often item j
follows item i within `window` events (weight 1/distance; also the reverse direction with
weight `backward_weight`, since baskets are unordered), normalises the counts like a cosine,
sim(i, j) = c(i, j) / sqrt(n_i n_j), and keeps each item's `neighbours` most similar items.
A history then gives item j the similarity sum over its last `history` target events h of
decay^(age in target events of h) x sim(h, j): `history_similarity` for a batch of queries
(the co-occurrence baseline and the offline STARS scorer), `request_similarity` for one
request's events (the service); tests check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from starsrec.data.interactions import EventLog, Queries


@dataclass(frozen=True)
class CooccurrenceConfig:
    """Co-occurrence window, neighbourhood size and how much history a query uses."""

    window: int = 5
    backward_weight: float = 0.5
    neighbours: int = 100
    history: int = 20
    decay: float = 0.9


def cooccurrence_counts(log: EventLog, n_items: int, config: CooccurrenceConfig) -> sp.csr_matrix:
    """(N, N) weighted counts c(i, j) of j following i within the window, no diagonal."""
    keep = log.is_target
    user, item = log.user[keep], log.item[keep]
    rows, cols, weights = [], [], []
    for distance in range(1, config.window + 1):
        same_user = user[distance:] == user[:-distance]
        before, after = item[:-distance][same_user], item[distance:][same_user]
        w = np.full(len(before), 1.0 / distance)
        rows += [before, after]
        cols += [after, before]
        weights += [w, w * config.backward_weight]
    counts = sp.coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
    ).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts


def top_neighbours(similarity: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row (ties by lower column index)."""
    similarity = similarity.tocsr()
    keep = np.zeros(similarity.nnz, dtype=bool)
    for i in range(similarity.shape[0]):
        lo, hi = similarity.indptr[i], similarity.indptr[i + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
            continue
        order = np.lexsort((similarity.indices[lo:hi], -similarity.data[lo:hi]))[:k]
        keep[lo + order] = True
    pruned = similarity.copy()
    pruned.data = np.where(keep, pruned.data, 0.0)
    pruned.eliminate_zeros()
    return pruned


def similarity_table(log: EventLog, n_items: int, config: CooccurrenceConfig) -> sp.csr_matrix:
    """(N, N) float64 cosine-normalised co-occurrence of the target events of `log`, each row
    its `neighbours` largest (see module doc); n_i is the engagement-weighted count, plus 1."""
    target = log.is_target
    sales = np.bincount(log.item[target], weights=log.weight[target], minlength=n_items) + 1.0
    norm = sp.diags(1.0 / np.sqrt(sales))
    counts = cooccurrence_counts(log, n_items, config)
    return top_neighbours(norm @ counts @ norm, config.neighbours)


def history_similarity(
    queries: Queries, table: sp.csr_matrix, config: CooccurrenceConfig
) -> np.ndarray:
    """(Q, N) float64 decayed similarity sum of every item with each query's recent target
    events (see module doc)."""
    query, rows = queries.flat_history()
    log = queries.log
    keep = log.is_target[rows]
    query, rows = query[keep], rows[keep]
    # Age in target events: 0 for the most recent of each query.
    last = np.full(len(queries), -1)
    np.maximum.at(last, query, np.arange(len(rows)))
    age = last[query] - np.arange(len(rows))
    recent = age < config.history
    history = sp.csr_matrix(
        (config.decay ** age[recent], (query[recent], log.item[rows[recent]])),
        shape=(len(queries), table.shape[0]),
    )
    return (history @ table).toarray()


def request_similarity(
    targets: np.ndarray, table: sp.csr_matrix, config: CooccurrenceConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The rows with a positive similarity sum with one request's target events, ascending,
    and those sums (float64): `history_similarity` for the (H,) item rows of a request's
    target events, oldest first. Rows past the table (products added since it was built)
    have no neighbours. Gathers the few table rows it needs (a request's budget is a few
    milliseconds; a sparse product costs more in overhead than in work)."""
    recent = targets[-config.history :] if config.history > 0 else targets[:0]
    weights = config.decay ** np.arange(len(recent))[::-1]
    known = recent < table.shape[0]
    recent, weights = recent[known], weights[known]
    starts, lengths = table.indptr[recent], np.diff(table.indptr)[recent]
    # positions of every entry of the gathered rows, row after row
    first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    at = first + np.arange(lengths.sum())
    rows, inverse = np.unique(table.indices[at], return_inverse=True)
    sums = np.bincount(inverse, weights=table.data[at] * np.repeat(weights, lengths))
    positive = sums > 0
    return rows[positive].astype(np.int64), sums[positive]


def table_state(table: sp.csr_matrix, prefix: str = "") -> dict[str, np.ndarray]:
    """The arrays that save `table` (safetensors), their names after `prefix`."""
    arrays = {"data": table.data, "indices": table.indices, "indptr": table.indptr}
    return {prefix + k: v for k, v in (arrays | {"shape": np.array(table.shape)}).items()}


def table_from_state(state: dict[str, np.ndarray], prefix: str = "") -> sp.csr_matrix:
    """The table `table_state` saved, from its arrays named after `prefix`."""
    arrays = [state[prefix + k] for k in ("data", "indices", "indptr")]
    return sp.csr_matrix(tuple(arrays), shape=tuple(int(n) for n in state[prefix + "shape"]))
