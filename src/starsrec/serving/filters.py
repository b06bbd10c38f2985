"""A request's filters, from its names to `Filters`: the service's edge for what a request
may return. The allowed-rows bitmap of a scope (stock, classes, subclasses) is cached per
catalogue version, because a shop's requests share a handful of scopes while the bitmap
costs a pass over the catalogue."""

from __future__ import annotations

import dataclasses

import numpy as np

from starsrec.recommender import Filters, Slots, new_item_slots, place_slots, top_k
from starsrec.serving.catalogue import ItemTable, RequestError
from starsrec.serving.config import ServingConfig
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


def with_new_item_slots(
    filters: Filters, request: FiltersIn, new_items: np.ndarray, config: ServingConfig
) -> Filters:
    """`filters` with `request.new_item_slots` places (None: `config.new_item_slots`) kept
    after the first `config.new_item_slots_after` for the best new items
    (`starsrec.recommender.new_item_slots`): new to the catalogue, `new_items` ((N,) bool:
    products without training events), or to the shopper, as `request.new_to` (None:
    `config.new_to`) says."""
    count = config.new_item_slots if request.new_item_slots is None else request.new_item_slots
    new_to = config.new_to if request.new_to is None else request.new_to
    slots = new_item_slots(count, config.new_item_slots_after, new_to, new_items)
    return filters if slots is None else dataclasses.replace(filters, slots=slots)


def for_history(slots: Slots, rows: np.ndarray) -> Slots:
    """`slots` for one request whose history holds item `rows`: explore places
    (`Slots.new_to_shopper`) leave those out of their set; other places stay as they are."""
    if not slots.new_to_shopper:
        return slots
    items = slots.items.copy()
    items[rows] = False
    return dataclasses.replace(slots, items=items, new_to_shopper=False)


def placed_top(
    ranked: tuple[np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray],
    slots: Slots,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The top k under `slots` (over the catalogue's rows) of two ranked lists of (rows,
    scores): the best k + count of all items and the best after + count of the slots'
    items, which between them hold every item placing can move or pass. Ranked as
    `place_slots` ranks the whole catalogue: the union's columns in row order."""
    rows = np.concatenate([ranked[0], new[0]])
    scores = np.concatenate([ranked[1], new[1]])
    rows, first = np.unique(rows, return_index=True)
    candidates = scores[first][None].astype(np.float32)
    place_slots(candidates, Slots(slots.items[rows], slots.count, slots.after))
    found, placed = top_k(candidates, k, rows)
    keep = found[0] >= 0
    return found[0][keep], placed[0][keep]
