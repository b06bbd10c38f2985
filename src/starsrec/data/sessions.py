"""Within-basket protocols: one item of a basket given the rest of the shopper's session.

Both start from a basket split (`starsrec.data.baskets`: its validation and test baskets of
returning users, the same training events) and ask one single-target query per basket:

- `in-session`: the next item of the basket given its earlier items, for logs whose order
  within a basket is real (Instacart's add-to-cart order). Per basket, one seeded random
  position after the first is the target; the history is everything before the basket plus
  the basket's items before that position. A position whose item already came earlier in
  the basket is never chosen.
- `basket-completion`: for logs whose order within a basket is not real (Online Retail's
  lines are in file order), one seeded random distinct item of the basket is held out and
  the rest of the basket is the session. The basket's rows are reordered (they share one
  timestamp, so no order is lost) so that the held-out item's lines come last: the history
  stays a contiguous slice of the log and never holds another line of the target item.

Baskets too small to ask (one distinct target item) are no query. Both are deterministic
for a seed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from starsrec.data.baskets import BasketSplit
from starsrec.data.interactions import EventLog, Queries

IN_SESSION = "in-session"
BASKET_COMPLETION = "basket-completion"
SESSION_PROTOCOLS = (IN_SESSION, BASKET_COMPLETION)


def within_basket(
    split: BasketSplit, protocol: str, seed: int = 0
) -> tuple[EventLog, dict[str, tuple[Queries, np.ndarray]], str]:
    """(the log the queries slice, {"validation" | "test": (queries, (Q,) target items)},
    a description) for `protocol` (one of `SESSION_PROTOCOLS`) on the baskets of `split`."""
    if protocol not in SESSION_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {SESSION_PROTOCOLS}")
    rng = np.random.default_rng(seed)
    log, basket = split.log, split.basket
    order = np.arange(log.size)  # row permutation: basket-completion moves held-out lines
    asked: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for part in ("validation", "test"):
        queries: Queries = getattr(split, part)
        users, ends, targets = [], [], []
        for q in range(len(queries)):
            first = int(queries.end[q])
            last = int(np.searchsorted(basket, basket[first], side="right"))
            rows = np.arange(first, last)
            rows = rows[log.is_target[rows]]
            if protocol == IN_SESSION:
                end = _next_item(log.item[rows], rng)
                if end is None:
                    continue
                ends.append(int(rows[end]))
                targets.append(int(log.item[rows[end]]))
            else:
                held = _held_out(log.item[first:last], log.is_target[first:last], rng)
                if held is None:
                    continue
                lines = np.arange(first, last)
                mine = log.item[lines] == held
                order[first:last] = np.concatenate([lines[~mine], lines[mine]])
                ends.append(first + int((~mine).sum()))
                targets.append(int(held))
            users.append(int(queries.user[q]))
        asked[part] = (
            np.asarray(users, dtype=np.int64),
            np.asarray(ends, dtype=np.int64),
            np.asarray(targets, dtype=np.int64),
        )
    moved = _reordered(log, order)
    parts = {
        part: (
            Queries(moved, moved.offsets[users], ends, moved.timestamp[ends], users),
            targets,
        )
        for part, (users, ends, targets) in asked.items()
    }
    how = (
        "the next item of the basket (its real order) given its earlier items"
        if protocol == IN_SESSION
        else "one seeded random distinct item of the basket held out, the rest the session"
    )
    description = (
        f"{protocol} on the baskets of {split.protocol}: per basket of a returning user, "
        f"{how}; history = everything before the basket plus that session (seed {seed})"
    )
    return moved, parts, description


def _next_item(items: np.ndarray, rng: np.random.Generator) -> int | None:
    """A random position after the first whose item is new to the basket, None if none."""
    _, first_seen = np.unique(items, return_index=True)
    candidates = np.sort(first_seen[first_seen > 0])
    return int(rng.choice(candidates)) if len(candidates) else None


def _held_out(items: np.ndarray, is_target: np.ndarray, rng: np.random.Generator) -> int | None:
    """A random distinct target item of a basket of at least two, None if it has fewer."""
    distinct = np.unique(items[is_target])
    if len(distinct) < 2:
        return None
    return int(rng.choice(distinct))


def _reordered(log: EventLog, order: np.ndarray) -> EventLog:
    """`log` with its rows in `order` (a permutation within baskets: users keep their rows)."""
    return replace(
        log, item=log.item[order], timestamp=log.timestamp[order], event_type=log.event_type[order]
    )
