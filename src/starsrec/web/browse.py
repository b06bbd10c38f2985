"""Read-only views of a running `RecommendationService` for the explorer page
(`starsrec.web.explorer`): shopper search, shopper summaries, item search and item audiences.

Everything here reads what the service already holds (the event store, the serving catalogue
and the long-term memories of the offline stage); nothing is written and nothing is trained.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from starsrec.recommender import top_k
from starsrec.serving.catalogue import RequestError
from starsrec.serving.service import HISTORY_PREFIX, RecommendationService
from starsrec.serving.store import Event


@dataclass(frozen=True)
class Count:
    """A class or tag name and how often it occurs in a history (tags: summed weights)."""

    name: str
    count: float


@dataclass(frozen=True)
class ItemView:
    """One catalogue row as the explorer shows it."""

    item_id: str
    text: str
    item_class: str | None
    subclass: str | None
    in_stock: bool
    tags: tuple[str, ...]


@dataclass(frozen=True)
class HistoryEvent:
    """A stored event with its item's text; `live` = posted to the API, not seeded offline."""

    item_id: str
    text: str
    event_type: str
    timestamp: float
    live: bool


@dataclass(frozen=True)
class UserSummary:
    """A shopper's stored history up to a time: its size and span, the classes and tags it
    holds most, and the current session (the trailing events with no gap over the model's
    session gap, when the last of them is within that gap of the request time). Like a
    recommendation request, it reads the last `ServingConfig.history_limit` stored events;
    `truncated` says there may be older ones."""

    user_id: str
    events: int
    truncated: bool
    first_timestamp: float | None
    last_timestamp: float | None
    has_long_term_memory: bool
    top_classes: tuple[Count, ...]
    top_tags: tuple[Count, ...]
    session: tuple[HistoryEvent, ...]


@dataclass(frozen=True)
class AudienceMember:
    """One shopper an item reaches (see `CatalogueBrowser.audience`)."""

    user_id: str
    score: float  # u_L · e_i: the user-dependent part of the retrieval score


