"""Live signals (issue 18, lever 1): what every item's recent sales add to STARS, on validation.

    python benchmarks/live_signals.py                       # Online Retail next-basket, seed 0
    python benchmarks/live_signals.py --dataset instacart --protocol last-basket
    python benchmarks/live_signals.py --artifact artifacts/shop   # a model trained already

STARS is trained once (or loaded from `--artifact`, trained on the same cell by `starsrec
train --protocol ...`), then its calibration (`StarsRecommender.calibrate_scores`, on
`validation_queries` validation queries as in `fit`) runs twice on the same trained weights:
the own-item re-scoring alone, then with the live-signal weights. Both are measured by
NDCG@10 over every validation query. Then the new-item live weight is moved alone over a
grid to show what it trades: NDCG@10 against the Recall@20 of targets without training
events (cold) and of the others (warm), each the mean over the queries with such a target.
No test number is computed, so nothing here is chosen on test. Writes
benchmarks/results/live_signals.json (merged by cell and seed) and prints a table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from starsrec.evaluation.evaluate import EvaluationConfig, evaluate, validation_metric
from starsrec.experiments.cells import save_by_cell_and_seed, stars_on_cell
from starsrec.recommender import TrainingData
from starsrec.stars.calibration import calibrated
from starsrec.stars.recommender import StarsRecommender

RESULTS = Path(__file__).parent / "results"
NEW_ITEM_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 8.0)
logger = logging.getLogger("live-signals-benchmark")


def calibrate(model: StarsRecommender, data: TrainingData, live: bool) -> tuple[dict, float, float]:
    """(the fitted values, validation NDCG@10 over every query, seconds) after the
    calibration from no change, with or without the live weights."""
    assert data.validation is not None and data.validation_targets is not None
    for name, value in calibrated(model._fitted_model()).items():
        value.fill_(1.0 if name == "own_item_taste" else 0.0)
    keep = np.arange(min(model.config.validation_queries, len(data.validation)))
    queries, targets = data.validation[keep], data.validation_targets.take(keep)
    own = not data.exclude_seen and model.config.model.use_repeat_score
    started = time.perf_counter()
    if own or live:
        model.calibrate_scores(
            lambda _: validation_metric(model, queries, targets, data.exclude_seen),
            own,
            live,
            cooccurrence=False,
        )
    seconds = time.perf_counter() - started
    values = {name: float(v) for name, v in calibrated(model._fitted_model()).items()}
    metric = validation_metric(model, data.validation, data.validation_targets, data.exclude_seen)
    return values, metric, seconds


def new_item_sweep(model: StarsRecommender, data: TrainingData) -> list[dict]:
    """NDCG@10 and cold / warm Recall@20 on validation (the evaluator's slices) as the
    new-item weight moves alone."""
    assert data.validation is not None and data.validation_targets is not None
    weights = model._fitted_model().live_weights
    chosen = float(weights[-1])
    config = EvaluationConfig(data.exclude_seen, progress=False)
    rows = []
    for weight in sorted({chosen, *NEW_ITEM_WEIGHTS}):
        weights[-1] = weight
        result = evaluate(model, data.validation, data.validation_targets, data.train, config)
        slices = result["slices"]
        rows.append(
            {
                "live_new": weight,
                "chosen": weight == chosen,
                "ndcg@10": result["metrics"]["ndcg@10"],
                "cold_recall@20": slices["cold"]["recall@20"],
                "cold_queries": slices["cold"]["queries"],
                "warm_recall@20": slices["warm"]["recall@20"],
            }
        )
    weights[-1] = chosen
    return rows


def table(records: list[dict]) -> str:
    """Markdown: the two calibrations per cell and seed, then each new-item sweep."""
    lines = [
        "| cell | seed | own items only | own items + live (w_1d, w_7d, w_new) | calibration s |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        live = r["live"]["values"]
        lines.append(
            f"| {r['cell']} | {r['seed']} | {r['own_only']['ndcg@10']:.4f} | "
            f"{r['live']['ndcg@10']:.4f} ({live['live_1d']:g}, {live['live_7d']:g}, "
            f"{live['live_new']:g}) | {r['own_only']['seconds']:.0f} / {r['live']['seconds']:.0f} |"
        )
    for r in records:
        lines += [
            "",
            f"{r['cell']}, seed {r['seed']}: the new-item weight alone",
            "",
            "| w_new | NDCG@10 | cold Recall@20 | warm Recall@20 |",
            "|---|---|---|---|",
        ]
        for row in r["new_item_sweep"]:
            mark = " (chosen)" if row["chosen"] else ""
            lines.append(
                f"| {row['live_new']:g}{mark} | {row['ndcg@10']:.4f} | "
                f"{row['cold_recall@20']:.3f} ({row['cold_queries']} queries) | "
                f"{row['warm_recall@20']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    description = __doc__.split("\n")[0]
    args, model, data, _ = stars_on_cell(description, RESULTS / "live_signals.json")
    cell = f"{args.dataset}/{args.protocol}"
    record: dict = {"cell": cell, "seed": model.config.seed}
    for key, live in (("own_only", False), ("live", True)):
        values, metric, seconds = calibrate(model, data, live)
        record[key] = {"values": values, "ndcg@10": metric, "seconds": seconds}
        logger.info("%s: validation ndcg@10 %.4f %s", key, metric, values)
    record["new_item_sweep"] = new_item_sweep(model, data)
    stored = save_by_cell_and_seed(args.out, record)
    print(table(stored))


if __name__ == "__main__":
    main()
