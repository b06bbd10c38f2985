"""The co-occurrence benchmark (benchmarks/cooccurrence_term.py) on the toy world: the grid
holds the fitted setting and the term switched off, and leaves the model as fitted."""

from __future__ import annotations

import pytest

from starsrec.data.splits import NEXT_BASKET, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.experiments.report import make_model, training_data
from tiny import load_benchmark, settings


def test_the_grid_holds_the_fitted_setting_and_the_term_off() -> None:
    module = load_benchmark("cooccurrence_term")
    dataset = make_toy_world(n_users=60)
    data = training_data(dataset, split_dataset(dataset, NEXT_BASKET), exclude_seen=False)
    model = make_model("stars", 0, 1, settings()).fit(data)
    stars = model.model
    stars.cooccurrence_weight.fill_(2.0)  # a setting of the grid, whatever calibration chose
    stars.cooccurrence_scale.fill_(0.1)
    fitted = module.metric(model, data)
    rows = module.sweep(model, data)
    assert [(r["scale"], r["weight"]) for r in rows] == [
        (s, w) for s in module.SCALES for w in module.WEIGHTS
    ]
    assert float(stars.cooccurrence_weight) == 2.0  # left as it was
    assert float(stars.cooccurrence_scale) == pytest.approx(0.1)
    by = {(r["scale"], r["weight"]): r["ndcg@10"] for r in rows}
    assert by[(0.1, 2.0)] == pytest.approx(fitted)
    off = {by[(s, 0.0)] for s in module.SCALES}
    assert len(off) == 1  # with no weight the scale changes nothing
    record = {"cell": "toy/next-basket", "seed": 0, "queries": 1, "weight": 2.0}
    record |= {"scale": 0.1, "fitted": fitted, "off": off.pop(), "sweep": rows}
    assert module.table([record]).count("| toy/next-basket | 0 |") == 1
