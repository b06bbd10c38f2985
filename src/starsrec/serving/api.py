"""The Python API in three calls, plus training: `load`, `Model.recommend`,
`Model.similar_items` and `train` (re-exported as `starsrec.load` and `starsrec.train`).

    model = starsrec.load("artifacts/or")
    recs = model.recommend(["12347"], k=10, filters={"exclude_purchased": True})
    similar = model.similar_items(["WHITE HANGING HEART T-LIGHT HOLDER"], k=10)

An artifact `starsrec index` has prepared answers through the service itself (the item
index, the exported encoder, the event store and the filters of `POST /v1/recommend`), so
`recommend` returns what the HTTP API returns for the same user, k, time and filters; any
other artifact (a baseline's, or STARS not yet indexed) through its own `Recommender` on the
dataset's histories (`starsrec.serving.answers`). Both give one frame with the columns of
`RESULT_COLUMNS`, the frame `starsrec recommend` writes to Parquet chunk by chunk
(`starsrec.serving.batch`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from starsrec.baselines import BASELINES
from starsrec.data.dataset import Dataset, load_prepared
from starsrec.data.files import CONFIG_FILE, META_FILE, SERVING_DIR, SERVING_FILE
from starsrec.data.integrity import ArtifactError, read_manifest
from starsrec.data.interactions import EventLog
from starsrec.experiments.artifact import artifact_dataset, load_config, train_artifact
from starsrec.recommender import Recommender
from starsrec.serving.answers import ServedAnswers, UnservedAnswers
from starsrec.serving.config import ServingConfig
from starsrec.serving.explain import Recommendation
from starsrec.serving.offline import build_serving
from starsrec.serving.request import FiltersIn, check_k, parse_filters, parse_timestamp
from starsrec.serving.service import RecommendationService
from starsrec.stars.recommender import StarsConfig, StarsRecommender

logger = logging.getLogger(__name__)

# One row per (user, rank): the user, the item and its score, and the explanation fields
# of the HTTP API's answer (`Recommendation`) under the same names.
EXPLANATION_COLUMNS = ("text", "tags", "shared_tags", "memory")
RESULT_COLUMNS = ("user_id", "rank", "item_id", "score", *EXPLANATION_COLUMNS)
SIMILAR_COLUMNS = ("query_item_id", "rank", "item_id", "score", *EXPLANATION_COLUMNS)
MODELS: dict[str, type[Recommender]] = {StarsRecommender.name: StarsRecommender, **BASELINES}


def as_ids(ids: str | Iterable[Any]) -> list[str]:
    """One id or many (a list, an array, a pandas column) as a list of str."""
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]


def results_frame(key: str, keys: list[str], results: list[list[Recommendation]]) -> pd.DataFrame:
    """The (user or item, rank) rows of `results`, one list per key, as `RESULT_COLUMNS`
    (`key` names the first column); ranks start at 1."""
    counts = [len(r) for r in results]
    flat = [r for found in results for r in found]
    return pd.DataFrame(
        {
            key: pd.Series(np.repeat(np.array(keys, dtype=object), counts), dtype=object),
            "rank": np.array([rank for c in counts for rank in range(1, c + 1)], dtype=np.int32),
            "item_id": pd.Series([r.item_id for r in flat], dtype=object),
            "score": np.array([r.score for r in flat], dtype=np.float64),
            "text": pd.Series([r.text for r in flat], dtype=object),
            "tags": pd.Series([list(r.tags) for r in flat], dtype=object),
            "shared_tags": pd.Series([list(r.shared_tags) for r in flat], dtype=object),
            "memory": pd.Series([r.memory for r in flat], dtype=object),
        }
    )


class Model:
    """A loaded artifact, answering as the service does (see module doc). Close it (or use
    `with`) to release the event store of a served one."""

    def __init__(self, root: Path, answers: ServedAnswers | UnservedAnswers) -> None:
        self.root = root
        self.answers = answers

    @property
    def served(self) -> bool:
        """Whether answers come from the serving files (index, encoder, event store)."""
        return isinstance(self.answers, ServedAnswers)

    @property
    def name(self) -> str:
        """The model's name: "stars (served)", "stars", "popularity", ..."""
        return self.answers.name

    def users(self) -> list[str]:
        """The known users: those the offline stage indexed (served), else the dataset's."""
        return self.answers.users()

    def known_users(self, user_ids: str | Iterable[Any]) -> np.ndarray:
        """(U,) bool: whether each user has a history the model can use."""
        return self.answers.known(as_ids(user_ids))

    def check_filters(self, filters: str | Mapping | FiltersIn | None) -> FiltersIn:
        """`filters` parsed as the HTTP API parses them and checked against this catalogue
        (classes, subclasses and excluded items it has); a RequestError naming the field."""
        request = parse_filters(filters)
        self.answers.filters(request)
        return request

    def recommend(
        self,
        user_ids: str | Iterable[Any],
        k: int = 10,
        filters: str | Mapping | FiltersIn | None = None,
        timestamp: str | float | datetime | None = None,
    ) -> pd.DataFrame:
        """The top k of each user (k from 1 to 1000, as the HTTP API's), `RESULT_COLUMNS`,
        best first (rank 1), under `filters` (the HTTP API's: a dict, JSON text or
        `FiltersIn`) at `timestamp` (unix seconds or ISO 8601; now when None). An unknown
        user is answered as the HTTP API answers one: from the request context alone
        (memory "context")."""
        ids, k = as_ids(user_ids), check_k(k)
        request = parse_filters(filters)
        parsed = parse_timestamp(timestamp)
        at = time.time() if parsed is None else parsed
        return results_frame("user_id", ids, self.answers.recommend(ids, k, at, request))

    def similar_items(self, item_ids: str | Iterable[Any], k: int = 10) -> pd.DataFrame:
        """The k items nearest each item, `SIMILAR_COLUMNS` (`query_item_id` is the item
        asked about): by item token for a served STARS (as `GET /v1/items/{id}/similar`),
        else what the model recommends after that item alone."""
        ids, k = as_ids(item_ids), check_k(k)
        return results_frame("query_item_id", ids, self.answers.similar(ids, k))

    def close(self) -> None:
        """Release the event store (a served model); the model answers no more."""
        self.answers.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {str(self.root)!r})"


