"""Personal top-frequency (P-TopFreq): the items in most of the user's past baskets.

The next-basket literature's simplest personal anchor (Hu et al., SIGIR 2020; Li et al.,
"A Next Basket Recommendation Reality Check", 2023). An item's score is the number of the
user's past baskets that hold it as a target event (an item on two lines of one basket
counts once); ties among them, and every item the user never had, go by global
popularity (`popularity`), below every item the user had.

Baskets are `starsrec.data.baskets.basket_ids` of the query's log without a key: rows of one
user sharing a timestamp. A model sees only `Queries` at score time, never the dataset's
basket column, so a source whose baskets the protocols read from a key (Instacart's
`order_id`) can have two orders of one user at the same timestamp counted as one basket:
87 of Instacart's 15,183 orders (0.6%). Online Retail has no key: an invoice is one
customer's minute both here and in the protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from starsrec.baselines.popularity import popularity, with_fallback
from starsrec.data.baskets import basket_ids
from starsrec.data.interactions import Queries
from starsrec.recommender import Recommender, TrainingData


class HistoryBaskets(NamedTuple):
    """The distinct (query, basket, item) triples of each query's target history events.

    rank: the basket's position in its query's history (0 = oldest basket holding a target
    item); n_baskets: (Q,) number of such baskets per query. Triples are sorted by query, rank,
    item.
    """

    query: np.ndarray  # (T,) int64
    rank: np.ndarray  # (T,) int64
    item: np.ndarray  # (T,) int64
    n_baskets: np.ndarray  # (Q,) int64


def history_baskets(queries: Queries) -> HistoryBaskets:
    """Each query's history as baskets of distinct target items (see the module doc)."""
    query, rows = queries.flat_history()
    log = queries.log
    keep = log.is_target[rows]
    query, rows = query[keep], rows[keep]
    basket, item = basket_ids(log)[rows], log.item[rows]
    order = np.lexsort((item, basket, query))
    query, basket, item = query[order], basket[order], item[order]
    new_basket = np.ones(len(query), dtype=bool)
    new_basket[1:] = (query[1:] != query[:-1]) | (basket[1:] != basket[:-1])
    distinct = new_basket.copy()
    distinct[1:] |= item[1:] != item[:-1]
    query, new_basket, item = query[distinct], new_basket[distinct], item[distinct]
    running = np.cumsum(new_basket) - 1  # basket number over all queries
    count = np.bincount(query[new_basket], minlength=len(queries)).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])  # running number of each query's first
    return HistoryBaskets(query, running - first[query], item, count)


def with_ties_by(primary: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """`with_fallback` whose ties among items with a positive `primary` also go by
    `fallback` (non-negative both): (primary > 0, primary, fallback) lexicographically, as
    long as primary's distinct values are at least 1 apart (counts)."""
    scaled = fallback / (fallback.max() + 1.0) if fallback.size else fallback
    return with_fallback(np.where(primary > 0, primary + scaled, 0.0), fallback)


@dataclass(frozen=True)
class TopFrequencyConfig:
    """No options: how many of the user's baskets held the item, nothing more."""


class TopFrequencyRecommender(Recommender):
    """The items in most of the user's past baskets, popularity for ties and the rest."""

    name = "top-frequency"
    config_class = TopFrequencyConfig

    def __init__(self, config: TopFrequencyConfig = TopFrequencyConfig()) -> None:
        super().__init__(config)
        self.popularity = np.empty(0, dtype=np.float32)

    def _fit(self, data: TrainingData) -> None:
        self.popularity = popularity(data.train, data.catalogue.size).astype(np.float32)

    def basket_counts(self, queries: Queries) -> np.ndarray:
        """(Q, N) float64 number of each query's history baskets holding each item."""
        baskets = history_baskets(queries)
        counts = np.zeros((len(queries), len(self.popularity)))
        np.add.at(counts, (baskets.query, baskets.item), 1.0)
        return counts

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: basket counts, ties and the rest by popularity."""
        return with_ties_by(self.basket_counts(queries), self.popularity.astype(np.float64))

    def _state(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity}

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        self.popularity = state["popularity"]
