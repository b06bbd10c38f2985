"""The one tiny STARS configuration the tests train, in one place.

`TINY`: a 16-wide one-layer model, the hashing text encoder (no model weights), no disk
cache, two epochs; quality is not the point. A test that needs more (a model that must
learn the toy world, say) states only its changes with `tiny(...)`, and `overrides` gives
any configuration as the `--set key=value` arguments of the CLI and `load_config`
(`settings`: the same as a dict). `load_benchmark` imports a script of benchmarks/.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

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

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"

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


def settings(config: StarsConfig = TINY) -> dict:
    """`config` as {dotted key: value}: every field that differs from its default."""
    out = {}
    for name, default in (("model", ModelConfig()), ("train", TrainConfig())):
        for field in dataclasses.fields(default):
            value = getattr(getattr(config, name), field.name)
            if value != getattr(default, field.name):
                out[f"{name}.{field.name}"] = value
    for field in dataclasses.fields(StarsConfig):
        value = getattr(config, field.name)
        if field.name not in ("model", "train") and value != getattr(StarsConfig(), field.name):
            out[field.name] = value
    return out


def overrides(config: StarsConfig = TINY) -> list[str]:
    """`config` as `key=value` overrides (`settings`), as the CLI's `--set` takes them."""
    return [f"{key}={json.dumps(value)}" for key, value in settings(config).items()]


def load_benchmark(name: str) -> ModuleType:
    """The module of benchmarks/NAME.py (the scripts are not a package), registered under
    `name` so dataclasses defined in it can look their module up."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
