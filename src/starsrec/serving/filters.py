"""A request's filters, from its names to `Filters`: the service's edge for what a request
may return. The allowed-rows bitmap of a scope (stock, classes, subclasses) is cached per
catalogue version, because a shop's requests share a handful of scopes while the bitmap
costs a pass over the catalogue."""

from __future__ import annotations

import numpy as np

from starsrec.recommender import Filters
from starsrec.serving.catalogue import ItemTable, RequestError
from starsrec.serving.request import FiltersIn

MAX_CACHED_SCOPES = 256  # scopes are few in practice; the cache never grows unbounded


class FilterScopes:
    """Allowed-rows bitmaps by (catalogue version, scope); `clear` when the catalogue
    changes."""

    def __init__(self) -> None:
        self._bitmaps: dict[tuple, np.ndarray | None] = {}

    def clear(self) -> None:
        """Forget every cached bitmap (call when the catalogue changes)."""
        self._bitmaps.clear()

    def filters(
        self, items: ItemTable, version: int, request: FiltersIn, exclude_seen: bool
    ) -> Filters:
        """The `Filters` of one request's names over `items` (a batch of one query): the
        allowed rows of its scope, with the scope's key (which also keys the index's own
        per-scope caches), its excluded ids and whether the user's own purchases go
        (`request.exclude_purchased`; None takes `exclude_seen`, the dataset's rule).
        A RequestError naming the field for an unknown class, subclass or item."""
        allowed, scope = self._allowed(items, version, request)
        items.rows(request.exclude, "filters.exclude")  # unknown ids are refused here
        purchased = request.exclude_purchased
        seen = exclude_seen if purchased is None else purchased
        return Filters(allowed, [tuple(request.exclude)], seen, scope)

    def _allowed(
        self, items: ItemTable, version: int, request: FiltersIn
    ) -> tuple[np.ndarray | None, tuple]:
        """The allowed-rows bitmap of a request's scope (None = every row) and its key."""
        scope = (version, request.in_stock_only, tuple(request.classes), tuple(request.subclasses))
        if scope in self._bitmaps:
            return self._bitmaps[scope], scope
        allowed = (
            items.in_stock.copy() if request.in_stock_only else np.ones(len(items.texts), bool)
        )
        for name, wanted, codes, names in (
            ("filters.classes", request.classes, items.item_class, items.class_names),
            ("filters.subclasses", request.subclasses, items.subclass, items.subclass_names),
        ):
            if wanted:
                unknown = sorted(set(wanted) - set(names))
                if unknown:
                    raise RequestError(name, f"{name}: unknown {unknown[:5]}; known: {names[:20]}")
                allowed &= np.isin(codes, [names.index(w) for w in wanted])
        result = None if allowed.all() else allowed
        if len(self._bitmaps) >= MAX_CACHED_SCOPES:
            self._bitmaps.clear()
        self._bitmaps[scope] = result
        return result, scope
