"""Popularity baselines: what everybody buys, overall or lately.

Popularity counts training events of target types (purchases, not returns), weighted by
engagement; recent popularity reads the live counts at each request instead. The other
baselines use it as their fallback: `with_fallback` puts every item the primary signal
scores above every item it does not, and orders the rest by popularity, so every model
ranks the whole catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from starsrec.data.interactions import EventLog, Queries
from starsrec.data.live import LIVE_HALF_LIVES_DAYS, replay_counts
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
    """half_life_days: which live count ranks (`starsrec.data.live`, one of
    LIVE_HALF_LIVES_DAYS): every shopper's target events before the request, a sale that
    long ago weighing half."""

    half_life_days: float = 7.0

    def __post_init__(self) -> None:
        if self.half_life_days not in LIVE_HALF_LIVES_DAYS:
            raise ValueError(
                f"half_life_days must be one of the live counts' {LIVE_HALF_LIVES_DAYS}, "
                f"got {self.half_life_days}"
            )


class RecentPopularityRecommender(PopularityRecommender):
    """The items selling most at the request time (live counts over all shoppers' events
    before it, as the service reads them from its store), then all-time popularity."""

    name = "recent-popularity"
    config_class = RecentPopularityConfig

    def __init__(self, config: RecentPopularityConfig = RecentPopularityConfig()) -> None:
        super().__init__(config)  # type: ignore[arg-type]  # same state, another config

    def _fit(self, data: TrainingData) -> None:
        self.scores = popularity(data.train, data.catalogue.size).astype(np.float32)

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: each query's live counts, then the fitted popularity."""
        live = replay_counts(
            queries.log, queries.time, len(self.scores), (self.config.half_life_days,)
        )
        return with_fallback(live[..., 0].astype(np.float64), self.scores.astype(np.float64))
