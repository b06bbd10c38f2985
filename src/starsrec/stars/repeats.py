"""Repeat-purchase features: how often, and how many days ago, a shopper had each item,
how recently in baskets (a count decayed by the baskets since: TIFU-KNN's personal item
frequency), and how many sessions (baskets) the shopper's history holds.

The model turns them into a learned bonus (`STARS.repeat_bonus`). Scoring reads them over
the shopper's whole history (`history_counts`, dense (Q, N)), serving over one live
request's history (`request_counts`, its distinct items only). Training needs the same
quantity at every position of a window, for its sampled candidates only
(`history_repeats`, sparse): the occurrences inside the window plus those carried in
from the user's rows before it (`carried_repeats`). Without the carried-in part the
weights were fit to counts within 50 events and applied to whole-history counts, which
on long repeat-heavy histories (Instacart) are several times larger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from starsrec.data.calendar import DAY
from starsrec.data.interactions import EventLog, Queries, session_opens
from starsrec.stars.batch import PAD, EventBatch, slot_of
from starsrec.stars.device import to_device


class HistoryCounts(NamedTuple):
    """`history_counts`: (Q, N) per item of each query's history, (Q,) per query."""

    counts: np.ndarray  # (Q, N) occurrences
    age_days: np.ndarray  # (Q, N) days from the last of them to the request, inf when never
    recent: np.ndarray  # (Q, N) occurrences decayed by the sessions since (`recent_weights`)
    sessions: np.ndarray  # (Q,) sessions in the history


class RepeatFeatures(NamedTuple):
    """What the model scores a shopper's own items from (`STARS.repeat_bonus`), as
    tensors that broadcast together; `history_counts` and `history_repeats` give them."""

    counts: torch.Tensor  # occurrences in the history
    age_days: torch.Tensor  # days from the last of them to the request, inf when never
    recent: torch.Tensor  # occurrences decayed by the sessions since (`recent_weights`)
    sessions: torch.Tensor  # sessions in the history


def recent_share(repeats: RepeatFeatures, decay: float) -> torch.Tensor:
    """An item's recent (decayed) count as a share of the history's sessions decayed
    alike: 1 for an item in every basket, decay^k for one last had k baskets before the
    latest (TIFU-KNN's personal item frequency, one group)."""
    sessions = repeats.sessions.clamp(min=1)
    return repeats.recent * (1.0 - decay) / (1.0 - decay**sessions)


def recent_weights(session: np.ndarray, sessions: np.ndarray, decay: float) -> np.ndarray:
    """decay ** (sessions - session): what an event of a history's `session`-th session
    (1 = its first) adds to its item's decayed count when the history has `sessions`
    sessions. Events of the latest session count 1, of the one before it `decay`, ...:
    the within-basket decay of TIFU-KNN's personal item frequency."""
    return np.power(decay, sessions - session).astype(np.float32)


def history_counts(
    queries: Queries, n_items: int, gap_minutes: float, decay: float
) -> HistoryCounts:
    """The repeat features of every item over each query's whole history, dense."""
    query, rows = queries.flat_history()
    item = queries.log.item[rows]
    last = np.full((len(queries), n_items), -np.inf)
    np.maximum.at(last, (query, item), queries.log.timestamp[rows].astype(float))
    age = ((queries.time[:, None] - last) / DAY).astype(np.float32)
    counts = np.zeros((len(queries), n_items), dtype=np.float32)
    np.add.at(counts, (query, item), 1.0)
    opens = session_opens(queries.log.timestamp, rows, queries.start[query], gap_minutes)
    sessions = np.bincount(query, weights=opens, minlength=len(queries))
    session = np.cumsum(opens)
    session -= session[np.searchsorted(query, query)] - 1  # 1 at each query's first row
    recent = np.zeros((len(queries), n_items), dtype=np.float32)
    np.add.at(recent, (query, item), recent_weights(session, sessions[query], decay))
    return HistoryCounts(counts, age, recent, sessions.astype(np.float32))


def request_counts(
    rows: np.ndarray, timestamps: np.ndarray, at: float, gap_minutes: float, decay: float
) -> tuple[np.ndarray, HistoryCounts]:
    """`history_counts` for one live request, sparse: from the history's time-ordered item
    `rows` and unix `timestamps` at request time `at`, the distinct items (S,) and their
    features ((S,) each; sessions (1,))."""
    seen, counts = np.unique(rows, return_counts=True)
    column = np.searchsorted(seen, rows)
    last = np.full(len(seen), -np.inf)
    np.maximum.at(last, column, timestamps)
    opens = session_opens(timestamps, np.arange(len(timestamps)), 0, gap_minutes)
    session, sessions = np.cumsum(opens), opens.sum()
    recent = np.zeros(len(seen), dtype=np.float32)
    np.add.at(recent, column, recent_weights(session, sessions, decay))
    age = ((at - last) / DAY).astype(np.float32)
    counts = counts.astype(np.float32)
    return seen, HistoryCounts(counts, age, recent, np.array([sessions], dtype=np.float32))


