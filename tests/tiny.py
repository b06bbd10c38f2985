"""The one tiny STARS configuration the tests train, in one place.

`TINY`: a 16-wide one-layer model, the hashing text encoder (no model weights), no disk
cache, two epochs; quality is not the point. A test that needs more (a model that must
learn the toy world, say) states only its changes with `tiny(...)`, and `overrides` gives
any configuration as the `--set key=value` arguments of the CLI and `load_config`.
"""

from __future__ import annotations

import dataclasses
import json

from starsrec.baselines.ranking_features import LambdaMARTConfig
from starsrec.stars.config import ModelConfig
from starsrec.stars.recommender import StarsConfig
from starsrec.stars.train import TrainConfig

TINY = StarsConfig(
    model=ModelConfig(dim=16, layers=1, heads=2, max_length=8, attribute_dim=4),
    train=TrainConfig(
        epochs=2, batch_size=16, uniform_negatives=8, subclass_negatives=8, progress=False
    ),
    text_encoder="hashing",
    embedding_cache=None,
    derived_subclasses=4,
    derived_classes=2,
)

# LambdaMART's text through the same tiny encoder, and few trees.
TINY_LAMBDAMART = LambdaMARTConfig(n_estimators=30, text_encoder="hashing", embedding_cache=None)


def tiny(model: dict | None = None, train: dict | None = None, **fields) -> StarsConfig:
    """`TINY` with changes to its model, its training and its other fields."""
    return dataclasses.replace(
        TINY,
        model=dataclasses.replace(TINY.model, **(model or {})),
        train=dataclasses.replace(TINY.train, **(train or {})),
        **fields,
    )


def overrides(config: StarsConfig = TINY) -> list[str]:
    """`config` as `key=value` overrides: every field that differs from its default."""
    out = []
    for name, default in (("model", ModelConfig()), ("train", TrainConfig())):
        for field in dataclasses.fields(default):
            value = getattr(getattr(config, name), field.name)
            if value != getattr(default, field.name):
                out.append(f"{name}.{field.name}={json.dumps(value)}")
    for field in dataclasses.fields(StarsConfig):
        value = getattr(config, field.name)
        if field.name not in ("model", "train") and value != getattr(StarsConfig(), field.name):
            out.append(f"{field.name}={json.dumps(value)}")
    return out
