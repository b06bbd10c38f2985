"""The offline scorer: every item's served score for a batch of queries, in two steps.

`score_parts` runs the trained model (`STARS.user_side`, `item_terms`, `repeat_bonus`) and
reads what the calibrated terms score from (a shopper's own items with their taste and
repeat features, every item's live counts, co-occurrence sums with the latest purchases);
`combine` adds those terms with the model's current calibrated values
(`STARS.own_item_adjustment`, `live_score`, `cooccurrence_score`). `StarsRecommender.score`
is the two in a row; calibration computes the parts of its validation queries once and
combines them again for every setting it tries (only the calibrated values change between
its passes; `cached_scorer`), keeping each batch's live and co-occurrence terms while
their values stay (the coordinate search moves one block of values at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from starsrec.data.calendar import CalendarEvents
from starsrec.data.cooccurrence import CooccurrenceConfig, history_similarity
from starsrec.data.interactions import Queries
from starsrec.data.live import replay_counts
from starsrec.stars.batch import slot_of
from starsrec.stars.device import to_device
from starsrec.stars.model import STARS
from starsrec.stars.repeats import RepeatFeatures, history_counts
from starsrec.stars.sequences import featurize, query_windows

# What calibration keeps of its validation queries' parts at most (floats: 1 GiB), so a
# large catalogue falls back to scoring each pass again rather than running out of memory.
CACHE_FLOATS = 1 << 28


class ScoreParts(NamedTuple):
    """One batch of B queries over N items, before the calibrated terms (`score_parts`)."""

    fixed: torch.Tensor  # (B, N) taste + item bias + calendar offsets + repeat bonus
    own: tuple[torch.Tensor, torch.Tensor]  # (S,) query and item of each own item
    taste: torch.Tensor  # (S,) their taste terms <u + q(c), e_i>
    repeats: RepeatFeatures  # (S,) their repeat features
    sales: torch.Tensor | None  # (B, N, H) live counts; None where not asked for
    similarity: torch.Tensor | None  # (B, N) co-occurrence sums; None where not asked for

    def floats(self) -> int:
        """What a cache of these parts costs, in float32s (an own item: two int64 indices,
        its taste and four repeat features)."""
        dense = [self.fixed, self.sales, self.similarity]
        return sum(t.numel() for t in dense if t is not None) + 9 * self.taste.numel()


@torch.no_grad()
def score_parts(
    model: STARS,
    calendar: CalendarEvents,
    queries: Queries,
    batch_size: int,
    live: bool,
    table: sp.csr_matrix | None,
    cooccurrence: CooccurrenceConfig,
) -> list[ScoreParts]:
    """The parts of `queries`' scores over the whole catalogue (see module doc), in batches
    of `batch_size` queries, on the model's device: with the live counts (`replay_counts`
    of the queries' log: every shopper's sales before each query's time) when `live`, with
    co-occurrence sums (`history_similarity` in `table`) when a table is given."""
    model.eval()
    vectors = model.item_vectors()  # (N, D)
    parts = []
    for lo in range(0, len(queries), batch_size):
        part = queries[lo : lo + batch_size]
        parts.append(_batch_parts(model, vectors, calendar, part, live, table, cooccurrence))
    return parts


def _batch_parts(
    model: STARS,
    vectors: torch.Tensor,
    calendar: CalendarEvents,
    queries: Queries,
    live: bool,
    table: sp.csr_matrix | None,
    cooccurrence: CooccurrenceConfig,
) -> ScoreParts:
    device = vectors.device
    gap = model.config.session_gap_minutes
    all_slots = slot_of(torch.arange(vectors.shape[0], device=device))
    rows = query_windows(queries, model.config.max_length)
    batch = featurize(queries.log, rows, queries.time, calendar, gap).to(device)
    query = model.user_side(batch)[0][:, -1]  # (B, D)
    bias, offsets = model.item_terms(all_slots, batch.request_events[:, -1])
    taste = query @ vectors.T  # (B, N)
    counts = history_counts(queries, vectors.shape[0], gap, model.config.repeat_basket_decay)
    repeats = RepeatFeatures._make(
        to_device(torch.from_numpy(a), device) for a in (*counts[:3], counts.sessions[:, None])
    )
    weights = model.user_repeat_weights(query)[:, None, :]
    fixed = taste + bias + offsets + model.repeat_bonus(repeats, all_slots, weights)
    # Own-item re-scoring touches only items in the history (their recent share is 0 too).
    who, which = torch.nonzero(repeats.counts > 0, as_tuple=True)
    own = (who, which)
    sessions = repeats.sessions.expand_as(repeats.counts)
    own_repeats = RepeatFeatures(*(r[own] for r in (*repeats[:3], sessions)))
    sales = similarity = None
    if live:
        sales = to_device(
            torch.from_numpy(replay_counts(queries.log, queries.time, len(all_slots))), device
        )
    if table is not None:
        together = history_similarity(queries, table, cooccurrence)
        similarity = to_device(torch.from_numpy(together).float(), device)
    return ScoreParts(fixed, own, taste[own], own_repeats, sales, similarity)


@torch.no_grad()
def combine(model: STARS, parts: ScoreParts, memo: dict | None = None) -> torch.Tensor:
    """(B, N) the served score: `parts` plus the calibrated terms at the model's values.
    `memo` (calibration's, one per batch) keeps the live and co-occurrence terms with the
    values they were computed at: a pass that moved only other values reuses them."""
    scores = parts.fixed.clone()
    adjustment = model.own_item_adjustment(parts.taste, parts.repeats)
    scores.index_put_(parts.own, adjustment, accumulate=True)
    if parts.sales is not None:
        sales = parts.sales
        all_slots = slot_of(torch.arange(scores.shape[1], device=scores.device))
        new = model.item_tokens.warm[all_slots] == 0
        scores += _term(memo, "live", model.live_weights, lambda: model.live_score(sales, new))
    if parts.similarity is not None:
        similarity = parts.similarity
        values = torch.stack([model.cooccurrence_weight, model.cooccurrence_scale])
        scores += _term(memo, "cooccurrence", values, lambda: model.cooccurrence_score(similarity))
    return scores


def _term(
    memo: dict | None, name: str, values: torch.Tensor, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """compute(), or what `memo` kept of it at the same `values`."""
    if memo is None:
        return compute()
    key = tuple(values.tolist())
    if name not in memo or memo[name][0] != key:
        memo[name] = (key, compute())
    return memo[name][1]


def combined(
    model: STARS, parts: list[ScoreParts], memos: list[dict] | None, n_items: int
) -> np.ndarray:
    """(Q, N) float32 scores of the batches' `parts` in order, combined (`combine`, with
    each batch's memo where given)."""
    scores = np.empty((sum(p.fixed.shape[0] for p in parts), n_items), dtype=np.float32)
    lo = 0
    for k, p in enumerate(parts):
        memo = None if memos is None else memos[k]
        scores[lo : lo + p.fixed.shape[0]] = combine(model, p, memo).cpu().numpy()
        lo += p.fixed.shape[0]
    return scores


def cached_scorer(
    model: STARS,
    n_items: int,
    parts_of: Callable[[int, int], list[ScoreParts]],
    max_floats: int = CACHE_FLOATS,
) -> Callable[[int, int], np.ndarray]:
    """score(lo, hi): the (hi - lo, N) scores of queries [lo, hi) at the model's current
    calibrated values, from `parts_of(lo, hi)` computed on first use and kept, with their
    batches' memos (`combine`), while the cache holds at most `max_floats` float32s (past
    that, computed again each time)."""
    cache: dict[tuple[int, int], tuple[list[ScoreParts], list[dict]]] = {}
    held = 0

    def score(lo: int, hi: int) -> np.ndarray:
        nonlocal held
        if (lo, hi) in cache:
            return combined(model, *cache[lo, hi], n_items)
        parts = parts_of(lo, hi)
        # each part, and the live and co-occurrence terms its memo keeps
        kept = [(p.sales is not None) + (p.similarity is not None) for p in parts]
        size = sum(p.floats() + p.fixed.numel() * k for p, k in zip(parts, kept, strict=True))
        if held + size > max_floats:
            return combined(model, parts, None, n_items)
        cache[lo, hi], held = (parts, [{} for _ in parts]), held + size
        return combined(model, *cache[lo, hi], n_items)

    return score
