"""Live signals: each item's recent sales over all shoppers, as a live event store holds them.

An item's live count with half-life h at time t is the sum, over its target events
(purchases) strictly before t, of 2^(-(t - t_e) / h): a count of recent sales in which a sale
h ago weighs one half. Unlike a count over a fixed window it needs no list of events to
expire: one number and the time it was last brought up to date per (item, half-life) is the
whole state (`fold`), so an event store keeps it on insert and a request reads it in O(1)
per item (`counter_table`).

`replay_counts` computes the same numbers for a batch of queries from an `EventLog`, as the
store would have held them at each query's time: the evaluation and the offline scorer read
live signals through it, the service through its store's counters; tests check that the two
agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from starsrec.data.calendar import DAY
from starsrec.data.interactions import EventLog

# The half-lives (days) of the counts a store keeps: a day's trend and a week's.
LIVE_HALF_LIVES_DAYS = (1.0, 7.0)


def decay_rates(half_lives_days: tuple[float, ...] = LIVE_HALF_LIVES_DAYS) -> np.ndarray:
    """(H,) float64 per-second decay rates ln 2 / h of the half-lives."""
    return np.array([math.log(2) / (h * DAY) for h in half_lives_days], dtype=np.float64)


def fold(
    value: np.ndarray, updated: float, at: float, rates: np.ndarray
) -> tuple[np.ndarray, float]:
    """A counter's (H,) values and update time after one event at time `at`. An event older
    than the last update is added at its decayed weight, so events may arrive in any order."""
    if at >= updated:
        return value * np.exp(-rates * (at - updated)) + 1.0, at
    return value + np.exp(-rates * (updated - at)), updated


def replay_counts(
    log: EventLog,
    times: np.ndarray,
    n_items: int,
    half_lives_days: tuple[float, ...] = LIVE_HALF_LIVES_DAYS,
) -> np.ndarray:
    """(Q, N, H) float32 live counts of every item at each of the (Q,) request `times`, from
    the target events of `log` strictly before each time (all shoppers'). Queries are
    visited in time order, the counts decayed and topped up between them, so a batch costs
    one pass over its events plus Q x N."""
    rates = decay_rates(half_lives_days)
    target = log.is_target
    order = np.argsort(log.timestamp[target], kind="stable")
    stamps = log.timestamp[target][order].astype(np.float64)
    items = log.item[target][order]
    out = np.zeros((len(times), n_items, len(rates)), dtype=np.float32)
    counts = np.zeros((len(rates), n_items), dtype=np.float64)
    now, taken = -np.inf, 0
    for q in np.argsort(times, kind="stable"):
        at = float(times[q])
        upto = int(np.searchsorted(stamps, at, side="left"))  # strictly before `at`
        if np.isfinite(now):
            counts *= np.exp(-rates * (at - now))[:, None]
        new = slice(taken, upto)
        for h, rate in enumerate(rates):
            weights = np.exp(-rate * (at - stamps[new]))
            counts[h] += np.bincount(items[new], weights=weights, minlength=n_items)
        now, taken = at, upto
        out[q] = counts.T
    return out


def counter_table(
    rows: Sequence[tuple[str, float, float, float]], at: float
) -> tuple[list[str], np.ndarray]:
    """(item ids, (R, H) counts at `at`) from counter rows (item id, half-life in days,
    value, updated), summed per item over its rows (one per event type); ids in order of
    first appearance, a half-life the store does not keep ignored."""
    if not rows:
        return [], np.zeros((0, len(LIVE_HALF_LIVES_DAYS)))
    items, half_lives, values, updated = zip(*rows, strict=True)
    codes, ids = pd.factorize(pd.Index(items))
    column = pd.Index(LIVE_HALF_LIVES_DAYS).get_indexer(np.asarray(half_lives, dtype=float))
    keep = column >= 0
    rates = decay_rates()[column[keep]]
    elapsed = np.maximum(float(at) - np.asarray(updated, dtype=float)[keep], 0.0)
    decayed = np.asarray(values, dtype=float)[keep] * np.exp(-rates * elapsed)
    counts = np.zeros((len(ids), len(LIVE_HALF_LIVES_DAYS)))
    np.add.at(counts, (codes[keep], column[keep]), decayed)
    return list(ids), counts
