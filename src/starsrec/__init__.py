"""starsrec: STARS sequential recommendation for e-commerce (arXiv 2512.10149).

The three calls most users need (`starsrec.serving.api`):

    model = starsrec.load("artifacts/or")   # or starsrec.train(data_dir, ...)
    recs = model.recommend(["12347"], k=10, filters={"exclude_purchased": True})
    similar = model.similar_items(["85123A"], k=10)

The other names a user imports, each from the module that defines it:

    from starsrec import prepare, split_dataset, TrainingData, Filters
    from starsrec import StarsRecommender, StarsConfig, BASELINES, evaluate
    from starsrec import ServedRecommender, RecommendationService, create_app

They load on first use, so `import starsrec` stays cheap (no torch, no faiss).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load": "starsrec.serving.api",
    "train": "starsrec.serving.api",
    "Model": "starsrec.serving.api",
    "prepare": "starsrec.data.loaders",
    "Dataset": "starsrec.data.dataset",
    "split_dataset": "starsrec.data.splits",
    "Recommender": "starsrec.recommender",
    "TrainingData": "starsrec.recommender",
    "Filters": "starsrec.recommender",
    "evaluate": "starsrec.evaluation.evaluate",
    "EvaluationConfig": "starsrec.evaluation.evaluate",
    "BASELINES": "starsrec.baselines",
    "StarsRecommender": "starsrec.stars.recommender",
    "StarsConfig": "starsrec.stars.recommender",
    "ServedRecommender": "starsrec.serving.served",
    "RecommendationService": "starsrec.serving.service",
    "ServingConfig": "starsrec.serving.config",
    "create_app": "starsrec.web.app",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'starsrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