def load(
    artifact_dir: str | Path,
    data_dir: str | Path | None = None,
    serving: ServingConfig = ServingConfig(),
) -> Model:
    """Open an artifact directory: with serving files (`starsrec index`), the service;
    otherwise its model (STARS or a baseline) on the histories of `data_dir`, by default
    the dataset its meta.json records (a baseline saved without a training record needs
    `data_dir`). Served artifacts read histories from their event store, not `data_dir`."""
    root = Path(artifact_dir)
    if (root / SERVING_DIR / SERVING_FILE).exists():
        # compact_products=False: a running server may be appending to the product log.
        service = RecommendationService.load(root, serving, compact_products=False)
        logger.info("loaded %s with its serving files (%d items)", root, service.index.size)
        return Model(root, ServedAnswers(service))
    remedy = f"give an artifact directory written by `starsrec train ... --out {root}`"
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory: {remedy}")
    name = read_manifest(root / CONFIG_FILE, remedy).get("model")
    if name not in MODELS:
        raise ArtifactError(f"{root} holds a {name!r} model; this starsrec loads {list(MODELS)}")
    recommender = MODELS[name].load(root)
    dataset = _training_dataset(root, data_dir)
    log = EventLog.from_dataset(dataset, recommender._fitted_catalogue())
    logger.info("loaded %s (%s, not indexed: answers from its model)", root, name)
    answers = UnservedAnswers(recommender, log, dataset.exclude_seen, serving.max_future_s)
    return Model(root, answers)


def _training_dataset(root: Path, data_dir: str | Path | None) -> Dataset:
    """The dataset whose histories an unserved artifact answers from."""
    meta = read_manifest(root / META_FILE, "") if (root / META_FILE).exists() else {}
    if {"data_dir", "fingerprint", "dataset"} <= meta.keys():
        return artifact_dataset(root, data_dir)[1]  # refuses a dataset changed since
    if data_dir is None:
        raise ArtifactError(
            f"{root} records no training dataset, so its users' histories are unknown: "
            "pass data_dir= (the prepared dataset it was fitted on)"
        )
    return load_prepared(data_dir)


def stars_config(config: str | Path | StarsConfig | None, overrides: Mapping) -> StarsConfig:
    """A `StarsConfig` from a base (a JSON file as `starsrec train --config` reads, a
    config, or the defaults) and field overrides; a dict value changes only the fields it
    names (`model={"dim": 128}` keeps the other model fields)."""
    base = config if isinstance(config, StarsConfig) else load_config(config, [])
    values = dataclasses.asdict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(values.get(key), Mapping):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    try:
        return StarsConfig(**values)
    except TypeError as error:
        raise ValueError(f"bad STARS config: {error}") from error


def train(
    data_dir: str | Path,
    protocol: str | None = None,
    out: str | Path | None = None,
    variant: str = "stars",
    config: str | Path | StarsConfig | None = None,
    index: bool = True,
    **overrides: Any,
) -> Model:
    """Train STARS on a prepared dataset as `starsrec train` does, write the artifact to
    `out` (default `artifacts/<dataset directory name>`), index it unless `index=False`
    (as `starsrec index`), and return it loaded. `protocol` None: `starsrec train`'s
    default; `overrides`: `StarsConfig` fields, e.g. `train={"epochs": 5}`."""
    out = Path("artifacts") / Path(data_dir).resolve().name if out is None else Path(out)
    settings = stars_config(config, overrides)
    logger.info("training %s on %s into %s", variant, data_dir, out)
    options = {} if protocol is None else {"protocol": protocol}
    artifact = train_artifact(data_dir, out, settings, variant=variant, **options)
    if index:
        build_serving(artifact)
    return load(artifact)
