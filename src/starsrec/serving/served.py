"""The served path behind the Recommender contract: `ServedRecommender`.

What a shop calls is not `StarsRecommender.score` but the online service: the exported
encoder, the item index, the exact scores of the shopper's own items and the request
filters. `ServedRecommender` wraps a `RecommendationService` so that the contract suite
(tests/test_contract.py) checks that path on the same toy world as every model.

- `fit` trains STARS, saves it and writes its serving files (`starsrec index`) into a
  temporary directory, then loads the service from it; `load` opens any artifact whose
  serving files exist, as `starsrec serve` does.
- `recommend` sends each query's history as the request's events (no user id, so the
  event store is not read) through `RecommendationService.recommend`.
- `score` gives every item its served score: the index row's inner product with the
  request's retrieval query, the user's own items scored exactly, plus the live term.
- Both read live signals from the queries' log as the store would have held them at each
  request (`ReplayedLive`), as the offline scorer does; tests/test_live.py checks the
  store's counters against the same replay.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from starsrec.data.files import SERVING_DIR
from starsrec.data.interactions import Queries
from starsrec.index.exact import inner_scores
from starsrec.recommender import Filters, Recommender, TrainingData, check_filters
from starsrec.serving.config import ServingConfig
from starsrec.serving.live_items import ReplayedLive
from starsrec.serving.offline import write_serving_files
from starsrec.serving.own_items import own_item_scores
from starsrec.serving.service import RecommendationService
from starsrec.serving.store import Event
from starsrec.stars.recommender import StarsConfig, StarsRecommender


class ServedRecommender(Recommender):
    """STARS as served (see module doc). Its artifacts are STARS artifacts with serving
    files, so it shares STARS's name and config."""

    name = StarsRecommender.name
    config_class = StarsConfig

    def __init__(
        self, config: StarsConfig = StarsConfig(), serving: ServingConfig = ServingConfig()
    ) -> None:
        super().__init__(config)
        self.serving = serving
        self.service: RecommendationService | None = None
        self._directory: tempfile.TemporaryDirectory | None = None  # owns fit's artifact

    def _fit(self, data: TrainingData) -> None:
        stars = StarsRecommender(self.config).fit(data)
        self._directory = tempfile.TemporaryDirectory(prefix="starsrec-served-")
        artifact = stars.save(Path(self._directory.name) / "artifact")
        write_serving_files(stars, data.train, artifact / SERVING_DIR, data.exclude_seen)
        self._open(artifact)

    def _open(self, artifact: Path) -> None:
        if self.service is not None:
            self.service.store.close()
        self.service = RecommendationService.load(artifact, self.serving)
        self._root = artifact
        self.config = self.service.recommender.config
        self.catalogue = self.service.recommender.catalogue

    @classmethod
    def load(cls, path: str | Path, serving: ServingConfig = ServingConfig()) -> ServedRecommender:
        """The service of an artifact whose serving files `starsrec index` wrote."""
        model = cls(serving=serving)
        model._open(Path(path))
        return model

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Copy the artifact and its serving files into directory `path` (`meta` is the
        artifact's own: it was recorded when the artifact was written)."""
        self._fitted_catalogue()
        shutil.copytree(self._root, path, dirs_exist_ok=True)
        return Path(path)

    # -- answering ------------------------------------------------------------------------
    def _request(self, queries: Queries, q: int) -> tuple[list[Event], float]:
        """Query q's history as the request's events, and its time."""
        log, rows = queries.log, queries.history(q)
        ids = self._fitted_catalogue().item_ids[log.item[rows]]
        types = [log.event_types[code].name for code in log.event_type[rows]]
        stamps = log.timestamp[rows]
        events = [
            Event(f"q{q}-{n}", "", str(item), kind, float(stamp))
            for n, (item, kind, stamp) in enumerate(zip(ids, types, stamps, strict=True))
        ]
        return events, float(queries.time[q])

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: the index rows' inner products with each request's query, the
        user's own items scored exactly, the terms the index cannot hold added."""
        catalogue, service = self._fitted_catalogue(), self.service
        assert service is not None  # _open sets it with the catalogue
        vectors = service.index.vectors[: catalogue.size]
        scores = np.empty((len(queries), catalogue.size), dtype=np.float32)
        service.live = ReplayedLive(queries.log, catalogue.size)
        for q in range(len(queries)):
            events, at = self._request(queries, q)
            history, rows, bought = service.history(None, events, at)
            query = service.query_vectors(None, history, rows, at)[0]
            scores[q] = inner_scores(query[None], vectors)[0]
            seen, exact = own_item_scores(service.model, vectors, query, history, rows, at)
            scores[q, seen] = exact
            added = service.added_terms(at, bought)
            if added is not None:
                scores[q, added[0]] += added[1]
        return scores

    def recommend(
        self, queries: Queries, k: int = 10, filters: Filters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The service's answer to each query, as `Recommender.recommend` returns it."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        catalogue, service = self._fitted_catalogue(), self.service
        assert service is not None  # _open sets it with the catalogue
        filters = filters or Filters()
        check_filters(filters, len(queries), catalogue.size)
        width = min(k, catalogue.size)
        ids = np.full((len(queries), width), "", dtype=object)
        scores = np.full((len(queries), width), -np.inf, dtype=np.float32)
        allowed = None if filters.allowed is None else np.asarray(filters.allowed, dtype=bool)
        service.live = ReplayedLive(queries.log, catalogue.size)
        for q in range(len(queries)):
            events, at = self._request(queries, q)
            exclude = set(filters.exclude[q]) if filters.exclude is not None else set()
            # The contract's seen items are the whole history, the service's only what
            # was bought: every history item is excluded by id instead.
            if filters.exclude_seen:
                exclude |= {e.item_id for e in events}
            known = tuple(i for i in exclude if i in service.items.row_of)
            request = Filters(allowed, [known], slots=filters.slots)
            found = service.recommend(None, events, width, at, request)
            ids[q, : len(found)] = [r.item_id for r in found]
            scores[q, : len(found)] = [r.score for r in found]
        return ids.astype(str), scores

    def _state(self) -> dict[str, np.ndarray]:  # save() writes the STARS artifact instead
        raise NotImplementedError

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:  # see load()
        raise NotImplementedError
