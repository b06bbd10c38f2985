"""Live signals at serving: every item's recent sales, read from the event store's counters,
and its co-occurrence with the shopper's latest purchases.

The score's live term (`STARS.live_score`) depends on the request time and on every shopper's
events, the co-occurrence term (`STARS.cooccurrence_score`) on the user's latest purchases,
neither on the query, so the index, which ranks by one fixed inner product, cannot hold
them. Both are added to few items (`sum_terms`): the served top k are among the index's top
k by the rest of the score and those items, which the service scores exactly (`with_added`)
and merges in.

Where the counts come from is a `LiveSource`: `StoreLive` reads the store's counters
(`EventStore.live_counts`, kept on insert) at most every `refresh_s` and decays the snapshot
to each request's time; `ReplayedLive` replays an `EventLog` (`starsrec.data.live`), what
the offline scorer reads, so the contract suite checks the served path on the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch

from starsrec.data.cooccurrence import request_similarity
from starsrec.data.interactions import EventLog
from starsrec.data.live import decay_rates, replay_counts
from starsrec.index.exact import inner_scores
from starsrec.serving.store import EventStore
from starsrec.stars.model import STARS
from starsrec.stars.recommender import StarsRecommender

LiveSource = Callable[[float], tuple[np.ndarray, np.ndarray]]  # at -> (rows ascending, (R, H))
# How deep the service searches the index when live terms are on (at least k): a row left
# out must carry a live term of at least the k-th best score minus the last found one to
# be scored, so a deeper search keeps the items that sold a little from being scored.
LIVE_SEARCH_DEPTH = 100


class StoreLive:
    """The store's live counts of target events by catalogue row, kept up to date from what
    changed (`EventStore.live_changes`) at most every `refresh_s` seconds (and at the next
    request after `invalidate`), decayed to each request's time.

    The copy holds the counts of the rows that have any, at the time of the last read; a
    read decays it to the new time (one factor per half-life: every count decays alike) and
    merges in the rows whose counters changed, so a read costs the selling rows and what
    changed, never the catalogue's size. A request earlier than the last read, or the first
    after products were put, reads every counter again."""

    def __init__(
        self,
        store: Callable[[], EventStore],
        event_types: Collection[str],
        row_of: Mapping[str, int],
        refresh_s: float,
    ) -> None:
        self.store = store  # a getter: the service reopens its store after a fork
        self.event_types = sorted(event_types)
        self.row_of = row_of
        self.refresh_s = refresh_s
        self._rows = np.empty(0, dtype=np.int64)  # the rows with counts, ascending
        self._held = np.zeros((0, len(decay_rates())))  # (R, H) their counts at `_at`
        self._size = 0  # the catalogue's rows at the last full read
        self._at = -np.inf  # when the copy's counts hold
        self._seq = 0  # the store's number for the changes read
        self._read = -np.inf  # time.monotonic() of the last read

    def invalidate(self) -> None:
        """Read the store's changes at the next request (this process just wrote events)."""
        self._read = -np.inf

    def __call__(self, at: float) -> tuple[np.ndarray, np.ndarray]:
        """(rows (R,), (R, H) live counts at `at`) of the items with counts."""
        now = time.monotonic()
        if now - self._read > self.refresh_s or at < self._at:
            # Products put since the last read may have sold before this worker knew them.
            grown = len(self.row_of) > self._size
            self._refresh(at, since=0 if at < self._at or grown else self._seq)
            self._read = now
        return self._rows, self._held * np.exp(-decay_rates() * (at - self._at))

    def _refresh(self, at: float, since: int) -> None:
        seq, full, ids, counts = self.store().live_changes(self.event_types, at, since)
        rows = np.array([self.row_of.get(i, -1) for i in ids], dtype=np.int64)
        known = rows >= 0  # an item the catalogue does not hold (yet) is not served
        order = np.argsort(rows[known])
        rows, counts = rows[known][order], np.asarray(counts, dtype=np.float64)[known][order]
        if full:
            held_rows, held = rows[:0], self._held[:0]
            self._size = len(self.row_of)
        else:
            held_rows, held = self._rows, self._held * np.exp(-decay_rates() * (at - self._at))
        # Changed rows already held are overwritten in place, the others inserted in order:
        # O(held rows) with no sort of them. Only a changed row can fall to zero (a
        # forgotten shopper's sales), so only those are dropped.
        place = np.searchsorted(held_rows, rows)
        held_here = place < len(held_rows)
        held_here[held_here] = held_rows[place[held_here]] == rows[held_here]
        held[place[held_here]] = counts[held_here]
        selling = counts.any(axis=1)
        new = ~held_here & selling
        held_rows = np.insert(held_rows, place[new], rows[new])
        held = np.insert(held, place[new], counts[new], axis=0)
        zero = rows[held_here & ~selling]
        if len(zero):
            keep = ~np.isin(held_rows, zero)
            held_rows, held = held_rows[keep], held[keep]
        self._rows, self._held = held_rows, held
        self._at, self._seq = at, seq


