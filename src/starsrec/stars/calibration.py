"""Calibration after training: a few scalars of a trained model fitted on validation.

Two steps, both only re-scoring (the trained weights stay as they are):

- **New items** (`new_item_offset`): an item without training events is scored from its text
  and tags plus the learned new-item bias. Training learns that bias from items *before
  their first event*, most of which were not on sale yet, so it comes out low and the model
  gives new products far less probability than their share of validation purchases
  (docs/benchmarks.md has the measurements). The offset that maximises the validation log-
  likelihood solves one equation: the model's average probability on new items equals the
  share of validation targets that are new items (the log-likelihood is concave in the
  offset, and this is where its derivative is zero). Adding it to the bias keeps the score
  one inner product, so the index and the service serve the calibrated bias unchanged.
- **Own items, live signals, co-occurrence** (`coordinate_search` over `score_weight_grids`,
  used by `StarsRecommender.calibrate_scores`): the taste weight and offset of a shopper's
  own items (one grid: they interact), the weight of their recent share, the weights of
  every item's recent sales over all shoppers (one per half-life, one more for new items)
  and the weight and scale of co-occurrence with the shopper's latest purchases (one grid),
  chosen on validation NDCG@10 in turns until none moves.

`CalibrationConfig` (`StarsConfig.calibration`) switches each step and holds the grid.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from scipy.special import expit, logsumexp

from starsrec.data.live import LIVE_HALF_LIVES_DAYS
from starsrec.stars.model import STARS

logger = logging.getLogger(__name__)

Setting = TypeVar("Setting")

# Fewer new-item validation targets than this leave the learned bias as it is: the share
# they estimate is too noisy to fit.
MIN_NEW_ITEM_TARGETS = 20
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class CalibrationConfig:
    """The steps fitted on validation after training (see the module doc).

    new_items: fit the new-item bias (only with the new-item bias, and enough new-item
    targets). own_items: fit the own-item re-scoring (only where repeats are allowed) over
    own_item_tastes, own_item_offsets and own_item_recents: the taste term's weight for a
    shopper's own items, an offset in score units, and the weight of their recent share
    of the shopper's baskets; the first of each (1, 0, 0) is no change. live: fit the
    weights of the live signals (`STARS.live_score`), each half-life's from live_weights,
    the new items' from live_new_weights (0 first: no change). cooccurrence: fit the weight
    and scale of co-occurrence with the latest purchases (`STARS.cooccurrence_score`) over
    cooccurrence_weights x cooccurrence_scales (weight 0 first: no change).
    """

    new_items: bool = True
    own_items: bool = True
    own_item_tastes: tuple[float, ...] = (1.0, 0.5, 0.25, 0.0)
    own_item_offsets: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    own_item_recents: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    live: bool = True
    live_weights: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
    live_new_weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    cooccurrence: bool = True
    cooccurrence_weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    cooccurrence_scales: tuple[float, ...] = (0.01, 0.1, 1.0)

    def __post_init__(self) -> None:
        # config.json gives lists back; tuples keep the config hashable and comparable
        grids = ("own_item_tastes", "own_item_offsets", "own_item_recents", "live_weights")
        more = ("live_new_weights", "cooccurrence_weights", "cooccurrence_scales")
        for name in (*grids, *more):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))


def new_item_log_odds(scores: np.ndarray, new_items: np.ndarray) -> np.ndarray:
    """(Q,) per query, the log of (softmax mass on new items / mass on the others).

    scores (Q, N): scores, -inf where an item may not be returned; new_items (N,) bool:
    items scored as new (no training events). Adding d to every new item's score adds d
    to these log-odds, so `new_item_offset` can search offsets without rescoring.
    """
    new_items = np.asarray(new_items, dtype=bool)
    scores = scores.astype(np.float64)
    with np.errstate(invalid="ignore"):  # -inf - -inf for a query with nothing allowed
        return logsumexp(scores[:, new_items], axis=1) - logsumexp(scores[:, ~new_items], axis=1)


def new_item_offset(log_odds: np.ndarray, target_is_new: np.ndarray) -> float | None:
    """The offset to add to every new item's score so that the model's mean softmax
    probability on new items equals the share of validation targets that are new items:
    the maximum-likelihood offset (see module doc). None when fewer than
    MIN_NEW_ITEM_TARGETS targets are new items (too few to estimate the share).

    log_odds (Q,): `new_item_log_odds` of the validation queries; target_is_new (Q,) bool.
    """
    target_is_new = np.asarray(target_is_new, dtype=bool)
    usable = np.isfinite(log_odds)
    gap = log_odds[usable].astype(np.float64)
    hits = int(target_is_new[usable].sum())
    if hits < MIN_NEW_ITEM_TARGETS:
        return None
    share = hits / len(gap)

    def mass(offset: float) -> float:
        return float(np.mean(expit(gap + offset)))

    # The mass rises monotonically from 0 to 1 with the offset: bisect within a bracket
    # wide enough for every query's gap.
    low, high = -float(gap.max()) - 50.0, -float(gap.min()) + 50.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if mass(middle) < share else (low, middle)
    offset = (low + high) / 2
    logger.info(
        "new items: %d of %d validation targets (%.1f%%); the model gave them %.2f%% of its "
        "probability, %.2f%% after an offset of %+.2f",
        hits,
        len(gap),
        100 * share,
        100 * mass(0.0),
        100 * mass(offset),
        offset,
    )
    return offset


def coordinate_search(
    what: str,
    validate: Callable[[], float],
    blocks: Sequence[Sequence[tuple[float, ...]]],
    apply: Callable[[tuple[float, ...]], None],
    max_rounds: int = 4,
) -> tuple[float, ...]:
    """Choose one entry per block by `validate()` (higher is better), one block at a time
    with the others held, round after round until a round moves none (at most
    `max_rounds`); `apply` gets the chosen entries joined into one setting. Values that
    interact strongly belong in one block (its entries are their grid); across blocks
    this is a local search, about rounds x sum(len(block)) validations instead of the
    product of their lengths. Starts from each block's first entry (meant to be "no
    change") and moves only for a strictly better metric."""
    chosen = [block[0] for block in blocks]

    def joined(entries: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
        return tuple(value for entry in entries for value in entry)

    apply(joined(chosen))
    start = best_metric = validate()
    for _ in range(max_rounds):
        moved = False
        for k, block in enumerate(blocks):
            for entry in block:
                if entry == chosen[k]:
                    continue
                apply(joined([*chosen[:k], entry, *chosen[k + 1 :]]))
                metric = validate()
                if metric > best_metric:
                    chosen[k], best_metric, moved = entry, metric, True
        if not moved:
            break
    best = joined(chosen)
    apply(best)
    logger.info("%s: %s (validation ndcg@10 %.4f -> %.4f)", what, best, start, best_metric)
    return best


def calibrated(model: STARS) -> dict[str, torch.Tensor]:
    """The values of `model` fitted on validation after training, by name, each a 0-dim view
    to fill in place: the own-item re-scoring, the live-signal weights (one per half-life,
    then the new items' one), the co-occurrence weight and scale."""
    live = [f"live_{days:g}d" for days in LIVE_HALF_LIVES_DAYS] + ["live_new"]
    return (
        {
            "own_item_taste": model.own_item_taste,
            "own_item_offset": model.own_item_offset,
            "own_item_recent": model.own_item_recent,
        }
        | dict(zip(live, model.live_weights.unbind(), strict=True))
        | {
            "cooccurrence_weight": model.cooccurrence_weight,
            "cooccurrence_scale": model.cooccurrence_scale,
        }
    )


def score_weight_grids(
    config: CalibrationConfig, own_items: bool, live: bool, cooccurrence: bool
) -> tuple[list[str], list[list[tuple[float, ...]]]]:
    """The `calibrated` names that `coordinate_search` fits, in setting order, and its blocks
    over them: own-item taste and offset in one (they interact), own-item recent share,
    each live weight, the co-occurrence weight and scale in one (with weight 0 the scale
    changes nothing: tried once); of the steps switched on here."""
    names: list[str] = []
    blocks: list[list[tuple[float, ...]]] = []
    if own_items:
        names += ["own_item_taste", "own_item_offset", "own_item_recent"]
        blocks += [
            list(itertools.product(config.own_item_tastes, config.own_item_offsets)),
            [(weight,) for weight in config.own_item_recents],
        ]
    grids: dict[str, tuple[float, ...]] = {}
    if live:
        grids |= {f"live_{days:g}d": config.live_weights for days in LIVE_HALF_LIVES_DAYS}
        grids["live_new"] = config.live_new_weights
    names += list(grids)
    blocks += [[(weight,) for weight in grid] for grid in grids.values()]
    if cooccurrence:
        names += ["cooccurrence_weight", "cooccurrence_scale"]
        weights, scales = config.cooccurrence_weights, config.cooccurrence_scales
        tried = [(w, s) for w in weights[1:] for s in scales]
        blocks.append([(weights[0], scales[0]), *tried])
    return names, blocks
