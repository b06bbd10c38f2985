"""Popularity baselines: what everybody buys, overall or lately.

Popularity counts training events of target types (purchases, not returns), weighted by
engagement. The other baselines use it as their fallback: `with_fallback` puts every
item the primary signal scores above every item it does not, and orders the rest by
popularity, so every model ranks the whole catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from starsrec.data.interactions import EventLog, Queries
from starsrec.recommender import Recommender, TrainingData

DAY = 86_400


def popularity(
    log: EventLog, n_items: int, since: int | None = None, weighted: bool = True
) -> np.ndarray:
    """(N,) float64 engagement-weighted (or, not `weighted`, plain) count of target events
    (at or after `since`)."""
    mask = log.is_target
    if since is not None:
        mask = mask & (log.timestamp >= since)
    weights = log.weight[mask] if weighted else None
    return np.bincount(log.item[mask], weights=weights, minlength=n_items).astype(np.float64)


def with_fallback(primary: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Lexicographic (primary > 0, primary, fallback) as one float32 score.

    Items with a positive primary score get 1 + primary; the rest get the fallback
    scaled into [0, 1). Both inputs must be non-negative.
    """
    scaled = fallback / (fallback.max() + 1.0) if fallback.size else fallback
    return np.where(primary > 0, 1.0 + primary, scaled).astype(np.float32)


@dataclass(frozen=True)
class PopularityConfig:
    """weighted: count events by their engagement weight (False: plain counts, the
    popularity other libraries report; benchmarks/quality.py checks it as a sanity row)."""

    weighted: bool = True


class PopularityRecommender(Recommender):
    """Everybody gets the globally most popular items."""

    name = "popularity"
    config_class: ClassVar[type] = PopularityConfig  # the base's type: subclasses change it

    def __init__(self, config: PopularityConfig = PopularityConfig()) -> None:
        super().__init__(config)
        self.scores = np.empty(0, dtype=np.float32)

    def _fit(self, data: TrainingData) -> None:
        counts = popularity(data.train, data.catalogue.size, weighted=self.config.weighted)
        self.scores = counts.astype(np.float32)

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: the same fitted popularity row for every query."""
        return np.broadcast_to(self.scores, (len(queries), len(self.scores))).copy()

    def _state(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores}

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        self.scores = state["scores"]


@dataclass(frozen=True)
class RecentPopularityConfig:
    """window_days: how far back from the last training event counts as recent."""

    window_days: float = 28.0


class RecentPopularityRecommender(PopularityRecommender):
    """The most popular items in the last `window_days` of training, then all-time."""

    name = "recent-popularity"
    config_class = RecentPopularityConfig

    def __init__(self, config: RecentPopularityConfig = RecentPopularityConfig()) -> None:
        super().__init__(config)  # type: ignore[arg-type]  # same state, another config

    def _fit(self, data: TrainingData) -> None:
        n_items = data.catalogue.size
        end = int(data.train.timestamp.max()) if data.train.size else 0
        recent = popularity(data.train, n_items, since=end - int(self.config.window_days * DAY))
        self.scores = with_fallback(recent, popularity(data.train, n_items))
