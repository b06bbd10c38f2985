"""Full-ranking evaluation (DESIGN section 3): every query ranks the whole catalogue.

One harness for every protocol. A query's right answer is a set of items: a whole basket
under the next-basket protocols, one item under leave-one-out and temporal
(`BasketTargets.single`). Scores are computed in chunks of at most
`EvaluationConfig.max_scores` floats, so memory stays bounded for large catalogues, and the
targets are scored by `starsrec.evaluation.baskets` (Recall, NDCG, Hit and MRR at 5, 10 and
20; ties by their expected value, never by index). The per-query values come back too, so
paired intervals between models can be computed (`starsrec.evaluation.intervals`); the
top 10 lists give coverage@10. `validation_metric` is the same ranking reduced to the one
number models choose by.

Slices, by what makes a query hard:

- repeat / explore: the targets the user had before / never had (recall only: a query
  counts in a slice when it has at least one such target);
- cold / warm: targets without / with training events; long_tail: targets outside the top
  20% most popular training items (recall only, as above);
- short_history / long_history: history length <= / > the median over the queries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from starsrec.data.interactions import EventLog, Queries
from starsrec.evaluation.baskets import CUTOFFS, basket_metrics, mean_metrics
from starsrec.evaluation.metrics import coverage
from starsrec.recommender import (
    Filters,
    Recommender,
    Slots,
    apply_filters,
    new_item_slots,
    top_k,
)

logger = logging.getLogger(__name__)

HEAD_SHARE = 0.2
COVERAGE_K = 10
Targets = tuple[np.ndarray, np.ndarray]  # CSR: (Q + 1,) offsets, (T,) item indices
TARGET_SLICES = ("repeat", "explore", "cold", "warm", "long_tail")  # `_target_masks`


@dataclass(frozen=True)
class EvaluationConfig:
    """How to evaluate.

    exclude_seen: whether items already in the user's history are removed from the
    ranking (False: repeat purchases may be recommended, the retail default).
    max_scores: upper bound on the floats held by one chunk of scores.
    new_item_slots: places kept after the first `new_item_slots_after` for the best new
    items (`starsrec.recommender.new_item_slots`, as the service keeps them); 0: none, the
    model's own ranking. new_to: "catalogue" (items without training events) or "shopper"
    (items not in the query's history: explore places).
    """

    exclude_seen: bool = False
    max_scores: int = 1 << 24
    progress: bool = True
    new_item_slots: int = 0
    new_item_slots_after: int = 10
    new_to: str = "catalogue"


def evaluate(
    model: Recommender,
    queries: Queries,
    targets: Targets,
    train: EventLog,
    config: EvaluationConfig = EvaluationConfig(),
) -> dict:
    """Metrics, slices and per-query values of `model` on `queries` whose right answers
    are `targets`, each query's distinct target items in CSR form (a `BasketTargets`).

    Returns {"queries", "exclude_seen", "metrics", "slices", "per_query"}, where
    per_query maps each metric name to its (Q,) float64 array (not JSON: for storage)."""
    offsets, _ = targets
    if len(offsets) != len(queries) + 1:
        raise ValueError(f"{len(queries)} queries but {len(offsets) - 1} target lists")
    n_items = model._fitted_catalogue().size
    head, in_train = item_kinds(train, n_items)
    masks = _target_masks(queries, targets, head, in_train)
    slots = new_item_slots(
        config.new_item_slots, config.new_item_slots_after, config.new_to, ~in_train
    )
    per_query: dict[str, list[np.ndarray]] = {}
    tops = []
    for lo, hi, scores in _scored(model, queries, config, slots):
        tops.append(top_k(scores, COVERAGE_K)[0])
        part = _part(targets, lo, hi)
        for name, value in basket_metrics(scores, part).items():
            per_query.setdefault(name, []).append(value)
        for slice_name, mask in masks.items():
            chosen, kept = _subset(part, mask[offsets[lo] : offsets[hi]])
            recall = basket_metrics(scores[chosen], kept) if len(chosen) else {}
            for k in CUTOFFS:
                value = np.full(hi - lo, np.nan)  # NaN: the query has no target in the slice
                if len(chosen):
                    value[chosen] = recall[f"recall@{k}"]
                per_query.setdefault(f"{slice_name}:recall@{k}", []).append(value)
    values = {name: np.concatenate(parts) for name, parts in per_query.items()}
    overall = {k: v for k, v in values.items() if ":" not in k}
    listed = np.concatenate(tops) if tops else np.empty((0, COVERAGE_K), dtype=np.int64)
    metrics = mean_metrics(overall) | {"coverage@10": coverage(listed, n_items)}
    result = {
        "queries": len(queries),
        "exclude_seen": config.exclude_seen,
        "metrics": metrics,
        "slices": _slices(values, queries),
        "per_query": overall,
    }
    logger.info(
        "%s: ndcg@10 %.4f recall@10 %.4f over %d queries",
        model.name,
        metrics["ndcg@10"],
        metrics["recall@10"],
        len(queries),
    )
    return result


def validation_metric(
    model: Recommender,
    queries: Queries,
    targets: Targets,
    exclude_seen: bool,
    metric: str = "ndcg@10",
    score: Callable[[int, int], np.ndarray] | None = None,
) -> float:
    """The mean `metric` (e.g. "ndcg@10", "recall@20") of `model` over `queries` with their
    CSR target sets: the one number early stopping, tree counts and calibration choose by,
    ranked exactly as the evaluator ranks (same filters, same tie rule). `score(lo, hi)`
    stands in for `model.score(queries[lo:hi])` where given (calibration's cached parts)."""
    name, _, k = metric.partition("@")
    if name not in ("recall", "ndcg", "hit", "mrr") or not k.isdigit():
        raise ValueError(f"metric must look like 'ndcg@10', got {metric!r}")
    config = EvaluationConfig(exclude_seen=exclude_seen, progress=False)
    values = [
        basket_metrics(scores, _part(targets, lo, hi), ks=(int(k),))[metric]
        for lo, hi, scores in _scored(model, queries, config, score=score)
    ]
    return float(np.concatenate(values).mean()) if values else float("nan")


def _scored(
    model: Recommender,
    queries: Queries,
    config: EvaluationConfig,
    slots: Slots | None = None,
    score: Callable[[int, int], np.ndarray] | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, hi, (hi - lo, N) float32 filtered scores, `slots` placed) for chunks of
    `queries`, scored by `score(lo, hi)` where given, else `model.score`."""
    catalogue = model._fitted_catalogue()
    chunk = max(1, config.max_scores // max(catalogue.size, 1))
    filters = Filters(exclude_seen=config.exclude_seen, slots=slots)
    starts = range(0, len(queries), chunk)
    for lo in tqdm(starts, desc=f"evaluate {model.name}", disable=not config.progress):
        hi = min(lo + chunk, len(queries))
        scored = model.score(queries[lo:hi]) if score is None else score(lo, hi)
        scores = scored.astype(np.float32, copy=True)
        apply_filters(scores, queries[lo:hi], catalogue, filters)
        yield lo, hi, scores


def _part(targets: Targets, lo: int, hi: int) -> Targets:
    """The CSR targets of queries [lo, hi)."""
    offsets, items = targets
    return offsets[lo : hi + 1] - offsets[lo], items[offsets[lo] : offsets[hi]]


def _subset(targets: Targets, keep: np.ndarray) -> tuple[np.ndarray, Targets]:
    """The queries with at least one kept target, and their kept targets (CSR)."""
    offsets, items = targets
    query = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[keep]
    counts = np.bincount(query, minlength=len(offsets) - 1)
    chosen = np.flatnonzero(counts)
    new_offsets = np.concatenate([[0], np.cumsum(counts[chosen])]).astype(np.int64)
    return chosen, (new_offsets, items[keep])


def _target_masks(
    queries: Queries, targets: Targets, head: np.ndarray, in_train: np.ndarray
) -> dict[str, np.ndarray]:
    """(T,) bool over all targets, per target slice (see the module doc), from the
    `item_kinds` of the training events."""
    offsets, items = targets
    query_of_target = np.repeat(np.arange(len(queries)), np.diff(offsets))
    query, rows = queries.flat_history()
    had = set(zip(query.tolist(), queries.log.item[rows].tolist(), strict=True))
    repeat = np.fromiter(
        ((q, i) in had for q, i in zip(query_of_target.tolist(), items.tolist(), strict=True)),
        dtype=bool,
        count=len(items),
    )
    return {
        "repeat": repeat,
        "explore": ~repeat,
        "cold": ~in_train[items],
        "warm": in_train[items],
        "long_tail": ~head[items],
    }


def _slices(values: dict[str, np.ndarray], queries: Queries) -> dict:
    """Per slice: its query count and mean metrics (see the module doc)."""
    slices: dict = {}
    for name in TARGET_SLICES:
        parts = {k.split(":")[1]: v for k, v in values.items() if k.startswith(f"{name}:")}
        inside = np.isfinite(parts[f"recall@{CUTOFFS[0]}"])
        slices[name] = {"queries": int(inside.sum())}
        slices[name] |= {
            k: float(v[inside].mean()) if inside.any() else float("nan") for k, v in parts.items()
        }
    lengths = queries.lengths
    median = float(np.median(lengths)) if len(lengths) else 0.0
    overall = {k: v for k, v in values.items() if ":" not in k}
    for name, mask in (("short_history", lengths <= median), ("long_history", lengths > median)):
        chosen = {k: v[mask] for k, v in overall.items()}
        slices[name] = {"queries": int(mask.sum()), **mean_metrics(chosen)}
    slices["thresholds"] = {"history_median": median}
    return slices


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
