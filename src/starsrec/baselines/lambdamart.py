"""LambdaMART: the paper's production baseline, a learned re-ranker over candidates.

Stage 1 (ranking_features.py) proposes candidates per query from repeat history,
co-occurrence and popularity, and describes each (query, candidate) pair with ~30
features. Stage 2, here, is LightGBM `lambdarank` ordering the candidates.

Training without leakage: labelled groups come from each user's later training events
(see `_holdout`), with the feature generators fitted only on the events before them; for
inference the generators are refitted on all training events. Half of the validation
queries (alternating) join the training groups, because they follow the evaluation
protocol itself, and the other half choose the tree count: the round with the best moving
average of their NDCG@10 (`smoothed_best`), not the noisy curve's single best round. Items
outside the candidates rank below all candidates, by popularity, so the ranking is still
over the whole catalogue."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

from starsrec.baselines.popularity import with_fallback
from starsrec.baselines.ranking_features import FeatureGenerators, LambdaMARTConfig
from starsrec.data.baskets import BasketTargets
from starsrec.data.files import BOOSTER_FILE, CONTEXT_FILE
from starsrec.data.integrity import write_atomic, write_json_atomic
from starsrec.data.interactions import EventLog, Queries
from starsrec.recommender import Recommender, TrainingData

logger = logging.getLogger(__name__)


class LambdaMARTRecommender(Recommender):
    """LightGBM lambdarank over repeat, co-occurrence and popularity candidates."""

    name = "lambdamart"
    config_class = LambdaMARTConfig

    def __init__(self, config: LambdaMARTConfig = LambdaMARTConfig()) -> None:
        super().__init__(config)
        self.generators: FeatureGenerators | None = None
        self.booster: lightgbm.Booster | None = None

    def _fit(self, data: TrainingData) -> None:
        config = self.config
        labelled, label_targets, before = _holdout(data.train, config)
        history_only = replace(data, train=data.train.select(before))
        parts = [self._groups(FeatureGenerators.fit(config, history_only), labelled, label_targets)]
        self.generators = FeatureGenerators.fit(config, data)
        stopping = None
        if data.validation is not None and len(data.validation):
            # Validation queries come from the evaluation protocol itself (e.g. the first
            # item of a new basket), which the in-train holdout only approximates. Half of
            # them (alternating) become training groups, the other half drive early stopping.
            assert data.validation_targets is not None  # given with the validation queries
            queries, targets = data.validation, data.validation_targets
            learn, held = np.arange(0, len(queries), 2), np.arange(1, len(queries), 2)
            parts.append(self._groups(self.generators, queries[learn], targets.take(learn)))
            stopping = self._groups(self.generators, queries[held], targets.take(held))
        features, labels, groups = _stack(parts)
        train_set = lightgbm.Dataset(features, label=labels, group=groups)
        valid_sets = None
        if stopping is not None and len(stopping[2]):
            features, labels, groups = stopping
            valid_sets = [
                lightgbm.Dataset(features, label=labels, group=groups, reference=train_set)
            ]
        params = {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "learning_rate": config.learning_rate,
            "num_leaves": config.num_leaves,
            "min_child_samples": config.min_child_samples,
            "feature_fraction": config.feature_fraction,
            "lambdarank_truncation_level": 20,
            "num_threads": config.threads,
            "seed": config.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        curve: dict[str, dict[str, list[float]]] = {}
        callbacks: list[Callable[..., Any]] = [
            lightgbm.early_stopping(config.early_stopping_rounds, verbose=False),
            lightgbm.record_evaluation(curve),
        ]
        self.booster = lightgbm.train(
            params,
            train_set,
            num_boost_round=config.n_estimators,
            valid_sets=valid_sets,
            callbacks=callbacks if valid_sets else None,
        )
        if valid_sets:
            # The held queries' NDCG curve is noisy round to round: its single best round
            # swings with the seed. The best of its moving average is a steadier count.
            self.booster.best_iteration = smoothed_best(
                curve["valid_0"]["ndcg@10"], config.smoothing_rounds
            )
        logger.info(
            "lambdamart: %d training groups, %d trees",
            sum(len(groups) for _, _, groups in parts),
            self.booster.best_iteration or config.n_estimators,
        )

    def diagnostics(self, queries: Queries, targets: BasketTargets) -> dict[str, float]:
        """candidate_recall: the share of the queries' target items among their candidates
        (the most any ranking of the candidates can reach)."""
        generators, _ = self._fitted()
        found = 0
        for part in self._chunks(queries):
            candidates = generators.candidates(queries[part])
            rows = np.repeat(np.arange(part.stop - part.start), targets.sizes[part])
            items = targets.items[targets.offsets[part.start] : targets.offsets[part.stop]]
            found += int(candidates[rows, items].sum())
        return {"candidate_recall": found / max(len(targets.items), 1)}

    def _groups(
        self, generators: FeatureGenerators, queries: Queries, targets: BasketTargets
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, labels, group sizes): candidates labelled 1 when in the query's
        target set (a whole basket under the basket protocols), grouped by query; groups
        without a target among their candidates are dropped (no gradient)."""
        n_items = max(self._fitted_catalogue().size, 1)
        owner = np.repeat(np.arange(len(queries)), targets.sizes)
        wanted = owner * n_items + targets.items  # (query, target item) pairs as one key
        parts = []
        for part in self._chunks(queries):
            query, item, x = generators.candidates_and_features(queries[part])
            label = np.isin((query + part.start) * n_items + item, wanted).astype(np.float32)
            sizes = np.bincount(query, minlength=part.stop - part.start)
            has_positive = np.bincount(query, weights=label, minlength=len(sizes)) > 0
            keep = has_positive[query]
            parts.append((x[keep], label[keep], sizes[has_positive]))
        return _stack(parts)

    def _chunks(self, queries: Queries) -> list[slice]:
        n_items = len(self.catalogue.item_ids) if self.catalogue is not None else 1
        size = max(1, self.config.max_cells // max(n_items, 1))
        return [slice(lo, min(lo + size, len(queries))) for lo in range(0, len(queries), size)]

    def score(self, queries: Queries) -> np.ndarray:
        """See `Recommender.score`: the ranker orders each query's candidates, which rank above
        every other item (those by popularity)."""
        generators, booster = self._fitted()
        n_items = len(generators.popularity)
        scores = np.empty((len(queries), n_items), dtype=np.float32)
        for part in self._chunks(queries):
            query, item, x = generators.candidates_and_features(queries[part])
            ranked = np.zeros((part.stop - part.start, n_items))
            if len(query):
                # A booster saved before the live features reads the columns before them.
                raw = booster.predict(
                    x[:, : booster.num_feature()], num_threads=self.config.threads
                )
                # Shift each row so its lowest candidate scores 0: candidates then rank
                # above every non-candidate (see with_fallback), in the ranker's order.
                lowest = np.full(len(ranked), np.inf)
                np.minimum.at(lowest, query, raw)
                ranked[query, item] = raw - lowest[query] + 1e-3
            scores[part] = with_fallback(ranked, generators.popularity)
        return scores

    def _fitted(self) -> tuple[FeatureGenerators, lightgbm.Booster]:
        if self.generators is None or self.booster is None:
            raise RuntimeError("lambdamart is not fitted: call fit() or load()")
        return self.generators, self.booster

    def _state(self) -> dict[str, np.ndarray]:
        return self._fitted()[0].state()

    def _save_extra(self, out: Path) -> list[str]:
        """The booster in LightGBM's own text format, and the context generators need."""
        generators, booster = self._fitted()
        write_atomic(out / BOOSTER_FILE, lambda temporary: booster.save_model(str(temporary)))
        context = {
            "country": generators.country,
            "allow_repeats": not generators.exclude_seen,
        }
        write_json_atomic(out / CONTEXT_FILE, context)
        return [BOOSTER_FILE, CONTEXT_FILE]

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        context = json.loads((path / CONTEXT_FILE).read_text())
        self.generators = FeatureGenerators.from_state(
            self.config, state, self._fitted_catalogue(), context, path
        )
        self.booster = lightgbm.Booster(model_file=str(path / BOOSTER_FILE))


def smoothed_best(curve: list[float], window: int) -> int:
    """The 1-based round whose centred moving average (over `window` rounds, shorter at the
    ends) of the validation `curve` is highest; the earliest of ties."""
    values = np.asarray(curve, dtype=np.float64)
    if not len(values):
        return 0
    half = max(window, 1) // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    lo = np.maximum(np.arange(len(values)) - half, 0)
    hi = np.minimum(np.arange(len(values)) + half + 1, len(values))
    return int(np.argmax((sums[hi] - sums[lo]) / (hi - lo))) + 1


def _stack(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate (features, labels, group sizes) triples."""
    features, labels, groups = zip(*parts, strict=True)
    return np.concatenate(features), np.concatenate(labels), np.concatenate(groups)


def _holdout(log: EventLog, config: LambdaMARTConfig) -> tuple[Queries, BasketTargets, np.ndarray]:
    """Labelled queries from the training events themselves, and the mask of events
    before every held-out one (what the feature generators may see).

    Per user: the last `labels_per_user` target events (mid-session situations) and the
    first target event of each of the last `labels_per_user` sessions (a session starts
    after a gap of more than `session_gap_minutes`), since test targets can be either;
    but never more than the later half of a user's target events, so the generators keep
    the earlier half. At most `max_groups` of them, sampled with the seed.
    """
    rows = np.flatnonzero(log.is_target)
    users = log.user[rows]
    rank = np.arange(len(rows)) - np.searchsorted(users, users)  # within the user's targets
    total = np.bincount(users, minlength=log.n_users)[users]
    gap = np.diff(log.timestamp, prepend=np.iinfo(np.int64).min // 2)
    first_of_user = np.arange(log.size) == log.offsets[log.user]
    starts_session = ((gap > config.session_gap_minutes * 60) | first_of_user)[rows]
    # Count session starts from each user's end: the last start is 1.
    session_from_end = np.zeros(len(rows), dtype=np.int64)
    start_rows = np.flatnonzero(starts_session)
    start_users = users[start_rows]
    starts_per_user = np.bincount(start_users, minlength=log.n_users)
    start_rank = np.arange(len(start_rows)) - np.searchsorted(start_users, start_users)
    session_from_end[start_rows] = starts_per_user[start_users] - start_rank
    recent = total - rank <= config.labels_per_user
    recent_session = starts_session & (session_from_end <= config.labels_per_user)
    held_rows = rows[(recent | recent_session) & (rank >= (total + 1) // 2)]
    if len(held_rows) > config.max_groups:
        rng = np.random.default_rng(config.seed)
        held_rows = np.sort(rng.choice(held_rows, config.max_groups, replace=False))
    first_held = np.full(log.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first_held, log.user[held_rows], held_rows)
    before = np.arange(log.size) < first_held[log.user]
    held_users = log.user[held_rows]
    queries = Queries(log, log.offsets[held_users], held_rows, log.timestamp[held_rows], held_users)
    return queries, BasketTargets.single(log.item[held_rows]), before
