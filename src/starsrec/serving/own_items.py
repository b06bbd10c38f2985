"""The served score of the items a shopper already had, computed exactly.

The index ranks items by the one inner product [u + q(c), 1, offsets] . [e_i, b_i, onehot];
what a user's own items add on top (`STARS.own_item_score`: the repeat bonus and the own-item
re-scoring) depends on the user, so the service scores those few items here and merges them
with the index's best others.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from starsrec.index.exact import merge_top_k
from starsrec.serving.store import Event
from starsrec.stars.batch import slot_of
from starsrec.stars.model import STARS
from starsrec.stars.repeats import RepeatFeatures, request_counts


@torch.no_grad()
def own_item_scores(
    model: STARS,
    vectors: np.ndarray,  # (N, D + 1 + n_classes) the index rows [e_i, b_i, onehot(class(i))]
    query: np.ndarray,  # (D + 1 + n_classes) the request's retrieval query
    history: Sequence[Event],  # the request's events, oldest first
    rows: np.ndarray,  # (H,) their item rows
    at: float,  # the request time
) -> tuple[np.ndarray, np.ndarray]:
    """(S,) the distinct rows of the history and (S,) float32 their full served scores;
    none without a history or with the repeat score switched off."""
    if not len(rows) or not model.config.use_repeat_score:
        return rows[:0], np.empty(0, dtype=np.float32)
    stamps = np.array([e.timestamp for e in history], dtype=np.float64)
    config = model.config
    seen, counts = request_counts(
        rows, stamps, at, config.session_gap_minutes, config.repeat_basket_decay
    )
    dim = config.dim
    own = vectors[seen]
    taste = own[:, :dim] @ query[:dim]  # <u + q(c), e_i>
    bonus = model.own_item_score(
        torch.from_numpy(taste),
        RepeatFeatures(*map(torch.from_numpy, counts)),
        torch.from_numpy(slot_of(seen)),
        model.user_repeat_weights(torch.from_numpy(query[:dim])),
    )
    return seen, (own @ query + bonus.numpy()).astype(np.float32)


def merge_own_items(
    found: np.ndarray,  # (F,) rows the index found, never the user's own
    scores: np.ndarray,  # (F,) their scores, best first
    own: tuple[np.ndarray, np.ndarray],  # `own_item_scores`
    added: tuple[np.ndarray, np.ndarray] | None,  # (rows, terms) of `added_terms`
    allowed: np.ndarray | None,  # (N,) bool, None = all
    exclude: np.ndarray,  # rows never to return
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of `found` and the user's own items (with their added terms: live,
    co-occurrence) that the request may return: (K,) rows and (K,) scores, best first."""
    seen, exact = own
    if added is not None and len(seen) and len(added[0]):
        at = np.searchsorted(added[0], seen).clip(max=len(added[0]) - 1)  # both ascending
        hit = added[0][at] == seen
        exact = exact.copy()
        exact[hit] += added[1][at[hit]]
    keep = np.ones(len(seen), bool) if allowed is None else allowed[seen]
    if len(exclude):
        keep &= ~np.isin(seen, exclude)
    mine = (seen[keep][None], exact[keep][None])
    (found,), (scores,) = merge_top_k((found[None], scores[None]), mine, k)
    keep = found >= 0
    return found[keep], scores[keep]