class CatalogueBrowser:
    """Searches and summaries over one service. Shoppers are those with a long-term memory
    from the offline stage (the ones `starsrec index` saw); live-only shoppers are still
    summarised by id but are not listed, since the event store has no user listing."""

    def __init__(self, service: RecommendationService) -> None:
        self.service = service
        # The memories are fixed for the life of the service (the offline stage writes them),
        # so the sorted ids and the (U, D) matrix are built once, at the first use.
        self._user_ids: list[str] | None = None
        self._memory: np.ndarray | None = None

    @property
    def user_ids(self) -> list[str]:
        """Every shopper with a long-term memory, sorted (for prefix search by bisection)."""
        if self._user_ids is None:
            self._user_ids = sorted(self.service.memories)
        return self._user_ids

    def describe(self) -> dict:
        """What the page needs to build its forms: sizes, classes and event types."""
        service, items = self.service, self.service.items
        return {
            "items": len(items),
            "in_stock": int(items.in_stock.sum()),
            "users": len(self.user_ids),
            "events": service.store.count(),
            "classes": list(items.class_names),
            "event_types": sorted(service.event_codes, key=service.event_codes.__getitem__),
            "main_event_type": service.main_event_type,
            "allow_repeats": not service.exclude_seen,  # the page's name for it
        }

    def users(self, query: str = "", limit: int = 20) -> list[str]:
        """Up to `limit` shopper ids starting with `query` (case-sensitive, as ids are)."""
        ids = self.user_ids
        found: list[str] = []
        for user_id in ids[bisect.bisect_left(ids, query) :]:
            if not user_id.startswith(query) or len(found) == limit:
                break
            found.append(user_id)
        return found

    def summary(self, user_id: str, at: float | None = None, top: int = 5) -> UserSummary:
        """The shopper's history as a request at `at` (unix seconds; now when None) sees it.
        A 404 RequestError for an id with neither stored events nor a long-term memory."""
        service, items = self.service, self.service.items
        at = time.time() if at is None else float(at)
        stored = service.store.recent(user_id, service.config.history_limit, at)
        history = [e for e in stored if e.timestamp <= at and e.item_id in items.row_of]
        known = user_id in service.memories
        if not history and not stored and not known:
            raise RequestError(
                "user_id", f"user_id: no events and no memory for {user_id!r}", status=404
            )
        rows = np.array([items.row_of[e.item_id] for e in history], dtype=np.int64)
        codes, counts = np.unique(items.item_class[rows], return_counts=True)
        classes = [
            Count(items.class_names[c], int(n))
            for c, n in zip(codes, counts, strict=True)
            if c >= 0  # -1: an item without a class
        ]
        tag_counts = items.tags[rows].sum(0) if len(rows) else np.zeros(0)
        tags = [
            Count(str(service.tag_names[t]), float(tag_counts[t]))
            for t in np.argsort(-tag_counts, kind="stable")
            if tag_counts[t] > 0 and service.tag_names[t]
        ]
        return UserSummary(
            user_id=user_id,
            events=len(history),
            truncated=len(stored) == service.config.history_limit,
            first_timestamp=history[0].timestamp if history else None,
            last_timestamp=history[-1].timestamp if history else None,
            has_long_term_memory=known,
            top_classes=tuple(sorted(classes, key=lambda c: (-c.count, c.name))[:top]),
            top_tags=tuple(tags[:top]),
            session=tuple(self._event_view(e) for e in self._session(history, at)),
        )

    def _session(self, history: Sequence[Event], at: float) -> Sequence[Event]:
        """The trailing events closer together than the model's session gap, if the last one
        is within that gap of `at` (the same gap that splits sessions in training)."""
        gap = self.service.model.config.session_gap_minutes * 60.0
        if not history or at - history[-1].timestamp > gap:
            return []
        start = len(history) - 1
        while start > 0 and history[start].timestamp - history[start - 1].timestamp <= gap:
            start -= 1
        return history[start:]

    def _event_view(self, event: Event) -> HistoryEvent:
        return HistoryEvent(
            item_id=event.item_id,
            text=self.service.items.texts[self.service.items.row_of[event.item_id]],
            event_type=event.event_type,
            timestamp=event.timestamp,
            live=not event.event_id.startswith(HISTORY_PREFIX),
        )

    def item(self, row: int) -> ItemView:
        """The catalogue row `row` as the page shows it."""
        items, service = self.service.items, self.service
        item_class, subclass = int(items.item_class[row]), int(items.subclass[row])
        return ItemView(
            item_id=items.item_ids[row],
            text=items.texts[row],
            item_class=items.class_names[item_class] if item_class >= 0 else None,
            subclass=items.subclass_names[subclass] if subclass >= 0 else None,
            in_stock=bool(items.in_stock[row]),
            tags=tuple(str(t) for t in service.tag_names[items.tags[row] > 0] if t),
        )

    def items(self, query: str = "", limit: int = 20) -> list[ItemView]:
        """Up to `limit` items whose id or text contains `query` (case-insensitive), in
        catalogue order. A linear scan that stops at `limit` matches: fine for a person
        typing, not meant for machine traffic on million-item catalogues."""
        needle = query.casefold()
        items = self.service.items
        found: list[ItemView] = []
        for row, (item_id, text) in enumerate(zip(items.item_ids, items.texts, strict=True)):
            if len(found) == limit:
                break
            if needle in text.casefold() or needle in item_id.casefold():
                found.append(self.item(row))
        return found

    def audience(self, item_id: str, k: int = 10) -> list[AudienceMember]:
        """The `k` shoppers whose long-term memory u_L scores this item highest.

        For one item at one request time, a dormant shopper's retrieval score is
        (u_L + q(c)) · e_i + b_i + offsets(c) · onehot(class(i)); only u_L · e_i depends on
        the shopper, so ranking shoppers by it is ranking them by the score the item gets in
        their recommendations, at any request time. It uses the offline memories, i.e. who
        the item reaches among shoppers returning without a live session; a product added
        with PUT /v1/items is scored with the token it was given, so its audience is known
        at once."""
        service = self.service
        if item_id not in service.items.row_of:
            raise RequestError("item_id", f"item_id: unknown item {item_id!r}", status=404)
        ids = self.user_ids
        if not ids:
            return []
        if self._memory is None:
            self._memory = np.stack([service.memories[u] for u in ids]).astype(np.float32)
        scores = self._memory @ service.items.tokens[service.items.row_of[item_id]]  # (U,)
        best, _ = top_k(scores[None, :], min(k, len(ids)))  # ties by lower row
        return [AudienceMember(ids[u], float(scores[u])) for u in best[0]]
