"""What one recommendation request may return: its filters, and the allowed-rows bitmap of
its scope (stock, classes, subclasses), cached per catalogue version because a shop's
requests share a handful of scopes while the bitmap costs a pass over the catalogue."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from starsrec.serving.catalogue import ItemTable, RequestError

MAX_CACHED_SCOPES = 256  # scopes are few in practice; the cache never grows unbounded


@dataclass(frozen=True)
class RequestFilters:
    """What a request may return. exclude_purchased None = the dataset's default."""

    in_stock_only: bool = True
    classes: tuple[str, ...] = ()
    subclasses: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_purchased: bool | None = None


class FilterScopes:
    """Allowed-rows bitmaps by (catalogue version, scope); `clear` when the catalogue
    changes."""

    def __init__(self) -> None:
        self._bitmaps: dict[tuple, np.ndarray | None] = {}

    def clear(self) -> None:
        """Forget every cached bitmap (call when the catalogue changes)."""
        self._bitmaps.clear()

    def allowed(
        self, items: ItemTable, version: int, filters: RequestFilters
    ) -> tuple[np.ndarray | None, tuple]:
        """The allowed-rows bitmap of a request's scope (None = every row) and its key,
        which also keys the index's own per-scope caches."""
        scope = (version, filters.in_stock_only, filters.classes, filters.subclasses)
        if scope in self._bitmaps:
            return self._bitmaps[scope], scope
        allowed = (
            items.in_stock.copy() if filters.in_stock_only else np.ones(len(items.texts), bool)
        )
        for name, wanted, codes, names in (
            ("filters.classes", filters.classes, items.item_class, items.class_names),
            ("filters.subclasses", filters.subclasses, items.subclass, items.subclass_names),
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
