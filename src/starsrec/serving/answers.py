"""Who answers a loaded artifact's requests (`starsrec.serving.api.Model`): the service itself,
or a plain `Recommender` made to answer like it.

- `ServedAnswers`: an artifact `starsrec index` has prepared. Each user is one
  `RecommendationService.recommend` call, exactly what `POST /v1/recommend` runs for a body
  holding that user id, k, time and filters; similar items are `RecommendationService.similar`
  (`GET /v1/items/{id}/similar`). Nothing is scored here.
- `UnservedAnswers`: any other artifact (a baseline's, or STARS before `starsrec index`). The
  model's own `Recommender.recommend` ranks the users' histories in the dataset it was trained
  on, cut at the request time as the event store cuts them; the request filters are checked and
  applied with the service's own code (`FilterScopes.filters`) on a table of the model's
  catalogue. Its explanations are the item text and where the item came from: tags and
  memories belong to the served model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from starsrec.data.interactions import EventLog, Queries
from starsrec.recommender import Filters, Recommender
from starsrec.serving.catalogue import ItemTable, RequestError
from starsrec.serving.config import ServingConfig
from starsrec.serving.explain import Recommendation
from starsrec.serving.filters import FilterScopes, with_new_item_slots
from starsrec.serving.request import FiltersIn, request_time
from starsrec.serving.service import RecommendationService


class ServedAnswers:
    """The answers of a `RecommendationService` (see module doc)."""

    def __init__(self, service: RecommendationService) -> None:
        self.service = service
        self.name = f"{service.recommender.name} (served)"

    def users(self) -> list[str]:
        """The users the offline stage indexed, in its order."""
        return list(self.service.memories)

    def known(self, user_ids: Sequence[str]) -> np.ndarray:
        """(U,) bool: indexed by the offline stage, or with events in the store."""
        store, memories = self.service.store, self.service.memories
        return np.array(
            [u in memories or store.latest_time(u) is not None for u in user_ids], dtype=bool
        )

    def filters(self, request: FiltersIn) -> Filters:
        """The service's `Filters` for `request`; a RequestError naming the field when it
        names unknown classes or items."""
        return self.service.filters(request)

    def recommend(
        self, user_ids: Sequence[str], k: int, at: float, request: FiltersIn
    ) -> list[list[Recommendation]]:
        """Each user's answer, one service request per user."""
        filters = self.filters(request)
        return [self.service.recommend(user, (), k, at, filters) for user in user_ids]

    def similar(self, item_ids: Sequence[str], k: int) -> list[list[Recommendation]]:
        """Each item's nearest items, in stock, as the HTTP API answers them."""
        return [self.service.similar(item, k) for item in item_ids]

    def close(self) -> None:
        """Close the event store."""
        self.service.store.close()


