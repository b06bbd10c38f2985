"""Co-occurrence with the latest purchases (issue 18): what the term adds to STARS, on validation.

    python benchmarks/cooccurrence_term.py --protocol basket-completion   # Online Retail, seed 0
    python benchmarks/cooccurrence_term.py --dataset movielens-100k --protocol leave-one-out
    python benchmarks/cooccurrence_term.py --artifact artifacts/shop --protocol next-basket

STARS is trained once as the quality run trains it (or loaded from `--artifact`, trained on
the same cell), so its calibration has fitted every weight, the co-occurrence weight and
scale among them (`STARS.cooccurrence_score`: w log1p(s / scale), chosen on the first
`validation_queries` validation queries). On every validation query this prints NDCG@10
with the fitted term and with the term off (the other fitted values kept), then NDCG@10 over
calibration's grid of scales and weights (`CalibrationConfig`), the rest held. No test
number is computed, so nothing here is chosen on test. Writes
benchmarks/results/cooccurrence_term.json (merged by cell and seed) and prints a table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starsrec.evaluation.evaluate import validation_metric
from starsrec.experiments.cells import save_by_cell_and_seed, stars_on_cell
from starsrec.recommender import TrainingData
from starsrec.stars.calibration import CalibrationConfig
from starsrec.stars.recommender import StarsRecommender

RESULTS = Path(__file__).parent / "results"
SCALES = CalibrationConfig().cooccurrence_scales
WEIGHTS = CalibrationConfig().cooccurrence_weights
logger = logging.getLogger("cooccurrence-benchmark")


def metric(model: StarsRecommender, data: TrainingData) -> float:
    """Validation NDCG@10 over every validation query."""
    assert data.validation is not None and data.validation_targets is not None
    return validation_metric(model, data.validation, data.validation_targets, data.exclude_seen)


def sweep(model: StarsRecommender, data: TrainingData) -> list[dict]:
    """NDCG@10 for every (scale, weight) of the grid, the other fitted values held."""
    stars = model._fitted_model()
    weight, fitted_scale = float(stars.cooccurrence_weight), float(stars.cooccurrence_scale)
    rows = []
    try:
        for scale in SCALES:
            stars.cooccurrence_scale.fill_(scale)
            for w in WEIGHTS:
                stars.cooccurrence_weight.fill_(w)
                rows.append({"scale": scale, "weight": w, "ndcg@10": metric(model, data)})
                logger.info("%s", rows[-1])
    finally:
        stars.cooccurrence_scale.fill_(fitted_scale)
        stars.cooccurrence_weight.fill_(weight)
    return rows


def table(records: list[dict]) -> str:
    """Markdown: fitted against off per cell and seed, then each grid."""
    lines = [
        "| cell | seed | validation queries | fitted w (scale) | NDCG@10 fitted | term off |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['cell']} | {r['seed']} | {r['queries']} | {r['weight']:g} ({r['scale']:g}) "
            f"| {r['fitted']:.4f} | {r['off']:.4f} |"
        )
    for r in records:
        lines += ["", f"{r['cell']}, seed {r['seed']}: NDCG@10 by scale (rows) and weight", ""]
        lines += ["| scale | " + " | ".join(f"w={w:g}" for w in WEIGHTS) + " |"]
        lines += ["|---" * (len(WEIGHTS) + 1) + "|"]
        for scale in SCALES:
            values = [f"{c['ndcg@10']:.4f}" for c in r["sweep"] if c["scale"] == scale]
            lines.append(f"| {scale:g} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    description = __doc__.split("\n")[0]
    args, model, data, _ = stars_on_cell(description, RESULTS / "cooccurrence_term.json")
    assert data.validation is not None
    stars = model._fitted_model()
    weight = float(stars.cooccurrence_weight)
    record: dict = {
        "cell": f"{args.dataset}/{args.protocol}",
        "seed": model.config.seed,
        "queries": len(data.validation),
        "weight": weight,
        "scale": float(stars.cooccurrence_scale),
        "fitted": metric(model, data),
    }
    stars.cooccurrence_weight.fill_(0.0)
    record["off"] = metric(model, data)
    stars.cooccurrence_weight.fill_(weight)
    record["sweep"] = sweep(model, data)
    stored = save_by_cell_and_seed(args.out, record)
    print(table(stored))


if __name__ == "__main__":
    main()
