"""LambdaMART: the paper's production baseline, a learned re-ranker over candidates.

Stage 1, candidates per query: the user's own history (repeat), the top co-occurrence
neighbours of the recent history, and the globally and recently most popular items.
Stage 2, LightGBM `lambdarank` orders the candidates using generator scores and ranks,
user features, item features, recency of the user's last interaction with the item,
user-taxonomy affinity and calendar features (weekday, month, hour, days to the nearest
public holiday, the item's popularity in the request's month).

Training without leakage: the ranker learns from each user's last `labels_per_user`
target events in the training data, with feature generators fitted only on the events
before them; for inference the generators are refitted on all training events. Validation
queries, when given, drive early stopping. Items outside the candidates rank below all
candidates, by popularity, so the ranking is still over the whole catalogue.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightgbm
import numpy as np

from starsrec.baselines.cooccurrence import CooccurrenceConfig, CooccurrenceRecommender
from starsrec.baselines.popularity import DAY, popularity, with_fallback
from starsrec.baselines.repeat import RepeatHistoryConfig, RepeatHistoryRecommender
from starsrec.calendar import calendar_features
from starsrec.interactions import Catalogue, EventLog, Queries
from starsrec.recommender import Recommender, TrainingData

logger = logging.getLogger(__name__)

BOOSTER_FILE = "booster.txt"
CONTEXT_FILE = "context.json"
NEVER = 10_000.0  # "days since" / "events since" for something that never happened


@dataclass(frozen=True)
class LambdaMARTConfig:
    """Candidate pool sizes, training labels and LightGBM settings."""

    repeat_candidates: int = 100
    cooccurrence_candidates: int = 100
    popular_candidates: int = 50
    recent_window_days: float = 28.0
    labels_per_user: int = 10
    session_gap_minutes: float = 30.0
    max_groups: int = 20_000
    n_estimators: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 50
    feature_fraction: float = 0.8
    early_stopping_rounds: int = 30
    # Queries per feature chunk = max_cells // catalogue size: bounds the dense (Q, N)
    # work matrices (about ten of them) whatever the catalogue.
    max_cells: int = 1 << 21
    threads: int = 1
    seed: int = 0
    repeat: RepeatHistoryConfig = field(default_factory=RepeatHistoryConfig)
    cooccurrence: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)

    def __post_init__(self) -> None:
        # Nested configs arrive as dicts from config.json.
        for name, kind in (("repeat", RepeatHistoryConfig), ("cooccurrence", CooccurrenceConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, kind(**value))


ARRAYS = ("popularity", "recent", "popular", "repeat_rate", "buyers", "first_seen", "month_share")


@dataclass
class FeatureGenerators:
    """Everything stage 1 and the features need, fitted on one event log."""

    config: LambdaMARTConfig
    country: str | None
    allow_repeats: bool
    item_class: np.ndarray  # (N,)
    subclass: np.ndarray  # (N,)
    repeat: RepeatHistoryRecommender
    cooccurrence: CooccurrenceRecommender
    popularity: np.ndarray  # (N,) share of training target events
    recent: np.ndarray  # (N,) share in the recent window
    popular: np.ndarray  # (C,) the popularity candidates
    repeat_rate: np.ndarray  # (N,) share of an item's events that are rebuys
    buyers: np.ndarray  # (N,) distinct users
    first_seen: np.ndarray  # (N,) seconds, inf when never seen
    month_share: np.ndarray  # (12, N) item share of each calendar month's events

    @classmethod
    def fit(cls, config: LambdaMARTConfig, data: TrainingData) -> FeatureGenerators:
        log, n_items = data.train, data.catalogue.size
        end = int(log.timestamp.max()) if log.size else 0
        total = popularity(log, n_items)
        recent = popularity(log, n_items, since=end - int(config.recent_window_days * DAY))
        popular = np.union1d(
            _top(with_fallback(recent, total), config.popular_candidates),
            _top(total, config.popular_candidates),
        )
        target = log.is_target
        pairs = np.unique(np.stack([log.user[target], log.item[target]]), axis=1)
        buyers = np.bincount(pairs[1], minlength=n_items).astype(np.float64)
        count = np.bincount(log.item[target], minlength=n_items).astype(np.float64)
        first_seen = np.full(n_items, np.inf)
        np.minimum.at(first_seen, log.item, log.timestamp.astype(np.float64))
        months = calendar_features(log.timestamp[target], None)["month"].astype(np.int64) - 1
        by_month = np.zeros((12, n_items))
        np.add.at(by_month, (months, log.item[target]), 1.0)
        return cls(
            config=config,
            country=data.country,
            allow_repeats=data.allow_repeats,
            item_class=data.catalogue.item_class,
            subclass=data.catalogue.subclass,
            repeat=RepeatHistoryRecommender(config.repeat).fit(data),
            cooccurrence=CooccurrenceRecommender(config.cooccurrence).fit(data),
            popularity=total / max(total.sum(), 1.0),
            recent=recent / max(recent.sum(), 1.0),
            popular=popular,
            repeat_rate=np.where(count > 0, 1.0 - buyers / np.maximum(count, 1.0), 0.0),
            buyers=buyers,
            first_seen=first_seen,
            month_share=by_month / np.maximum(by_month.sum(axis=1, keepdims=True), 1.0),
        )

    def state(self) -> dict[str, np.ndarray]:
        """Arrays for safetensors; sub-model states are prefixed."""
        return {
            **{name: getattr(self, name) for name in ARRAYS},
            **{f"repeat.{k}": v for k, v in self.repeat._state().items()},
            **{f"cooccurrence.{k}": v for k, v in self.cooccurrence._state().items()},
        }

    @classmethod
    def from_state(
        cls,
        config: LambdaMARTConfig,
        state: dict[str, np.ndarray],
        catalogue: Catalogue,
        context: dict,
    ) -> FeatureGenerators:
        repeat = RepeatHistoryRecommender(config.repeat)
        cooccurrence = CooccurrenceRecommender(config.cooccurrence)
        for model, prefix in ((repeat, "repeat."), (cooccurrence, "cooccurrence.")):
            model.catalogue = catalogue
            model._restore(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, None
            )
        return cls(
            config=config,
            country=context["country"],
            allow_repeats=context["allow_repeats"],
            item_class=catalogue.item_class,
            subclass=catalogue.subclass,
            repeat=repeat,
            cooccurrence=cooccurrence,
            **{name: state[name] for name in ARRAYS},
        )

    def candidates_and_features(
        self, queries: Queries
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pairs query index, pairs item index, (P, F) float32 features) for a chunk."""
        config = self.config
        repeat = self.repeat.history_scores(queries)  # (Q, N)
        neighbours = self.cooccurrence.neighbour_scores(queries)  # (Q, N)
        history = self._history(queries)
        count = history["count"]
        mask = np.zeros(repeat.shape, dtype=bool)
        if self.allow_repeats:
            _mark_top(mask, repeat, config.repeat_candidates)
            _mark_top(mask, neighbours, config.cooccurrence_candidates)
            mask[:, self.popular] = True
        else:
            # Seen items can never be recommended: spend the candidate slots on unseen ones.
            _mark_top(mask, np.where(count > 0, 0.0, neighbours), config.cooccurrence_candidates)
            mask[:, self.popular] = True
            mask &= count == 0
        query, item = np.nonzero(mask)

        lengths = queries.lengths.astype(np.float64)
        distinct = (count > 0).sum(axis=1).astype(np.float64)
        # Times of the first and last history event; the request time for an empty one.
        stamps = np.append(queries.log.timestamp, 0)  # index -1 / size reads the pad
        has_history = queries.end > queries.start
        last_time = np.where(has_history, stamps[queries.end - 1], queries.time)
        first_time = np.where(
            has_history, stamps[np.where(has_history, queries.start, -1)], queries.time
        )
        session_events = self._session_events(queries)
        calendar = calendar_features(queries.time, self.country)
        month = calendar["month"].astype(np.int64) - 1
        class_share, subclass_share = history["class_share"], history["subclass_share"]
        n_classes = class_share.shape[1]
        item_class = self.item_class[item]
        item_subclass = self.subclass[item]
        columns = {
            # candidate generators
            "repeat_score": repeat[query, item],
            "repeat_rank": _row_ranks(repeat)[query, item],
            "cooccurrence_score": neighbours[query, item],
            "cooccurrence_rank": _row_ranks(neighbours)[query, item],
            "popularity": self.popularity[item],
            "recent_popularity": self.recent[item],
            # user x item
            "user_item_count": count[query, item],
            "days_since_user_item": history["days"][query, item],
            "events_since_user_item": history["events"][query, item],
            # How often the item opened one of the user's sessions (the first thing put in
            # a basket), and the share of the user's sessions that contained it.
            "user_item_session_starts": history["session_starts"][query, item],
            "user_item_session_rate": history["session_rate"][query, item],
            "class_share": np.where(
                item_class >= 0, class_share[query, np.maximum(item_class, 0)], np.nan
            )
            if n_classes
            else np.full(len(item), np.nan),
            "subclass_share": np.where(
                item_subclass >= 0, subclass_share[query, np.maximum(item_subclass, 0)], np.nan
            )
            if subclass_share.shape[1]
            else np.full(len(item), np.nan),
            # item
            "item_repeat_rate": self.repeat_rate[item],
            "item_buyers": self.buyers[item],
            "item_age_days": np.where(
                np.isfinite(self.first_seen[item]),
                (queries.time[query] - self.first_seen[item]) / DAY,
                -1.0,
            ),
            "item_month_share": self.month_share[month[query], item],
            # user
            "history_length": lengths[query],
            "history_distinct": distinct[query],
            "user_repeat_ratio": (1.0 - distinct / np.maximum(lengths, 1.0))[query],
            "days_since_last_event": ((queries.time - last_time) / DAY)[query],
            "session_events": session_events[query],
            "user_tenure_days": ((queries.time - first_time) / DAY)[query],
            # calendar
            **{name: values[query] for name, values in calendar.items()},
        }
        features = np.column_stack([np.asarray(v, dtype=np.float32) for v in columns.values()])
        return query, item, features

    def _session_events(self, queries: Queries) -> np.ndarray:
        """(Q,) history events within the session gap before the request (the basket
        so far); 0 when the request opens a new session."""
        query, rows = queries.flat_history()
        recent = queries.time[query] - queries.log.timestamp[rows]
        in_session = recent <= self.config.session_gap_minutes * 60
        return np.bincount(query[in_session], minlength=len(queries)).astype(np.float64)

    def _history(self, queries: Queries) -> dict[str, np.ndarray]:
        """Per (query, item): count, days and events since the last interaction, session
        starts and session rate; per query the share of history in each class and
        subclass."""
        n_items = len(self.popularity)
        query, rows = queries.flat_history()
        log = queries.log
        item = log.item[rows]
        shape = (len(queries), n_items)
        count = np.zeros(shape)
        np.add.at(count, (query, item), 1.0)
        last_row = np.full(shape, -1, dtype=np.int64)
        np.maximum.at(last_row, (query, item), rows)
        seen = last_row >= 0
        safe = np.maximum(last_row, 0)
        stamps = np.append(log.timestamp, 0)  # padded: an empty log still indexes
        gap = self.config.session_gap_minutes * 60
        opens = (rows == queries.start[query]) | (stamps[rows] - stamps[rows - 1] > gap)
        session_starts = np.zeros(shape)
        np.add.at(session_starts, (query[opens], item[opens]), 1.0)
        # Sessions containing the item: count each (query, item, session) once.
        session = np.cumsum(opens)
        in_session = np.unique(np.stack([query, item, session]), axis=1)
        sessions_with_item = np.zeros(shape)
        np.add.at(sessions_with_item, (in_session[0], in_session[1]), 1.0)
        sessions = np.bincount(query[opens], minlength=len(queries)).astype(np.float64)
        return {
            "count": count,
            "days": np.where(seen, (queries.time[:, None] - stamps[safe]) / DAY, NEVER),
            "events": np.where(seen, queries.end[:, None] - last_row, NEVER),
            "session_starts": session_starts,
            "session_rate": sessions_with_item / np.maximum(sessions, 1.0)[:, None],
            "class_share": _shares(query, self.item_class, item, queries),
            "subclass_share": _shares(query, self.subclass, item, queries),
        }