class UnservedAnswers:
    """A `Recommender` answering like the service, from the dataset's histories (see
    module doc)."""

    def __init__(
        self,
        recommender: Recommender,
        log: EventLog,
        exclude_seen: bool,
        max_future_s: float | None = 86_400.0,
    ) -> None:
        self.recommender = recommender
        self.name = recommender.name
        self.log = log
        self.exclude_seen = exclude_seen
        self.max_future_s = max_future_s
        catalogue = recommender._fitted_catalogue()
        n = catalogue.size
        # Only what the filters read is real: there is no stock outside the service (as in
        # the served table of the trained catalogue, every item is in stock).
        self.items = ItemTable(
            list(catalogue.item_ids),
            list(catalogue.texts),
            list(catalogue.class_names),
            list(catalogue.subclass_names),
            item_class=catalogue.item_class.astype(np.int64),
            subclass=catalogue.subclass.astype(np.int64),
            model_class=np.zeros(n, np.int64),
            tags=np.zeros((n, 1), np.float32),
            tokens=np.zeros((n, 1), np.float32),
            in_stock=np.ones(n, dtype=bool),
        )
        self._scopes = FilterScopes()
        self._users = pd.Index(log.user_ids)
        # New products, for a request's new_item_slots: the items nobody has an event for.
        self._new_items = np.bincount(log.item, minlength=n)[:n] == 0

    def users(self) -> list[str]:
        """Every user of the dataset."""
        return [str(u) for u in self.log.user_ids]

    def known(self, user_ids: Sequence[str]) -> np.ndarray:
        """(U,) bool: users of the dataset."""
        return self._users.get_indexer(pd.Index(np.asarray(user_ids, dtype=str))) >= 0

    def filters(self, request: FiltersIn) -> Filters:
        """`request` as `Filters` over the model's catalogue, as the service converts it;
        a RequestError naming the field when it names unknown classes or items."""
        filters = self._scopes.filters(self.items, 0, request, self.exclude_seen)
        return with_new_item_slots(filters, request, self._new_items, ServingConfig())

    def recommend(
        self, user_ids: Sequence[str], k: int, at: float, request: FiltersIn
    ) -> list[list[Recommendation]]:
        """Each user's top k under `request` at time `at` (unix seconds)."""
        at = request_time(at, (), self.max_future_s)
        queries = self._queries(user_ids, int(at))
        filters = self.filters(request)
        query, rows = queries.flat_history()
        if not filters.exclude_seen:
            query, rows = query[:0], rows[:0]
        # As the service: what a user bought (target events) is excluded, not what they viewed.
        keep = self.log.is_target[rows]
        bought = self.recommender._fitted_catalogue().item_ids[self.log.item[rows[keep]]]
        excluded = [list(request.exclude) for _ in range(len(queries))]
        for q, item in zip(query[keep].tolist(), bought.tolist(), strict=True):
            excluded[q].append(item)
        ranked = Filters(filters.allowed, excluded, slots=filters.slots)
        ids, scores = self.recommender.recommend(queries, k, ranked)
        return [
            self._explain(ids[q], scores[q], self.log.item[queries.history(q)], self.name)
            for q in range(len(queries))
        ]

    def similar(self, item_ids: Sequence[str], k: int) -> list[list[Recommendation]]:
        """What the model recommends after each item alone, the item itself excluded (for
        a model without item vectors, the items that follow it)."""
        for item in item_ids:
            if item not in self.items.row_of:
                raise RequestError("item_id", f"item_id: unknown item {item!r}", status=404)
        rows = [[self.items.row_of[item]] for item in item_ids]
        at = int(request_time(None, (), self.max_future_s))
        queries = Queries.from_histories(rows, self.log.event_types, at)
        exclude = [[item] for item in item_ids]
        ids, scores = self.recommender.recommend(queries, k, Filters(exclude=exclude))
        return [
            self._explain(ids[q], scores[q], np.array(rows[q]), "similar")
            for q in range(len(queries))
        ]

    def close(self) -> None:
        """Nothing to close: everything is in memory."""

    def _queries(self, user_ids: Sequence[str], at: int) -> Queries:
        """Whole-history queries at `at`, each history cut at `at` (later events are not yet
        known at that time, as the event store's window ends at the request time)."""
        queries = Queries.for_users(self.log, list(user_ids), at)
        stamps = self.log.timestamp
        end = np.array(
            [
                start + np.searchsorted(stamps[start:stop], at, side="right")
                for start, stop in zip(queries.start.tolist(), queries.end.tolist(), strict=True)
            ],
            dtype=np.int64,
        ).reshape(-1)
        return Queries(queries.log, queries.start, end, queries.time, queries.user)

    def _explain(
        self, ids: np.ndarray, scores: np.ndarray, history: np.ndarray, memory: str
    ) -> list[Recommendation]:
        """Results (padding dropped) with their text; "repeat" for the user's own items,
        "context" without history, `memory` otherwise."""
        own = set(history.tolist())
        out = []
        for item, score in zip(ids.tolist(), scores.tolist(), strict=True):
            if item == "":
                break  # padding: the filters left fewer than k
            row = self.items.row_of[item]
            source = "repeat" if row in own else memory if len(history) else "context"
            out.append(Recommendation(item, score, self.items.texts[row], (), (), source))
        return out
