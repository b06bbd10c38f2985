"""The live-signals benchmark (benchmarks/live_signals.py) on the toy world: both
calibrations run on the same trained weights, and the new-item sweep measures cold and warm
recall by the evaluator's slices."""

from __future__ import annotations

from starsrec.data.splits import NEXT_BASKET, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.experiments.report import make_model, training_data
from tiny import load_benchmark, settings


def test_both_calibrations_and_the_sweep_run_on_one_trained_model() -> None:
    module = load_benchmark("live_signals")
    dataset = make_toy_world(n_users=60)
    data = training_data(dataset, split_dataset(dataset, NEXT_BASKET), exclude_seen=False)
    model = make_model("stars", 0, 1, settings()).fit(data)
    _, own_metric, _ = module.calibrate(model, data, live=False)
    values, live_metric, _ = module.calibrate(model, data, live=True)
    assert live_metric >= own_metric  # the live weights start at 0 and move only to gain
    assert set(values) >= {"live_1d", "live_7d", "live_new"}
    rows = module.new_item_sweep(model, data)
    assert [r["live_new"] for r in rows] == sorted({values["live_new"], *module.NEW_ITEM_WEIGHTS})
    assert sum(r["chosen"] for r in rows) == 1
    assert float(model.model.live_weights[-1]) == values["live_new"]  # left as chosen
    for row in rows:
        assert 0 <= row["ndcg@10"] <= 1 and 0 <= row["warm_recall@20"] <= 1
    record = {
        "cell": "toy/next-basket",
        "seed": 0,
        "own_only": {"ndcg@10": own_metric, "seconds": 1.0, "values": values},
        "live": {"ndcg@10": live_metric, "seconds": 2.0, "values": values},
        "new_item_sweep": rows,
    }
    assert module.table([record]).count("| toy/next-basket | 0 |") == 1