@dataclass(frozen=True)
class CarriedRepeats:
    """Per window, the candidates its user had before the window's first row."""

    slots: torch.Tensor  # (B, K) item slots, PAD where a window has fewer than K
    counts: torch.Tensor  # (B, K) float: occurrences before the window
    last_days: torch.Tensor  # (B, K) float: day of the last of them
    recent: torch.Tensor  # (B, K) float: their decayed count as of the window's start
    sessions: torch.Tensor  # (B, T) float: sessions in the user's history up to each row
    sessions_before: torch.Tensor  # (B,) float: sessions before the window

    def to(self, device: torch.device) -> CarriedRepeats:
        """The same on `device` (see `device.to_device`)."""
        tensors = (
            self.slots,
            self.counts,
            self.last_days,
            self.recent,
            self.sessions,
            self.sessions_before,
        )
        return CarriedRepeats(*(to_device(t, device) for t in tensors))


class RepeatEntries(NamedTuple):
    """Sparse repeat features at the masked positions of a batch (E entries)."""

    rows: torch.Tensor  # (E,) index of the masked position
    columns: torch.Tensor  # (E,) index into the sorted candidate slots
    features: RepeatFeatures  # (E,) each, over the history up to the position


def carried_repeats(
    log: EventLog, rows: np.ndarray, slots: torch.Tensor, gap_minutes: float, decay: float
) -> CarriedRepeats:
    """The candidate `slots` (sorted) that each window's user had in the log rows before
    the window's `rows` (B, T; -1 = left padding), with counts, last days and decayed
    counts; and the sessions in the user's history up to each row."""
    has_rows = (rows >= 0).any(axis=1)
    first = np.where(rows >= 0, rows, log.size).min(axis=1)  # (B,) first row of each window
    user = log.user[np.where(has_rows, first, 0)] if log.size else np.zeros(len(rows), int)
    start = log.offsets[user]
    lengths = np.where(has_rows, first - start, 0)
    window = np.repeat(np.arange(len(rows)), lengths)
    before = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    opened = session_opens(log.timestamp, before, np.repeat(start, lengths), gap_minutes)
    sessions_before = np.bincount(window, weights=opened, minlength=len(rows))
    session = np.cumsum(opened)  # of each row before a window, 1-based within its user
    session -= np.repeat(np.cumsum(sessions_before) - sessions_before, lengths).astype(np.int64)
    inside = session_opens(log.timestamp, np.maximum(rows, 0), start[:, None], gap_minutes) & (
        rows >= 0
    )
    sessions = sessions_before[:, None] + inside.cumsum(axis=1)
    slot = slot_of(log.item[before])
    candidates = slots.numpy()
    column = np.searchsorted(candidates, slot).clip(max=len(candidates) - 1)
    known = candidates[column] == slot
    window, slot, before = window[known], slot[known], before[known]
    weight = recent_weights(session[known], sessions_before[window], decay)
    # One entry per (window, slot), sorted by window: count and last time by group.
    key, group, counts = np.unique(
        window * (int(candidates[-1]) + 1) + slot, return_inverse=True, return_counts=True
    )
    last = np.full(len(key), -np.inf)
    np.maximum.at(last, group, log.timestamp[before] / DAY)
    recent = np.bincount(group, weights=weight, minlength=len(key))
    owner = key // (int(candidates[-1]) + 1)
    position = np.arange(len(key)) - np.searchsorted(owner, owner)
    width = int(position.max()) + 1 if len(key) else 0
    table = np.full((4, len(rows), width), [[[PAD]], [[0.0]], [[-np.inf]], [[0.0]]])
    table[:, owner, position] = key % (int(candidates[-1]) + 1), counts, last, recent
    return CarriedRepeats(
        torch.from_numpy(table[0].astype(np.int64)),
        torch.from_numpy(table[1].astype(np.float32)),
        torch.from_numpy(table[2].astype(np.float32)),
        torch.from_numpy(table[3].astype(np.float32)),
        torch.from_numpy(sessions.astype(np.float32)),
        torch.from_numpy(sessions_before.astype(np.float32)),
    )


