"""Baskets and the next-basket protocols (issue 17, "Baskets" and "Protocols").

A basket is one user's consecutive events sharing a session key: an order (Instacart), an
invoice (Online Retail: same customer, same minute), a `basket_id` / `session_id` column,
else the same timestamp. `basket_ids` numbers them.

A next-basket query asks for a whole basket: its history is everything the user did
strictly before the basket's first row (never a row of its own basket or later), asked at
the basket's time, and its targets are the basket's distinct target items. Two protocols
build a `BasketSplit`:

- `next_basket`, for logs with calendar time: train before the validation cut; every basket
  starting in [validation cut, test cut) is a validation query, every basket from the test
  cut on a test query. Histories run up to the basket, window baskets included, as a live
  event store would hold them while the model stays as trained.
- `last_baskets`, for relative-time logs (Instacart): each user's last basket is the test
  query and the one before it validation, the standard next-basket protocol.

Baskets of users with no earlier basket have an empty history; they form their own
`*_new_users` slices and never enter the headline queries. Both protocols are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from starsrec.data.interactions import Catalogue, EventLog, Queries, to_seconds

NEXT_BASKET = "next-basket"  # the protocol names of the two splits here (issue 17)
LAST_BASKET = "last-basket"


def basket_ids(log: EventLog, key: np.ndarray | None = None) -> np.ndarray:
    """(R,) int64 basket number of each log row: 0, 1, ... in row order.

    A new basket opens at a user's first row and wherever the session key changes from the
    row before: `key` (R,) in log row order (an order, invoice, basket or session id of any
    dtype, no missing values) when the source has one, else the timestamp. Online Retail's
    invoice lines share a minute and Instacart's order lines one timestamp, so both need no
    key. Rows must be grouped by user and in time order, as an EventLog's are.
    """
    _check_order(log)
    if key is None:
        values = log.timestamp
    else:
        key = np.asarray(key)
        if key.shape != (log.size,):
            raise ValueError(f"key must have shape ({log.size},), one per log row; got {key.shape}")
        if pd.isna(key).any():
            raise ValueError("key has missing values; every row needs its basket or session")
        # Codes compare the same way whatever the key's dtype (str, object, int...).
        values = pd.factorize(key)[0]
    opens = np.ones(log.size, dtype=bool)
    opens[1:] = (log.user[1:] != log.user[:-1]) | (values[1:] != values[:-1])
    return (np.cumsum(opens) - 1).astype(np.int64)


def _check_order(log: EventLog) -> None:
    same_user = log.user[1:] == log.user[:-1]
    if (np.diff(log.user) < 0).any() or (np.diff(log.timestamp)[same_user] < 0).any():
        raise ValueError("log rows must be grouped by user and in time order (see EventLog)")


class BasketTargets(NamedTuple):
    """The distinct target items of each query in CSR form.

    Query q's targets are `items[offsets[q]:offsets[q + 1]]`, ascending item indices, at
    least one per query. A tuple, so it is the `(offsets, items)` pair that
    `starsrec.evaluation.baskets.basket_metrics` takes as it is.
    """

    offsets: np.ndarray  # (Q + 1,) int64
    items: np.ndarray  # (T,) int64 item index

    @classmethod
    def single(cls, items: np.ndarray) -> BasketTargets:
        """One target per query: (Q,) item indices as a target set each."""
        items = np.asarray(items, dtype=np.int64)
        return cls(np.arange(len(items) + 1, dtype=np.int64), items)

    def of(self, q: int) -> np.ndarray:
        """(|T_q|,) the target items of query q."""
        return self.items[self.offsets[q] : self.offsets[q + 1]]

    def take(self, rows: np.ndarray) -> BasketTargets:
        """The target sets of queries `rows` ((R,) int), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.sizes[rows]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        starts = np.repeat(self.offsets[rows] - offsets[:-1], sizes)
        return BasketTargets(offsets, self.items[starts + np.arange(offsets[-1])])

    @property
    def sizes(self) -> np.ndarray:
        """(Q,) int64 number of targets per query."""
        return np.diff(self.offsets)


