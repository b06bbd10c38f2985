"""Item-to-item co-occurrence kNN: "people who bought this next bought that".

An item scores its decayed similarity sum with the query's recent target events
(`starsrec.data.cooccurrence`, the table STARS's co-occurrence term reads too); items no
recent event co-occurs with fall back to popularity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from starsrec.baselines.popularity import popularity, with_fallback
from starsrec.data.cooccurrence import (
    CooccurrenceConfig,
    history_similarity,
    similarity_table,
    table_from_state,
    table_state,
)
from starsrec.data.interactions import Queries
from starsrec.recommender import Recommender, TrainingData


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
        self.similarity = similarity_table(data.train, n_items, self.config)
        self.popularity = popularity(data.train, n_items).astype(np.float32)

    def neighbour_scores(self, queries: Queries) -> np.ndarray:
        """(Q, N) float64 decayed sum of similarities to the recent history."""
        return history_similarity(queries, self.similarity, self.config)

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: neighbour scores, popularity for the items they miss."""
        return with_fallback(self.neighbour_scores(queries), self.popularity)

    def _state(self) -> dict[str, np.ndarray]:
        return table_state(self.similarity) | {"popularity": self.popularity}

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        self.similarity = table_from_state(state)
        self.popularity = state["popularity"]
