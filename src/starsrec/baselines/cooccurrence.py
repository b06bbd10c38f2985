"""Item-to-item co-occurrence kNN: "people who bought this next bought that".

Training counts, within each user's sequence of target events, how often item j follows
item i within `window` events (weight 1/distance; also the reverse direction with weight
`backward_weight`, since baskets are unordered). Counts are normalised like a cosine,
sim(i, j) = c(i, j) / sqrt(n_i n_j), and each item keeps its `neighbours` most similar
items. A query scores item j by sum over its last `history` events h of
decay^(age in events of h) x sim(h, j); unscored items fall back to popularity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from starsrec.baselines.popularity import popularity, with_fallback
from starsrec.data.interactions import EventLog, Queries
from starsrec.recommender import Recommender, TrainingData


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


class CooccurrenceRecommender(Recommender):
    """Item-to-item kNN over co-occurrence in user sequences."""

    name = "cooccurrence-knn"
    config_class = CooccurrenceConfig

    def __init__(self, config: CooccurrenceConfig = CooccurrenceConfig()) -> None:
        super().__init__(config)
        self.similarity = sp.csr_matrix((0, 0))
        self.popularity = np.empty(0, dtype=np.float32)

    def _fit(self, data: TrainingData) -> None:
        n_items = data.catalogue.size
        counts = cooccurrence_counts(data.train, n_items, self.config)
        item_counts = popularity(data.train, n_items) + 1.0
        norm = sp.diags(1.0 / np.sqrt(item_counts))
        self.similarity = top_neighbours(norm @ counts @ norm, self.config.neighbours)
        self.popularity = popularity(data.train, n_items).astype(np.float32)

    def neighbour_scores(self, queries: Queries) -> np.ndarray:
        """(Q, N) float64 decayed sum of similarities to the recent history."""
        query, rows = queries.flat_history()
        log = queries.log
        keep = log.is_target[rows]
        query, rows = query[keep], rows[keep]
        # Age in events: 0 for the most recent target event of each query.
        last = np.full(len(queries), -1)
        np.maximum.at(last, query, np.arange(len(rows)))
        age = last[query] - np.arange(len(rows))
        recent = age < self.config.history
        weights = self.config.decay ** age[recent]
        history = sp.csr_matrix(
            (weights, (query[recent], log.item[rows[recent]])),
            shape=(len(queries), self.similarity.shape[0]),
        )
        return (history @ self.similarity).toarray()

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: neighbour scores, popularity for the items they miss."""
        return with_fallback(self.neighbour_scores(queries), self.popularity)

    def _state(self) -> dict[str, np.ndarray]:
        s = self.similarity
        return {
            "data": s.data,
            "indices": s.indices,
            "indptr": s.indptr,
            "shape": np.array(s.shape),
            "popularity": self.popularity,
        }

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        self.similarity = sp.csr_matrix(
            (state["data"], state["indices"], state["indptr"]), shape=tuple(state["shape"])
        )
        self.popularity = state["popularity"]