def _shares(
    query: np.ndarray, item_group: np.ndarray, item: np.ndarray, queries: Queries
) -> np.ndarray:
    """(Q, G) share of each query's history events in each item group (class or
    subclass; items without one, -1, are ignored)."""
    n_groups = int(item_group.max()) + 1 if item_group.size else 0
    shares = np.zeros((len(queries), max(n_groups, 0)))
    group = item_group[item]
    known = group >= 0
    np.add.at(shares, (query[known], group[known]), 1.0)
    return shares / np.maximum(queries.lengths, 1)[:, None]


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest positive scores (ties by lower index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))[:n]
    return order[scores[order] > 0]


def _mark_top(mask: np.ndarray, scores: np.ndarray, n: int) -> None:
    """Set mask[q, j] for the n largest positive scores of each row."""
    n = min(n, scores.shape[1])
    if n <= 0:
        return
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    rows = np.repeat(np.arange(scores.shape[0]), n)
    cols = top.ravel()
    positive = scores[rows, cols] > 0
    mask[rows[positive], cols[positive]] = True


def _row_ranks(scores: np.ndarray) -> np.ndarray:
    """(Q, N) 0-based rank of each item within its row by descending score."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks.astype(np.float32)


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
        labelled, label_target, before = _holdout(data.train, config)
        history_only = replace(data, train=data.train.select(before))
        parts = [self._groups(FeatureGenerators.fit(config, history_only), labelled, label_target)]
        self.generators = FeatureGenerators.fit(config, data)
        stopping = None
        if data.validation is not None and len(data.validation):
            # Validation queries come from the evaluation protocol itself (e.g. the first
            # item of a new basket), which the in-train holdout only approximates. Half of
            # them (alternating) become training groups, the other half drive early stopping.
            learn = np.arange(len(data.validation)) % 2 == 0
            targets = data.validation_target
            parts.append(self._groups(self.generators, data.validation[learn], targets[learn]))
            stopping = self._groups(self.generators, data.validation[~learn], targets[~learn])
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
        stop = lightgbm.early_stopping(config.early_stopping_rounds, verbose=False)
        self.booster = lightgbm.train(
            params,
            train_set,
            num_boost_round=config.n_estimators,
            valid_sets=valid_sets,
            callbacks=[stop] if valid_sets else None,
        )
        logger.info(
            "lambdamart: %d training groups, best iteration %d",
            sum(len(groups) for _, _, groups in parts),
            self.booster.best_iteration or config.n_estimators,
        )

    def _groups(
        self, generators: FeatureGenerators, queries: Queries, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, labels, group sizes): candidates labelled 1 for the target, grouped
        by query; groups whose target is not a candidate are dropped (no gradient)."""
        features, labels, groups = [], [], []
        for part in self._chunks(queries):
            query, item, x = generators.candidates_and_features(queries[part])
            label = (item == targets[part][query]).astype(np.float32)
            sizes = np.bincount(query, minlength=part.stop - part.start)
            has_positive = np.bincount(query, weights=label, minlength=len(sizes)) > 0
            keep = has_positive[query]
            features.append(x[keep])
            labels.append(label[keep])
            groups.append(sizes[has_positive])
        return _stack([(f, y, g) for f, y, g in zip(features, labels, groups, strict=True)])

    def _chunks(self, queries: Queries) -> list[slice]:
        n_items = len(self.catalogue.item_ids) if self.catalogue is not None else 1
        size = max(1, self.config.max_cells // max(n_items, 1))
        return [slice(lo, min(lo + size, len(queries))) for lo in range(0, len(queries), size)]

    def score(self, queries: Queries) -> np.ndarray:
        if self.generators is None or self.booster is None:
            raise RuntimeError("lambdamart is not fitted: call fit() or load()")
        n_items = len(self.generators.popularity)
        scores = np.empty((len(queries), n_items), dtype=np.float32)
        for part in self._chunks(queries):
            query, item, x = self.generators.candidates_and_features(queries[part])
            ranked = np.zeros((part.stop - part.start, n_items))
            if len(query):
                raw = self.booster.predict(x, num_threads=self.config.threads)
                # Shift each row so its lowest candidate scores 0: candidates then rank
                # above every non-candidate (see with_fallback), in the ranker's order.
                lowest = np.full(len(ranked), np.inf)
                np.minimum.at(lowest, query, raw)
                ranked[query, item] = raw - lowest[query] + 1e-3
            scores[part] = with_fallback(ranked, self.generators.popularity)
        return scores

    def _state(self) -> dict[str, np.ndarray]:
        return self.generators.state()

    def save(self, path: str | Path) -> Path:
        """The common files plus the booster in LightGBM's own text format."""
        out = super().save(path)
        self.booster.save_model(str(out / BOOSTER_FILE))
        context = {
            "country": self.generators.country,
            "allow_repeats": self.generators.allow_repeats,
        }
        (out / CONTEXT_FILE).write_text(json.dumps(context) + "\n")
        return out

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        context = json.loads((path / CONTEXT_FILE).read_text())
        self.generators = FeatureGenerators.from_state(self.config, state, self.catalogue, context)
        self.booster = lightgbm.Booster(model_file=str(path / BOOSTER_FILE))


def _stack(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate (features, labels, group sizes) triples."""
    features, labels, groups = zip(*parts, strict=True)
    return np.concatenate(features), np.concatenate(labels), np.concatenate(groups)


def _holdout(log: EventLog, config: LambdaMARTConfig) -> tuple[Queries, np.ndarray, np.ndarray]:
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
    return queries, log.item[held_rows], before
