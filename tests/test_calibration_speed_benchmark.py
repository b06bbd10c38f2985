"""The calibration speed benchmark (benchmarks/calibration_speed.py) on the toy world: the
cached passes give the plain passes' metric, the whole calibration computes each chunk's
parts once (not once per setting it tries), and the table has the cell's row."""

from __future__ import annotations

import pytest

from starsrec.data.splits import NEXT_BASKET, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.evaluation.evaluate import validation_metric
from starsrec.experiments.report import make_model, training_data
from tiny import load_benchmark, settings


def test_cached_passes_match_and_calibration_computes_the_parts_once() -> None:
    module = load_benchmark("calibration_speed")
    dataset = make_toy_world(n_users=60)
    data = training_data(dataset, split_dataset(dataset, NEXT_BASKET), exclude_seen=False)
    model = make_model("stars", 0, 1, settings()).fit(data)
    record = module.measure(model, data, passes=2)
    assert record["cached_metric"] == pytest.approx(record["plain_metric"], abs=1e-6)
    assert len(record["plain_pass_seconds"]) == len(record["cached_pass_seconds"]) == 2
    # One chunk of validation queries: the new-item step scores it once (when it runs),
    # the score steps compute its parts once for all the settings they try.
    assert record["calibration_parts_computed"] in (1, 2)
    assert record["calibration_passes"] > 10  # every setting it tried, on those parts
    assert "cooccurrence_weight" in record["calibrated"]
    assert "score_parts" not in vars(model)  # the counting wrappers are gone
    assert module.recommender.validation_metric is validation_metric
    row = module.table([{"cell": "toy/next-basket", "seed": 0} | record])
    assert row.count("| toy/next-basket | 0 |") == 1
