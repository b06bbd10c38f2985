"""Full-ranking evaluation (DESIGN section 3): every query ranks the whole catalogue.

Scores are computed in chunks of queries sized so that one chunk holds at most
`EvaluationConfig.max_scores` floats, so memory stays bounded for large catalogues.
Each query's target rank gives Hit@k, NDCG@k and MRR; the top 10 lists give coverage@10.
Slices split the queries by what makes recommendation hard:

- cold / warm: the target item never / at least once in the training events;
- long_tail / head: the target outside / inside the top 20% most popular training items
  (popularity = training target events; cold items are long tail);
- repeat / new: the target already in / not in the user's history;
- short_history / long_history: history length <= / > the median over the queries.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from starsrec.data.interactions import EventLog, Queries
from starsrec.evaluation.metrics import coverage, metrics_from_ranks
from starsrec.recommender import Filters, Recommender, apply_filters, ranks_of, top_k

logger = logging.getLogger(__name__)

HEAD_SHARE = 0.2
COVERAGE_K = 10


@dataclass(frozen=True)
class EvaluationConfig:
    """How to evaluate.

    exclude_seen: whether items already in the user's history are removed from the
    ranking (False: repeat purchases may be recommended, the retail default).
    max_scores: upper bound on the floats held by one chunk of scores.
    """

    exclude_seen: bool = False
    max_scores: int = 1 << 24
    progress: bool = True


def evaluate(
    model: Recommender,
    queries: Queries,
    targets: np.ndarray,
    train: EventLog,
    config: EvaluationConfig = EvaluationConfig(),
) -> dict:
    """Metrics and slices of `model` on `queries` whose right answers are `targets`."""
    if len(queries) != len(targets):
        raise ValueError(f"{len(queries)} queries but {len(targets)} targets")
    catalogue = model._fitted_catalogue()
    n_items = catalogue.size
    chunk = max(1, config.max_scores // max(n_items, 1))
    ranks = np.empty(len(queries), dtype=np.int64)
    tops = np.empty((len(queries), min(COVERAGE_K, n_items)), dtype=np.int64)
    filters = Filters(exclude_seen=config.exclude_seen)
    starts = range(0, len(queries), chunk)
    for lo in tqdm(starts, desc=f"evaluate {model.name}", disable=not config.progress):
        part = slice(lo, lo + chunk)
        scores = model.score(queries[part]).astype(np.float32, copy=True)
        apply_filters(scores, queries[part], catalogue, filters)
        ranks[part] = ranks_of(scores, targets[part])
        tops[part] = top_k(scores, tops.shape[1])[0]
    result: dict[str, Any] = {
        "queries": len(queries),
        "exclude_seen": config.exclude_seen,
        "metrics": {**metrics_from_ranks(ranks), "coverage@10": coverage(tops, n_items)},
        "slices": _slices(ranks, queries, targets, train, n_items),
    }
    logger.info(
        "%s: ndcg@10 %.4f hit@10 %.4f over %d queries",
        model.name,
        result["metrics"]["ndcg@10"],
        result["metrics"]["hit@10"],
        len(queries),
    )
    return result


def slice_masks(
    queries: Queries, targets: np.ndarray, train: EventLog, n_items: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Boolean masks over queries for each slice, and the thresholds that defined them."""
    is_head, in_train = item_kinds(train, n_items)
    n_head = int(is_head.sum())

    query, rows = queries.flat_history()
    repeat = np.zeros(len(queries), dtype=bool)
    hits = queries.log.item[rows] == targets[query]
    repeat[query[hits]] = True

    lengths = queries.lengths
    median = float(np.median(lengths)) if len(lengths) else 0.0
    cold = ~in_train[targets]
    masks = {
        "cold": cold,
        "warm": ~cold,
        "long_tail": ~is_head[targets],
        "head": is_head[targets],
        "repeat": repeat,
        "new": ~repeat,
        "short_history": lengths <= median,
        "long_history": lengths > median,
    }
    return masks, {"history_median": median, "head_items": float(n_head)}


def item_kinds(train: EventLog, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool each: the head (the top `HEAD_SHARE` of items with training target events,
    by count) and the items with any training event (the rest are cold)."""
    popularity = np.bincount(train.item[train.is_target], minlength=n_items)
    seen_items = np.flatnonzero(popularity > 0)
    n_head = int(np.ceil(HEAD_SHARE * len(seen_items)))
    # Stable order by descending count, ties by index, so the head set is deterministic.
    head_items = seen_items[np.argsort(-popularity[seen_items], kind="stable")[:n_head]]
    is_head = np.zeros(n_items, dtype=bool)
    is_head[head_items] = True
    return is_head, np.bincount(train.item, minlength=n_items) > 0


def _slices(
    ranks: np.ndarray, queries: Queries, targets: np.ndarray, train: EventLog, n_items: int
) -> dict:
    masks, thresholds = slice_masks(queries, targets, train, n_items)
    slices: dict = {
        name: {"queries": int(mask.sum()), **metrics_from_ranks(ranks[mask])}
        for name, mask in masks.items()
    }
    slices["thresholds"] = thresholds
    return slices


def config_dict(config: EvaluationConfig) -> dict:
    """The evaluation options worth reporting beside the numbers."""
    return {k: v for k, v in asdict(config).items() if k != "progress"}