@dataclass(frozen=True)
class BasketSplit:
    """Train events plus next-basket validation and test queries with their target sets.

    Every Queries slices `log`. A query's basket starts at the row its history ends at, so
    `basket[queries.end]` are the queries' basket numbers (new-user queries included: their
    empty history ends at the user's first row, which opens the basket).
    """

    protocol: str
    catalogue: Catalogue
    log: EventLog  # every event; queries slice it
    basket: np.ndarray  # (E,) int64 basket number of each log row (`basket_ids`)
    train: EventLog  # the events models fit on
    validation: Queries  # (Qv,) baskets of users with an earlier basket
    validation_targets: BasketTargets
    test: Queries  # (Qt,)
    test_targets: BasketTargets
    validation_new_users: Queries  # first baskets of users: empty histories, own slice
    validation_new_users_targets: BasketTargets
    test_new_users: Queries
    test_new_users_targets: BasketTargets
    description: str

    @property
    def train_end(self) -> int:
        """Timestamp (seconds) of the last training event."""
        return int(self.train.timestamp.max()) if self.train.size else 0


@dataclass(frozen=True)
class _Baskets:
    """Per-basket facts: (B,) arrays indexed by basket number."""

    first: np.ndarray  # first log row
    user: np.ndarray
    rank: np.ndarray  # 0 for the user's first basket, 1 for the next...
    has_target: np.ndarray  # bool: at least one target event

    @classmethod
    def of(cls, log: EventLog, basket: np.ndarray) -> _Baskets:
        n = int(basket[-1]) + 1 if len(basket) else 0
        first = np.flatnonzero(np.diff(basket, prepend=-1)).astype(np.int64)
        user = log.user[first]
        # The basket at the user's first row is the user's basket 0.
        rank = np.arange(n) - basket[log.offsets[user]]
        has_target = np.bincount(basket, weights=log.is_target.astype(np.float64), minlength=n) > 0
        return cls(first=first, user=user, rank=rank, has_target=has_target)


def _slice(
    log: EventLog, basket: np.ndarray, baskets: _Baskets, chosen: np.ndarray
) -> tuple[Queries, BasketTargets]:
    """Queries for the `chosen` baskets (ascending numbers) and their distinct targets."""
    chosen = np.asarray(chosen, dtype=np.int64)
    users = baskets.user[chosen]
    ends = baskets.first[chosen]
    queries = Queries(
        log=log,
        start=log.offsets[users],
        end=ends,  # the basket's first row: nothing of the basket or later is history
        time=log.timestamp[ends],
        user=users,
    )
    position = np.full(len(baskets.first), -1, dtype=np.int64)
    position[chosen] = np.arange(len(chosen))
    rows = np.flatnonzero(log.is_target & (position[basket] >= 0))
    query, item = position[basket[rows]], log.item[rows]
    order = np.lexsort((item, query))
    query, item = query[order], item[order]
    # A basket can hold an item twice (two invoice lines); it is one target.
    distinct = np.ones(len(query), dtype=bool)
    distinct[1:] = (query[1:] != query[:-1]) | (item[1:] != item[:-1])
    query, item = query[distinct], item[distinct]
    offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum(np.bincount(query, minlength=len(chosen)), out=offsets[1:])
    return queries, BasketTargets(offsets, item.astype(np.int64))


def _seconds(cut: int | str) -> int:
    """A cut as int64 seconds: seconds already, or a date string such as '2011-11-01'."""
    if isinstance(cut, int | np.integer):
        return int(cut)
    return int(to_seconds(pd.DatetimeIndex([cut]))[0])