def history_repeats(
    batch: EventBatch,
    slots: torch.Tensor,
    mask: torch.Tensor,
    carried: CarriedRepeats,
    decay: float,
) -> RepeatEntries:
    """At the (B, T) `mask`ed positions, every candidate the user had up to that position,
    with its count, age, decayed count and the history's sessions: the same numbers as
    `history_counts` over the user's history up to there.

    A window holds at most T distinct items, so its own events work on (B, T, T) pairs of
    events instead of (B, T, C) event-candidate pairs: about C / T times less memory and
    time. A carried-in item adds to its count before the window what the window's pairs
    say about its first occurrence in the window, if any; its entries are built per
    (item, masked position) pair, never as a padded (B, K, T) block (K reaches thousands
    for a wholesale buyer)."""
    items = batch.items  # (B, T)
    length = items.shape[1]
    # Within the window: item s against every position t, (B, S, T).
    same = (items[:, :, None] == items[:, None, :]) & (items != PAD)[:, :, None]
    count = same.float().cumsum(-1)  # occurrences of item s up to position t
    last = torch.where(same, batch.event_days[:, None, :], -torch.inf).cummax(-1).values
    earlier = torch.ones(length, length, dtype=torch.bool, device=items.device).tril(-1)
    first = ~(same & earlier).any(-1)  # (B, S): the item's first sight in the window
    # Decayed counts: event t' weighs decay ** (sessions at t - sessions at t') at t >= t'.
    upto = torch.ones(length, length, dtype=torch.bool, device=items.device).triu()  # t' <= t
    session = carried.sessions  # (B, T) sessions up to each position
    since = (session[:, None, :] - session[:, :, None]).clamp(min=0)  # (B, T', T)
    recent = same.float() @ torch.where(upto, decay**since, 0.0)  # (B, S, T)
    # Carried-in items (sorted per window, PAD after them): which of them each event is,
    # and where each first occurs in the window (`length`: it does not).
    had = carried.slots != PAD  # (B, K)
    beyond = torch.iinfo(torch.int64).max  # PAD as a slot after every item: rows sorted
    ordered = torch.where(F.pad(had, (0, 1)), F.pad(carried.slots, (0, 1)), beyond)
    which = torch.searchsorted(ordered, items)  # (B, S), in 0..K
    carried_event = (ordered.gather(1, which) == items) & (items != PAD)
    positions = torch.arange(length, device=items.device).expand_as(items)
    first_at = torch.full_like(ordered, length).scatter_reduce(
        1, which, torch.where(carried_event & first, positions, length), "amin"
    )
    # Carried-in entries: every (carried item, masked position) pair of each window, in
    # (window, item, position) order.
    pair_b, pair_k = had.nonzero(as_tuple=True)  # (H,)
    per_window = mask.sum(1)  # (B,) masked positions
    repeats = per_window[pair_b]  # (H,)
    pair = torch.repeat_interleave(torch.arange(len(pair_b), device=items.device), repeats)
    offset = torch.arange(len(pair), device=items.device) - torch.repeat_interleave(
        repeats.cumsum(0) - repeats, repeats
    )
    rows = (per_window.cumsum(0) - per_window)[pair_b][pair] + offset  # (E,) masked position
    b, k, t = pair_b[pair], pair_k[pair], mask.nonzero(as_tuple=True)[1][rows]
    s = first_at[b, k]
    again = s < length
    s = s.clamp(max=length - 1)
    carried_count = carried.counts[b, k] + torch.where(again, count[b, s, t], 0.0)
    carried_last = torch.maximum(
        carried.last_days[b, k], torch.where(again, last[b, s, t], -torch.inf)
    )
    carried_recent = carried.recent[b, k] * decay ** (
        session[b, t] - carried.sessions_before[b]
    ) + torch.where(again, recent[b, s, t], 0.0)
    carried_entries = (
        rows,
        torch.searchsorted(slots, carried.slots)[b, k],
        carried_count,
        batch.request_days[b, t] - carried_last,
        carried_recent,
    )
    # Items new in the window: counted from their first occurrence in it.
    first = first & ~carried_event
    column = torch.searchsorted(slots, items).clamp(max=len(slots) - 1)  # (B, S)
    candidate = slots[column] == items
    row_of = (mask.flatten().cumsum(0) - 1).view_as(mask)  # (B, T) index of a masked position
    b, s, t = ((first & candidate)[:, :, None] & upto & mask[:, None, :]).nonzero(as_tuple=True)
    window_entries = (
        row_of[b, t],
        column[b, s],
        count[b, s, t],
        batch.request_days[b, t] - last[b, s, t],
        recent[b, s, t],
    )
    rows, columns, counts, age, decayed = (
        torch.cat(pair) for pair in zip(carried_entries, window_entries, strict=True)
    )
    features = RepeatFeatures(counts, age, decayed, carried.sessions[mask][rows])
    return RepeatEntries(rows, columns, features)
