"""TIFU-KNN (Hu et al., SIGIR 2020): time-decayed personal item frequency plus neighbours.

"Modeling Personalized Item Frequency Information for Next-basket Recommendation". This
follows the authors' reference code (github.com/HaojiHu/TIFUKNN, TIFUKNN.py, read at its
last commit 15daf63) where it and the paper differ. (The paper's own text was not at hand
offline; its version below is as secondary summaries give it: groups of m baskets, the
earliest possibly shorter, the within-group decay r_b^(m - j) restarting in each group.)

- A user's baskets (multi-hot vectors of distinct target items, oldest first, `n` of them)
  are split into `groups` groups: the reference code's "group size" is the number of groups,
  not of baskets per group. With n >= groups, the first groups hold n // groups baskets and
  the last n % groups groups one basket more (the paper puts the short group first); with
  n < groups every basket is its own group.
- Basket i (0 = oldest) is weighted within_decay^(n - 1 - i), its distance from the newest
  basket over the whole history (the paper restarts the within-group decay in each group),
  and each group is the mean of its weighted baskets.
- Group j (0 = oldest) is weighted group_decay^(groups - 1 - j), with `groups` even when
  fewer groups were formed (so a short history's newest basket gets group_decay^(groups - n),
  as in the code), and the user vector is the sum divided by the number of groups formed.
- Neighbours: the `neighbours` training users nearest by Euclidean distance (the code's
  sklearn NearestNeighbors default; the paper speaks of similarity), averaged uniformly;
  score = alpha * own vector + (1 - alpha) * neighbour mean.

Where this departs from both: the reference code's neighbour pool and test users are
disjoint sets of users, each with at least two history baskets; here every training user
with a target basket is in the pool (their vectors from `TrainingData.train`) and a query's
own user is left out of its neighbours. The
query's own vector is built from the query's history, which under the next-basket protocol
holds the test-window baskets before the query. Baskets are `history_baskets` (rows sharing
a timestamp; see `starsrec.baselines.topfreq`). Items no vector scores (and ties at 0) go by
global popularity (`with_fallback`). Neighbour search is brute force (a dense chunk of
query x pool distances), fine for thousands of users, not for millions.

Hyperparameters are chosen on validation (`TUNING_GRID`, 252 distinct settings: about 40 s
for Online Retail next-basket, 3 minutes for Instacart's 49,688-item catalogue, one thread)
by basket NDCG@10, the metric the evaluator reports; without validation the defaults are the
authors' README setting (Ta-Feng: k 300, r_b 0.9, r_g 0.7, alpha 0.7, 7 groups). On its own
Instacart subset the paper reports Recall@10 about 0.395 and NDCG@10 about 0.383.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from starsrec.baselines.popularity import popularity, with_fallback
from starsrec.baselines.topfreq import HistoryBaskets, history_baskets
from starsrec.data.interactions import EventLog, Queries
from starsrec.evaluation.evaluate import validation_metric
from starsrec.recommender import Recommender, TrainingData

logger = logging.getLogger(__name__)

# What fit searches when validation is given: every combination, vector settings outer.
TUNING_GRID: dict[str, tuple] = {
    "groups": (3, 7),
    "within_decay": (0.8, 0.9, 1.0),
    "group_decay": (0.6, 0.8, 1.0),
    "neighbours": (100, 300, 900),
    "alpha": (0.3, 0.5, 0.7, 0.9, 1.0),
}
VECTOR_FIELDS = ("groups", "within_decay", "group_decay")


@dataclass(frozen=True)
class TifuKnnConfig:
    """neighbours: k; groups: how many groups a history is split into (the reference
    code's group size); within_decay, group_decay: r_b and r_g; alpha: weight of the
    user's own vector against the neighbours' mean; tune: choose them all on validation
    (`TUNING_GRID`) when fit gets validation queries (then saved as chosen);
    max_distances: upper bound on the query x pool distances held at once."""

    neighbours: int = 300
    groups: int = 7
    within_decay: float = 0.9
    group_decay: float = 0.7
    alpha: float = 0.7
    tune: bool = True
    max_distances: int = 1 << 22


def tifu_vectors(
    baskets: HistoryBaskets, n_items: int, groups: int, within_decay: float, group_decay: float
) -> sp.csr_matrix:
    """(Q, N) float64 personal item-frequency vectors (see the module doc)."""
    n = baskets.n_baskets[baskets.query]
    i = baskets.rank
    base, extra = n // groups, n % groups
    split = (groups - extra) * base  # the first basket of the longer groups
    long = i >= split
    group = np.where(long, groups - extra + (i - split) // (base + 1), i // np.maximum(base, 1))
    size = np.where(long, base + 1, base)
    short = n < groups
    group, size = np.where(short, i, group), np.where(short, 1, size)
    value = (
        np.power(within_decay, n - 1 - i)
        * np.power(group_decay, groups - 1 - group)
        / size
        / np.minimum(n, groups)
    )
    shape = (len(baskets.n_baskets), n_items)
    return sp.csr_matrix((value, (baskets.query, baskets.item)), shape=shape)


class TifuKnnRecommender(Recommender):
    """Own time-decayed item frequencies blended with those of the nearest users."""

    name = "tifu-knn"
    config_class = TifuKnnConfig

    def __init__(self, config: TifuKnnConfig = TifuKnnConfig()) -> None:
        super().__init__(config)
        self.popularity = np.empty(0, dtype=np.float32)
        self.pool = sp.csr_matrix((0, 0))  # (U', N) training users' vectors
        self.pool_users = np.empty(0, dtype=np.int64)  # (U',) their user numbers
        self._memo: dict | None = None  # only while tuning: parts of validation scores

    def _fit(self, data: TrainingData) -> None:
        self.popularity = popularity(data.train, data.catalogue.size).astype(np.float32)
        if self.config.tune and data.validation is not None and len(data.validation):
            self.config = self._tuned(data)
        self._fit_pool(data.train)

    def _fit_pool(self, log: EventLog) -> None:
        """The training users' vectors under the current config."""
        users = np.flatnonzero(np.diff(log.offsets) > 0)
        start, end = log.offsets[users], log.offsets[users + 1]
        vectors = self._vectors(Queries(log, start, end, np.zeros_like(start), users))
        keep = np.diff(vectors.indptr) > 0  # users with a target basket
        self.pool, self.pool_users = vectors[keep], users[keep].astype(np.int64)

    def _tuned(self, data: TrainingData) -> TifuKnnConfig:
        """The validation-best config of `TUNING_GRID` (the first of equals, in grid order)."""
        assert data.validation is not None and data.validation_targets is not None
        start = self.config
        best, best_value = start, -np.inf
        self._memo = {}
        try:
            for vector in itertools.product(*(TUNING_GRID[f] for f in VECTOR_FIELDS)):
                self.config = dataclasses.replace(
                    start, **dict(zip(VECTOR_FIELDS, vector, strict=True))
                )
                self._memo.clear()
                self._fit_pool(data.train)
                for k, alpha in itertools.product(TUNING_GRID["neighbours"], TUNING_GRID["alpha"]):
                    if alpha == 1.0 and k != TUNING_GRID["neighbours"][0]:
                        continue  # no neighbours: the same scores as for the first k
                    self.config = dataclasses.replace(self.config, neighbours=k, alpha=alpha)
                    value = validation_metric(
                        self,
                        data.validation,
                        data.validation_targets,
                        exclude_seen=data.exclude_seen,
                    )
                    if value > best_value:
                        best, best_value = self.config, value
        finally:
            self._memo = None
        chosen = {f: getattr(best, f) for f in (*VECTOR_FIELDS, "neighbours", "alpha")}
        logger.info("tifu-knn: validation ndcg@10 %.4f with %s", best_value, chosen)
        return best

    def _cached(self, key: tuple, queries: Queries, make: Callable[[], Any]) -> Any:
        """make(), remembered per (key, queries) while tuning (the same validation chunks
        are scored for every k and alpha of one vector setting)."""
        if self._memo is None:
            return make()
        fingerprint = (
            id(queries.log),
            queries.start.tobytes(),
            queries.end.tobytes(),
            queries.user.tobytes(),
        )
        if (key, fingerprint) not in self._memo:
            self._memo[key, fingerprint] = make()
        return self._memo[key, fingerprint]

    def _vectors(self, queries: Queries) -> sp.csr_matrix:
        c = self.config
        return tifu_vectors(
            history_baskets(queries), len(self.popularity), c.groups, c.within_decay, c.group_decay
        )

    def neighbour_order(self, queries: Queries, own: sp.csr_matrix) -> np.ndarray:
        """(Q, min(k_max, U')) pool rows by Euclidean distance to each query's own vector,
        nearest first (ties by lower row), -1 for the query's own user; k_max: the largest
        k the config or the tuning grid asks for."""
        k_max = max(self.config.neighbours, *TUNING_GRID["neighbours"])
        take = min(k_max, self.pool.shape[0])
        order = np.full((len(queries), take), -1, dtype=np.int64)
        if take == 0:
            return order
        pool_norms = np.asarray(self.pool.multiply(self.pool).sum(axis=1)).ravel()
        own_norms = np.asarray(own.multiply(own).sum(axis=1)).ravel()
        chunk = max(1, self.config.max_distances // self.pool.shape[0])
        for lo in range(0, len(queries), chunk):
            hi = min(lo + chunk, len(queries))
            dot = (own[lo:hi] @ self.pool.T).toarray()
            distance = own_norms[lo:hi, None] + pool_norms[None, :] - 2.0 * dot
            own_user = queries.user[lo:hi, None] == self.pool_users[None, :]
            distance[own_user] = np.inf
            nearest = np.argsort(distance, axis=1, kind="stable")[:, :take]
            nearest[np.take_along_axis(own_user, nearest, axis=1)] = -1
            order[lo:hi] = nearest
        return order

    def neighbour_mean(self, order: np.ndarray, k: int) -> sp.csr_matrix:
        """(Q, N) uniform mean of each query's first k neighbours' vectors (0 without any)."""
        chosen = order[:, :k]
        query, slot = np.nonzero(chosen >= 0)
        count = np.bincount(query, minlength=len(order))
        weight = 1.0 / count[query]
        shape = (len(order), self.pool.shape[0])
        mixing = sp.csr_matrix((weight, (query, chosen[query, slot])), shape=shape)
        return (mixing @ self.pool).tocsr()

    def blended(self, queries: Queries) -> np.ndarray:
        """(Q, N) float64 alpha * own vector + (1 - alpha) * neighbours' mean."""
        c = self.config
        vector = tuple(getattr(c, f) for f in VECTOR_FIELDS)
        own = self._cached(("own", vector), queries, lambda: self._vectors(queries))
        scores = c.alpha * own
        if c.alpha < 1.0:
            order = self._cached(
                ("order", vector), queries, lambda: self.neighbour_order(queries, own)
            )
            mean = self._cached(
                ("mean", vector, c.neighbours),
                queries,
                lambda: self.neighbour_mean(order, c.neighbours),
            )
            scores = scores + (1.0 - c.alpha) * mean
        return scores.toarray()

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: the blend, popularity for items it gives nothing."""
        return with_fallback(self.blended(queries), self.popularity)

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "popularity": self.popularity,
            "pool_indptr": self.pool.indptr.astype(np.int64),
            "pool_indices": self.pool.indices.astype(np.int64),
            "pool_data": self.pool.data.astype(np.float64),
            "pool_users": self.pool_users,
        }

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        self.popularity = state["popularity"]
        self.pool_users = state["pool_users"].astype(np.int64)
        shape = (len(self.pool_users), len(self.popularity))
        parts = (state["pool_data"], state["pool_indices"], state["pool_indptr"])
        self.pool = sp.csr_matrix(parts, shape=shape)
