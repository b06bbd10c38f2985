"""The new-item slots benchmark (benchmarks/new_item_slots.py) on the toy world: one model,
every count of places measured by the evaluator, with paired differences on test."""

from __future__ import annotations

from starsrec.data.splits import NEXT_BASKET, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.experiments.report import make_model, training_data
from tiny import load_benchmark


def test_every_count_is_measured_on_one_model() -> None:
    module = load_benchmark("new_item_slots")
    dataset = make_toy_world(n_users=60)
    split = split_dataset(dataset, NEXT_BASKET)
    data = training_data(dataset, split, exclude_seen=False)
    model = make_model("popularity", 0, 1, {}).fit(data)
    rows = module.slot_rows(model, data, split)
    assert [r["count"] for r in rows] == list(module.COUNTS)
    for row in rows:
        for part in ("validation", "test"):
            numbers = row[part]
            assert "per_query" not in numbers
            assert 0 <= numbers["ndcg@10"] <= 1 and 0 <= numbers["warm_recall@20"] <= 1
    assert "difference" not in rows[0]["test"]
    for row in rows[1:]:
        assert set(row["test"]["difference"]) == {"ndcg@10", "recall@20"}
    record = {"cell": "toy/next-basket", "seed": 0, "rows": rows}
    assert module.table([record]).count("| toy/next-basket | 0 |") == 2 * len(rows)


def test_results_keep_one_stamped_record_per_cell_and_seed(tmp_path) -> None:
    from starsrec.experiments.cells import save_by_cell_and_seed

    path = tmp_path / "results" / "bench.json"
    save_by_cell_and_seed(path, {"cell": "a/b", "seed": 0, "value": 1})
    save_by_cell_and_seed(path, {"cell": "a/b", "seed": 1, "value": 2})
    stored = save_by_cell_and_seed(path, {"cell": "a/b", "seed": 0, "value": 3})
    assert [(r["seed"], r["value"]) for r in stored] == [(1, 2), (0, 3)]
    assert {"date", "machine", "commit"} <= set(stored[-1])
