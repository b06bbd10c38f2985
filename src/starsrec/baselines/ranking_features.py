"""LambdaMART stage 1: candidates per query and one row of features per (query, candidate).

Candidates: the user's own history (repeat), the top co-occurrence neighbours of the
recent history, the items whose text is nearest the history's, the globally and recently
most popular items, and those selling most at the request (live counts). Features:
generator scores and ranks, user x item counts and recency, session openings, taxonomy
affinity, text similarity to the history and to its last item, item age / repeat rate /
month share / live counts, user activity and calendar. `FeatureGenerators` holds
everything they need, fitted on one event log, and saves to flat arrays.

The text and live counts are what STARS gets: the same encoder's item embeddings, the same
text-derived classes and subclasses for a catalogue without a taxonomy, the same replay of
recent sales: the comparison is between models, not between what they were told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from starsrec.baselines.cooccurrence import CooccurrenceRecommender
from starsrec.baselines.popularity import DAY, popularity, with_fallback
from starsrec.baselines.repeat import RepeatHistoryConfig, RepeatHistoryRecommender
from starsrec.baselines.text_profile import item_text, text_similarities
from starsrec.data.calendar import calendar_features
from starsrec.data.cooccurrence import CooccurrenceConfig
from starsrec.data.interactions import Catalogue, Queries, session_opens
from starsrec.data.live import LIVE_HALF_LIVES_DAYS, replay_counts
from starsrec.features.encoders import DEFAULT_MODEL_NAME
from starsrec.recommender import TrainingData, rebuild_nested_configs, top_k

NEVER = 10_000.0  # "days since" / "events since" for something that never happened


@dataclass(frozen=True)
class LambdaMARTConfig:
    """Candidate pool sizes, item text, training labels and LightGBM settings.

    text_encoder: the item text encoder (as `StarsConfig.text_encoder`), None for a
    LambdaMART without text (no text candidates or features; classes from the catalogue
    alone). text_history: the last events whose texts make a user's text profile.
    The tree count is the best round of the held validation queries' NDCG@10 averaged over
    `smoothing_rounds` rounds; training stops `early_stopping_rounds` after its raw best.
    """

    repeat_candidates: int = 100
    cooccurrence_candidates: int = 100
    text_candidates: int = 50
    popular_candidates: int = 50
    text_encoder: str | None = DEFAULT_MODEL_NAME
    embedding_cache: str | None = ".cache/starsrec"
    text_history: int = 20
    derived_subclasses: int = 64
    derived_classes: int = 16
    recent_window_days: float = 28.0
    labels_per_user: int = 10
    session_gap_minutes: float = 30.0
    max_groups: int = 20_000
    n_estimators: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 50
    feature_fraction: float = 0.8
    early_stopping_rounds: int = 100
    smoothing_rounds: int = 21
    # Queries per feature chunk = max_cells // catalogue size: bounds the (Q, N) matrices.
    max_cells: int = 1 << 21
    threads: int = 1
    seed: int = 0
    repeat: RepeatHistoryConfig = field(default_factory=RepeatHistoryConfig)
    cooccurrence: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)

    def __post_init__(self) -> None:
        rebuild_nested_configs(self)


ARRAYS = (
    "popularity",
    "recent",
    "popular",
    "repeat_rate",
    "buyers",
    "first_seen",
    "month_share",
    "item_class",
    "subclass",
    "text",
)


@dataclass
class FeatureGenerators:
    """Everything stage 1 and the features need, fitted on one event log."""

    config: LambdaMARTConfig
    country: str | None
    exclude_seen: bool
    item_class: np.ndarray  # (N,) the catalogue's, else derived from text
    subclass: np.ndarray  # (N,) likewise
    text: np.ndarray  # (N, Dt) unit-norm item text embeddings; (N, 0) without text
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
        """Fit the candidate generators and item statistics on `data.train`."""
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
        text, subclass, item_class = item_text(
            data.catalogue,
            config.text_encoder,
            config.embedding_cache,
            (config.derived_subclasses, config.derived_classes),
            config.seed,
        )
        return cls(
            config=config,
            country=data.country,
            exclude_seen=data.exclude_seen,
            item_class=item_class,
            subclass=subclass,
            text=text,
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
        path: Path,
    ) -> FeatureGenerators:
        """Inverse of `state`, with the catalogue and the saved context (country, repeats);
        `path`, the artifact directory, is what the sub-models' `_restore` get. A state
        saved before text features keeps the catalogue's classes and scores without text,
        as its booster was trained."""
        repeat = RepeatHistoryRecommender(config.repeat)
        cooccurrence = CooccurrenceRecommender(config.cooccurrence)
        for model, prefix in ((repeat, "repeat."), (cooccurrence, "cooccurrence.")):
            model.catalogue = catalogue
            model._restore(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, path
            )
        earlier = {
            "item_class": catalogue.item_class,
            "subclass": catalogue.subclass,
            "text": np.zeros((catalogue.size, 0), np.float32),
        }
        return cls(
            config=config,
            country=context["country"],
            exclude_seen=not context["allow_repeats"],  # the file's name, as dataset.json's
            repeat=repeat,
            cooccurrence=cooccurrence,
            **{name: state[name] if name in state else earlier[name] for name in ARRAYS},
        )

    def candidates_and_features(
        self, queries: Queries
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pairs query index, pairs item index, (P, F) float32 features) for a chunk."""
        repeat, neighbours, profile, last, history, live = self._signals(queries)
        count = history["count"]
        query, item = np.nonzero(self._candidates(repeat, neighbours, profile, count, live))

        lengths = queries.lengths.astype(np.float64)
        distinct = (count > 0).sum(axis=1).astype(np.float64)
        # Times of the first and last history event; the request time for an empty one.
        stamps = np.append(queries.log.timestamp, 0)  # padded: an empty log still indexes
        has_history = queries.end > queries.start
        last_time = np.where(has_history, stamps[queries.end - 1], queries.time)
        first_time = np.where(has_history, stamps[queries.start], queries.time)
        session_events = self._session_events(queries)
        calendar = calendar_features(queries.time, self.country)
        month = calendar["month"].astype(np.int64) - 1
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
            "class_share": _group_share(history["class_share"], self.item_class[item], query),
            "subclass_share": _group_share(history["subclass_share"], self.subclass[item], query),
            # text (present only with an encoder: a model trained without them keeps its width)
            **(
                {
                    "text_profile_similarity": profile[query, item],
                    "text_last_similarity": last[query, item],
                }
                if self.text.shape[1]
                else {}
            ),
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
            # live signals, last: a booster trained before them reads the columns before
            **{
                f"live_{days:g}d": live[query, item, h]
                for h, days in enumerate(LIVE_HALF_LIVES_DAYS)
            },
        }
        features = np.column_stack([np.asarray(v, dtype=np.float32) for v in columns.values()])
        return query, item, features

    def candidates(self, queries: Queries) -> np.ndarray:
        """(Q, N) bool: the items stage 1 proposes for each query."""
        repeat, neighbours, profile, _, history, live = self._signals(queries)
        return self._candidates(repeat, neighbours, profile, history["count"], live)

    def _signals(self, queries: Queries) -> tuple[Any, ...]:
        """A chunk's (Q, N) repeat and co-occurrence scores, text similarities to history
        and last item, `_history`, and (Q, N, H) log1p live counts (`starsrec.data.live`)."""
        profile, last = text_similarities(self.text, queries, self.config.text_history)
        live = np.log1p(replay_counts(queries.log, queries.time, len(self.popularity)))
        repeat = self.repeat.history_scores(queries)
        neighbours = self.cooccurrence.neighbour_scores(queries)
        return repeat, neighbours, profile, last, self._history(queries), live

    def _candidates(
        self,
        repeat: np.ndarray,
        neighbours: np.ndarray,
        profile: np.ndarray,
        count: np.ndarray,
        live: np.ndarray,
    ) -> np.ndarray:
        """(Q, N) bool candidates from the generators' (Q, N) scores, history counts and
        (Q, N, H) live signals (the items selling most now, by the longest half-life)."""
        config = self.config
        mask = np.zeros(repeat.shape, dtype=bool)
        if not self.exclude_seen:
            _mark_top(mask, repeat, config.repeat_candidates)
            _mark_top(mask, neighbours, config.cooccurrence_candidates)
            _mark_top(mask, profile, config.text_candidates)
        else:
            # Seen items can never be recommended: spend the candidate slots on unseen ones.
            unseen = count == 0
            _mark_top(mask, np.where(unseen, neighbours, 0.0), config.cooccurrence_candidates)
            _mark_top(mask, np.where(unseen, profile, 0.0), config.text_candidates)
        mask[:, self.popular] = True
        _mark_top(mask, live[..., -1], config.popular_candidates)
        if self.exclude_seen:
            mask &= count == 0
        return mask

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
        opens = session_opens(
            log.timestamp, rows, queries.start[query], self.config.session_gap_minutes
        )
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


def _group_share(shares: np.ndarray, group: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Each pair's query share of the candidate's group; NaN without a group."""
    if shares.shape[1] == 0:
        return np.full(len(group), np.nan)
    return np.where(group >= 0, shares[query, np.maximum(group, 0)], np.nan)


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest positive scores (ties by lower index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))[:n]
    return order[scores[order] > 0]


def _mark_top(mask: np.ndarray, scores: np.ndarray, n: int) -> None:
    """Set mask[q, j] for the n largest positive scores of each row (ties by lower index)."""
    if n <= 0:
        return
    top, best = top_k(scores, n)
    keep = (top >= 0) & (best > 0)
    mask[np.nonzero(keep)[0], top[keep]] = True


def _row_ranks(scores: np.ndarray) -> np.ndarray:
    """(Q, N) 0-based rank of each item within its row by descending score."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks.astype(np.float32)
