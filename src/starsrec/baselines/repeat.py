"""Repeat history: recommend what this shopper bought before, often and lately.

Grocery and retail shoppers rebuy. An item's score is the sum, over the user's own past
target events with it, of engagement weight x recency, where recency decays hyperbolically
with age: 1 / (1 + age / half_life) (so a year-old purchase still counts, less). Items the
user never had are ordered by global popularity below every item they had.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from starsrec.baselines.popularity import DAY, popularity, with_fallback
from starsrec.data.interactions import Queries
from starsrec.recommender import Recommender, TrainingData


@dataclass(frozen=True)
class RepeatHistoryConfig:
    """half_life_days: age at which a past event counts half as much as a new one."""

    half_life_days: float = 30.0


class RepeatHistoryRecommender(Recommender):
    """Frequency x recency of the user's own history, popularity for the rest."""

    name = "repeat-history"
    config_class = RepeatHistoryConfig

    def __init__(self, config: RepeatHistoryConfig = RepeatHistoryConfig()) -> None:
        super().__init__(config)
        self.popularity = np.empty(0, dtype=np.float32)

    def _fit(self, data: TrainingData) -> None:
        self.popularity = popularity(data.train, data.catalogue.size).astype(np.float32)

    def history_scores(self, queries: Queries) -> np.ndarray:
        """(Q, N) float64 frequency x recency of each item in each query's history."""
        query, rows = queries.flat_history()
        log = queries.log
        keep = log.is_target[rows]
        query, rows = query[keep], rows[keep]
        age_days = np.maximum(queries.time[query] - log.timestamp[rows], 0) / DAY
        weight = log.weight[rows] / (1.0 + age_days / self.config.half_life_days)
        scores = np.zeros((len(queries), len(self.popularity)))
        np.add.at(scores, (query, log.item[rows]), weight)
        return scores

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: history scores, popularity for items the user never had."""
        return with_fallback(self.history_scores(queries), self.popularity)

    def _state(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity}

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        self.popularity = state["popularity"]