def next_basket(
    log: EventLog,
    catalogue: Catalogue,
    validation_cut: int | str,
    test_cut: int | str,
    key: np.ndarray | None = None,
) -> BasketSplit:
    """Train before `validation_cut`; every later basket with a target item is a query.

    Cuts are seconds (or date strings). A basket belongs to the window its first row falls
    in: validation [validation_cut, test_cut), test [test_cut, end). Its history is every row
    of the user before that first row, earlier window baskets included; a basket with no
    target event (returns only) is no query but is history for later ones. Users with at
    least one earlier basket (of any kind, so the history is never empty) are the headline;
    a user's first basket goes to the `*_new_users` slice of its window. `key`: see
    `basket_ids`.
    """
    cut_v, cut_t = _seconds(validation_cut), _seconds(test_cut)
    if cut_v >= cut_t:
        raise ValueError(f"validation cut {validation_cut} must be before test cut {test_cut}")
    basket = basket_ids(log, key)
    baskets = _Baskets.of(log, basket)
    opened = log.timestamp[baskets.first]
    query = baskets.has_target
    in_validation = query & (opened >= cut_v) & (opened < cut_t)
    in_test = query & (opened >= cut_t)
    returning = baskets.rank > 0
    # A basket straddling the validation cut (a keyed session) is neither train nor query
    # after the cut: its later rows are only history.
    train = log.select(log.timestamp < cut_v)

    def take(mask: np.ndarray) -> tuple[Queries, BasketTargets]:
        return _slice(log, basket, baskets, np.flatnonzero(mask))

    validation, validation_targets = take(in_validation & returning)
    test, test_targets = take(in_test & returning)
    validation_new, validation_new_targets = take(in_validation & ~returning)
    test_new, test_new_targets = take(in_test & ~returning)
    return BasketSplit(
        protocol=NEXT_BASKET,
        catalogue=catalogue,
        log=log,
        basket=basket,
        train=train,
        validation=validation,
        validation_targets=validation_targets,
        test=test,
        test_targets=test_targets,
        validation_new_users=validation_new,
        validation_new_users_targets=validation_new_targets,
        test_new_users=test_new,
        test_new_users_targets=test_new_targets,
        description=(
            f"next-basket: train before {validation_cut}; every basket of a returning user "
            f"starting in [{validation_cut}, {test_cut}) is a validation query, from "
            f"{test_cut} a test query; history = everything the user did before the basket; "
            "targets = the basket's distinct target items; first baskets are a new-user slice"
        ),
    )


def last_baskets(log: EventLog, catalogue: Catalogue, key: np.ndarray | None = None) -> BasketSplit:
    """Per user: last basket with a target item = test, the one before = validation.

    For relative-time logs (Instacart), where no calendar cut means anything. Only baskets
    holding a target event count. Users with fewer than three such baskets stay wholly in
    train and are not evaluated, as in leave-one-out: the third guarantees that the
    validation query has a purchase basket of history and that validation and test score
    the same users. Train is every row before the user's validation basket, so neither
    query basket, nor anything between or after them, is fitted on; rows between the two
    (a returns-only basket) are test history. The new-user slices are empty: every
    evaluated user has history by construction. `key`: see `basket_ids`.
    """
    basket = basket_ids(log, key)
    baskets = _Baskets.of(log, basket)
    candidates = np.flatnonzero(baskets.has_target)
    owner = baskets.user[candidates]
    per_user = np.bincount(owner, minlength=log.n_users)
    last = np.full(log.n_users, -1, dtype=np.int64)
    second = np.full(log.n_users, -1, dtype=np.int64)
    # Baskets are numbered in (user, time) order, so the last write per user wins.
    last[owner] = candidates
    before_last = candidates[candidates != last[owner]]
    second[baskets.user[before_last]] = before_last
    evaluated = np.flatnonzero(per_user >= 3)

    cutoff = np.full(log.n_users, np.iinfo(np.int64).max)
    cutoff[evaluated] = baskets.first[second[evaluated]]
    train = log.select(np.arange(log.size) < cutoff[log.user])
    validation, validation_targets = _slice(log, basket, baskets, second[evaluated])
    test, test_targets = _slice(log, basket, baskets, last[evaluated])
    nobody, no_targets = _slice(log, basket, baskets, np.empty(0, dtype=np.int64))
    return BasketSplit(
        protocol=LAST_BASKET,
        catalogue=catalogue,
        log=log,
        basket=basket,
        train=train,
        validation=validation,
        validation_targets=validation_targets,
        test=test,
        test_targets=test_targets,
        validation_new_users=nobody,
        validation_new_users_targets=no_targets,
        test_new_users=nobody,
        test_new_users_targets=no_targets,
        description=(
            "next-basket (last baskets): per user with >= 3 baskets holding a target item, "
            "the last is test, the one before it validation, rows before the validation "
            "basket train; "
            "targets = the basket's distinct target items"
        ),
    )
