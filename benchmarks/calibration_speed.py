"""How long STARS's calibration takes on one cell, and what its cached score parts save.

    python benchmarks/calibration_speed.py --dataset instacart --protocol in-session
    python benchmarks/calibration_speed.py --dataset movielens-100k --protocol leave-one-out
    python benchmarks/calibration_speed.py --artifact artifacts/ic --dataset instacart ...

STARS is trained as the quality run trains it (seed 0; or loaded from `--artifact`). On the
validation queries calibration uses (the first `validation_queries`), with every calibrated
term asked for, this times `--passes` validation passes the plain way (`validation_metric`:
the model scores every query again) and the cached way (`cached_scorer`: the parts computed
on the first pass and kept, then only combined with the calibrated values), checks that
both give the same metric, then times the whole calibration after training
(`StarsRecommender.calibrate`, from no change: the own-item, live and co-occurrence values
reset) and counts its validation passes: times the plain pass, what it would have cost
without the cache. Validation only. Writes
benchmarks/results/calibration_speed.json (by cell and seed) and prints a table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from starsrec.evaluation.evaluate import validation_metric
from starsrec.experiments.cells import save_by_cell_and_seed, stars_on_cell
from starsrec.recommender import TrainingData
from starsrec.stars import recommender
from starsrec.stars.calibration import calibrated
from starsrec.stars.recommender import StarsRecommender
from starsrec.stars.scoring import cached_scorer

RESULTS = Path(__file__).parent / "results"
PASSES = 3
logger = logging.getLogger("calibration-speed")


def timed(passes: int, validate) -> tuple[list[float], float]:
    """(seconds of each of `passes` calls of `validate`, its last value)."""
    seconds, value = [], float("nan")
    for _ in range(passes):
        started = time.perf_counter()
        value = validate()
        seconds.append(time.perf_counter() - started)
    return seconds, value


def measure(model: StarsRecommender, data: TrainingData, passes: int) -> dict:
    """Per-pass seconds plain and cached, then the whole calibration's seconds."""
    assert data.validation is not None and data.validation_targets is not None
    keep = np.arange(min(model.config.validation_queries, len(data.validation)))
    queries, targets = data.validation[keep], data.validation_targets.take(keep)
    exclude = data.exclude_seen
    stars = model._fitted_model()
    plain, plain_metric = timed(passes, lambda: validation_metric(model, queries, targets, exclude))
    score = cached_scorer(
        stars,
        model._fitted_catalogue().size,
        lambda lo, hi: model.score_parts(queries[lo:hi], live=True, cooccurrence=True),
    )
    cached, cached_metric = timed(
        passes, lambda: validation_metric(model, queries, targets, exclude, score=score)
    )
    for name, value in calibrated(stars).items():  # no change, as after training
        value.fill_(1.0 if name in ("own_item_taste", "cooccurrence_scale") else 0.0)
    parts, calls = [], []  # what calibration computed, and how many passes it ran
    original_parts, original_metric = model.score_parts, recommender.validation_metric

    def counting_parts(*args, **kwargs):
        parts.append(1)
        return original_parts(*args, **kwargs)

    def counting_passes(*args, **kwargs):
        calls.append(1)
        return original_metric(*args, **kwargs)

    model.score_parts = counting_parts  # type: ignore[method-assign]
    recommender.validation_metric = counting_passes  # what calibrate's passes call
    started = time.perf_counter()
    try:
        model.calibrate(queries, targets, exclude)
    finally:
        seconds = time.perf_counter() - started
        del model.score_parts
        recommender.validation_metric = original_metric
    return {
        "queries": len(queries),
        "items": model._fitted_catalogue().size,
        "plain_pass_seconds": plain,
        "cached_pass_seconds": cached,
        "plain_metric": plain_metric,
        "cached_metric": cached_metric,
        "calibration_seconds": seconds,
        "calibration_passes": len(calls),
        "calibration_parts_computed": len(parts),
        "calibrated": {name: float(value) for name, value in calibrated(stars).items()},
    }


def table(records: list[dict]) -> str:
    """Markdown, one row per cell and seed."""
    lines = [
        "| cell | seed | queries x items | plain pass (s) | cached: first, later pass (s) "
        "| ratio | calibration: passes, s | plain passes x plain pass (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        plain = float(np.median(r["plain_pass_seconds"]))
        first, *later = r["cached_pass_seconds"]
        again = float(np.median(later)) if later else float("nan")
        lines.append(
            f"| {r['cell']} | {r['seed']} | {r['queries']} x {r['items']} | {plain:.2f} "
            f"| {first:.2f}, {again:.2f} | {plain / again:.1f}x "
            f"| {r['calibration_passes']}, {r['calibration_seconds']:.0f} "
            f"| {r['calibration_passes'] * plain:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    description = __doc__.split("\n")[0]
    args, model, data, _ = stars_on_cell(description, RESULTS / "calibration_speed.json")
    record = {"cell": f"{args.dataset}/{args.protocol}", "seed": model.config.seed}
    record |= measure(model, data, PASSES)
    if not np.isclose(record["plain_metric"], record["cached_metric"], atol=1e-6):
        raise SystemExit(f"plain and cached metrics differ: {record}")
    print(table(save_by_cell_and_seed(args.out, record)))


if __name__ == "__main__":
    main()