class ReplayedLive:
    """The live counts of `log` replayed at each request's time (`replay_counts`)."""

    def __init__(self, log: EventLog, n_items: int) -> None:
        self.log = log
        self.n_items = n_items

    def __call__(self, at: float) -> tuple[np.ndarray, np.ndarray]:
        """(rows (R,), (R, H) live counts at `at`) of the items with counts."""
        counts = replay_counts(self.log, np.array([at]), self.n_items)[0]
        rows = np.flatnonzero(counts.any(axis=1))
        return rows, counts[rows].astype(np.float64)


@torch.no_grad()
def live_scores(model: STARS, counts: np.ndarray, new: np.ndarray) -> np.ndarray:
    """(R,) float32 `STARS.live_score` of R items with (R, H) `counts`; `new` (R,) bool:
    whether each is without training events."""
    term = model.live_score(torch.from_numpy(counts.astype(np.float32)), torch.from_numpy(new))
    return term.numpy().astype(np.float32)


@torch.no_grad()
def cooccurrence_terms(
    recommender: StarsRecommender, bought: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows ascending, (R,) float32 `STARS.cooccurrence_score`) of the items co-occurring
    with a request's (H,) `bought` rows, oldest first (`request_similarity`); None where the
    model gives co-occurrence no weight."""
    model = recommender._fitted_model()
    if model.cooccurrence_weight == 0:
        return None
    table, config = recommender.cooccurrence_table(), recommender.config.cooccurrence
    rows, sums = request_similarity(bought, table, config)
    term = model.cooccurrence_score(torch.from_numpy(sums).float())
    return rows, term.numpy().astype(np.float32)


def sum_terms(
    *terms: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """One (rows ascending, (R,) float32 terms) of several such per-row terms, summed where
    rows meet; None when every one is None."""
    given = [term for term in terms if term is not None]
    if len(given) < 2:
        return given[0] if given else None
    rows, inverse = np.unique(np.concatenate([r for r, _ in given]), return_inverse=True)
    values = np.concatenate([v for _, v in given]).astype(np.float64)
    return rows, np.bincount(inverse, weights=values, minlength=len(rows)).astype(np.float32)


def with_added(
    found: np.ndarray,  # (F,) the index's rows, best first, -1 padding
    scores: np.ndarray,  # (F,) their scores without the added terms
    added: tuple[np.ndarray, np.ndarray],  # (rows (R,) ascending, added terms (R,))
    vectors: np.ndarray,  # (N, D') the index rows
    query: np.ndarray,  # (D') the retrieval query
    skip: np.ndarray,  # rows never to add (excluded, or scored apart as own items)
    allowed: np.ndarray | None,  # (N,) bool, None = all
    k: int | None = None,  # how many the caller keeps (None: F)
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates for the top k with the added terms (live, co-occurrence: `sum_terms`):
    the index's `found`, their scores plus their terms, then the other rows with a term, not
    in `skip` and allowed, that can still reach the top k, scored exactly (`inner_scores` with
    `query`, bit for bit the index's, plus the term). Unsorted.

    A row the index left out scores at most the last found score without its term, so it
    reaches the top k only if its term is at least the k-th best found score with terms minus
    that: the rows below (the many items that sold a little, long ago) are not scored. The
    deeper the index searched past k (`LIVE_SEARCH_DEPTH`), the lower that last score and the
    fewer rows pass."""
    keep = found >= 0
    k = len(found) if k is None else k
    # every row found, at least k: the last bounds the rest
    full = bool(keep.all()) and len(found) >= k > 0
    found, scores = found[keep], scores[keep].astype(np.float32)
    rows, terms = added
    lifted = scores.copy()
    if len(rows):
        at = np.searchsorted(rows, found).clip(max=len(rows) - 1)
        hit = rows[at] == found
        lifted[hit] += terms[at[hit]]
    kth = np.partition(lifted, len(lifted) - k)[len(lifted) - k] if full else np.inf
    # The bound first: what passes it is few, the membership tests then cost little.
    others = np.flatnonzero(terms >= (kth - scores.min() if full else -np.inf))
    others = others[~np.isin(rows[others], found) & ~np.isin(rows[others], skip)]
    if allowed is not None:
        others = others[allowed[rows[others]]]
    extra = rows[others]
    exact = (inner_scores(query[None], vectors[extra])[0] + terms[others]).astype(np.float32)
    return np.concatenate([found, extra]), np.concatenate([lifted, exact])
