"""Baselines honouring the Recommender contract, in the order they build on each other."""

from starsrec.baselines.cooccurrence import CooccurrenceRecommender
from starsrec.baselines.lambdamart import LambdaMARTConfig, LambdaMARTRecommender
from starsrec.baselines.popularity import (
    PopularityConfig,
    PopularityRecommender,
    RecentPopularityConfig,
    RecentPopularityRecommender,
)
from starsrec.baselines.repeat import RepeatHistoryConfig, RepeatHistoryRecommender
from starsrec.baselines.tifu import TifuKnnConfig, TifuKnnRecommender
from starsrec.baselines.topfreq import TopFrequencyConfig, TopFrequencyRecommender
from starsrec.data.cooccurrence import CooccurrenceConfig
from starsrec.recommender import Recommender

BASELINES: dict[str, type[Recommender]] = {
    model.name: model
    for model in (
        PopularityRecommender,
        RecentPopularityRecommender,
        RepeatHistoryRecommender,
        TopFrequencyRecommender,
        TifuKnnRecommender,
        CooccurrenceRecommender,
        LambdaMARTRecommender,
    )
}

__all__ = [
    "BASELINES",
    "CooccurrenceConfig",
    "CooccurrenceRecommender",
    "LambdaMARTConfig",
    "LambdaMARTRecommender",
    "PopularityConfig",
    "PopularityRecommender",
    "RecentPopularityConfig",
    "RecentPopularityRecommender",
    "RepeatHistoryConfig",
    "RepeatHistoryRecommender",
    "TifuKnnConfig",
    "TifuKnnRecommender",
    "TopFrequencyConfig",
    "TopFrequencyRecommender",
]
