"""The item-parameters benchmark (benchmarks/item_parameters.py) on the toy world: each
variant trains, is measured on validation, and counts its per-item values."""

from __future__ import annotations

from starsrec.data.splits import NEXT_BASKET, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.experiments.report import training_data
from tiny import load_benchmark, settings


def test_each_variant_is_measured_on_validation_with_its_item_values() -> None:
    module = load_benchmark("item_parameters")
    dataset = make_toy_world(n_users=60)
    data = training_data(dataset, split_dataset(dataset, NEXT_BASKET), exclude_seen=False)
    base = settings()
    rows = {v: module.measure(v, 0, data, 1, base) for v in module.VARIANTS}
    # dim 16, hashing text of 64: the text residual's rows are 4x the width residual's;
    # the other per-item values (bias, repeat weight) are the same in each.
    other = rows["none"]["item_values"]
    assert rows["text"]["item_values"] - other == 4 * (rows["width"]["item_values"] - other)
    assert rows["width"]["item_values"] - other == 16
    for row in rows.values():
        assert 0 <= row["validation_ndcg@10"] <= 1 and row["events_per_s"] > 0
        values = row["item_values"] + row["optimizer_values"]
        assert row["gb_per_million_items"] == values * 4e6 / 1e9
    # AdamW: two moments per value; row-wise Adagrad: one per item table's row (delta,
    # bias, repeat weight).
    assert rows["width"]["optimizer_values"] == 2 * rows["width"]["item_values"]
    assert rows["width-rowwise"]["optimizer_values"] == 3
    table = module.table([r | {"cell": "toy/next-basket"} for r in rows.values()])
    assert table.count("| toy/next-basket |") == len(module.VARIANTS)
