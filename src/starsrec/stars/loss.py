"""The training objective: a sampled softmax over each position's next target event, and
over the next basket where the next event opens a new session.

At every position the model predicts the next target event among the step's candidates
(`starsrec.stars.train` samples them; the log-Q correction rides in the logits). Where the
next event opens a new session and `next_basket_loss` is on, the loss is the log-softmax
averaged over the distinct items of the basket it opens (the positions up to the next
session gap, inside the window; a basket cut by the window's end counts the lines it has).
Those requests are the ones the long-term memory serves alone, as next-basket requests are,
and they are few among a basket log's positions: one per basket, each trained before on its
first line only. It is off by default: on validation it did not help (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from starsrec.stars.batch import EventBatch, slot_of
from starsrec.stars.model import STARS
from starsrec.stars.repeats import CarriedRepeats, history_repeats


class LossModule(nn.Module):
    """The training loss as a module's forward, the shape DistributedDataParallel wraps
    (it hooks `forward` only, and the loss calls several methods of STARS)."""

    def __init__(self, model: STARS, next_basket_loss: bool = False) -> None:
        super().__init__()
        self.model = model
        self.next_basket_loss = next_basket_loss

    def forward(self, *args: Any) -> torch.Tensor:
        """`training_loss(model, *args, next_basket_loss)`."""
        return training_loss(self.model, *args, next_basket_loss=self.next_basket_loss)


def training_loss(
    model: STARS,
    batch: EventBatch,
    carried: CarriedRepeats,  # what each window's user had before the window
    targets: torch.Tensor,  # (B, T) long: item index of the event after each input
    mask: torch.Tensor,  # (B, T) bool: positions that have a target to predict
    weights: torch.Tensor,  # (B, T) float: engagement weight of each target
    candidate_slots: torch.Tensor,  # (C,) sorted unique item slots
    log_q: torch.Tensor,  # (C,) float
    *,
    next_basket_loss: bool = False,
) -> torch.Tensor:
    """The step's loss: the engagement-weighted mean over the masked positions of the
    sampled softmax's negative log-likelihood (see the module doc)."""
    query = model.user_side(batch)[0][mask]  # (P, D)
    days, events = batch.request_days[mask], batch.request_events[mask]
    # Rows in request-time order and candidates in first-day order, where `score_inner`
    # computes least; labels and repeat entries follow them through the inverse orders.
    rows = torch.argsort(days, stable=True)  # (P,)
    order = torch.argsort(model.first_day[candidate_slots], stable=True)  # (C,)
    row_at, column_at = torch.argsort(rows), torch.argsort(order)
    owned = model.item_tokens.owned(candidate_slots)  # drawn as `score` draws it
    # The log-Q correction rides in the inner product. float32 from here, also under
    # autocast (its matmuls give bf16): the loss and the sparse repeat bonus added into it.
    logits = model.score_inner(
        query[rows], candidate_slots[order], events[rows], days[rows], -log_q[order], owned[order]
    ).float()  # (P, C) in those orders
    repeats = history_repeats(
        batch, candidate_slots, mask, carried, model.config.repeat_basket_decay
    )
    bonus = model.own_item_score(
        None,  # the own-item re-scoring is fitted after training: identity here
        repeats.features,
        candidate_slots[repeats.columns],
        model.user_repeat_weights(query)[repeats.rows],
    )
    # In place: a copy of the (P, C) logits for a few sparse entries is most of their cost.
    entries = (row_at[repeats.rows], column_at[repeats.columns])
    logits.index_put_(entries, bonus.to(logits.dtype), accumulate=True)
    label = column_at[torch.searchsorted(candidate_slots, slot_of(targets[mask]))]  # (P,)
    per_event = F.cross_entropy(logits, label[rows], reduction="none")
    if next_basket_loss:
        basket = next_baskets(batch.new_session, mask)
        per_event = basket_loss(logits, per_event, row_at[basket[0]], label[basket[1]])
    weight = weights[mask][rows]
    return (per_event * weight).sum() / weight.sum()


def next_baskets(new_session: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(E,) pairs (opener, member) of masked positions (indices in `mask` order): each
    position whose request opens a new session (`new_session`, (B, T)) with every masked
    position up to the next one that does (itself included), whose targets are the lines
    of the basket it opens."""
    length = mask.shape[1]
    session = new_session.long().cumsum(1)  # (B, T) the session each request falls in
    window = mask.nonzero(as_tuple=True)[0]
    group = (window * (length + 1) + session[mask]).long()  # (P,)
    opens = new_session[mask]  # (P,)
    opener = torch.full((len(mask) * (length + 1),), -1, device=mask.device)
    opener[group[opens]] = opens.nonzero(as_tuple=True)[0]
    first = opener[group]  # (P,) the opener of each position's session, -1 for none
    member = (first >= 0).nonzero(as_tuple=True)[0]
    return first[member], member


def basket_loss(
    logits: torch.Tensor, per_event: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """`per_event` with each opener's loss replaced by the mean over the distinct items of
    its basket of -log softmax: the (E,) pairs `rows` (logit rows of openers) and
    `columns` (candidate columns of their basket's items)."""
    pairs = torch.unique(rows * logits.shape[1] + columns)  # an item twice counts once
    rows, columns = pairs // logits.shape[1], pairs % logits.shape[1]
    items = torch.zeros_like(per_event).index_add_(
        0, rows, torch.ones_like(rows, dtype=per_event.dtype)
    )
    picked = torch.zeros_like(per_event).index_add_(0, rows, logits[rows, columns])
    openers = items > 0
    basket = torch.logsumexp(logits, dim=1) - picked / items.clamp(min=1)
    return torch.where(openers, basket, per_event)
