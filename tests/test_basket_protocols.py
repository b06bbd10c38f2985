"""The basket protocols through the harness: `split_dataset`, `run_models` and the report
with paired differences to the strongest baseline and the per-query values behind them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from starsrec.baselines.lambdamart import LambdaMARTRecommender
from starsrec.data.baskets import BasketSplit
from starsrec.data.splits import LAST_BASKET, NEXT_BASKET, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.evaluation.evaluate import EvaluationConfig, evaluate
from starsrec.experiments.report import make_model, run_models, training_data, write_report
from tiny import TINY_LAMBDAMART


@pytest.fixture(scope="module")
def dataset():
    return make_toy_world(n_users=120)


@pytest.mark.parametrize("protocol", [NEXT_BASKET, LAST_BASKET])
def test_split_dataset_gives_basket_splits(dataset, protocol) -> None:
    split = split_dataset(dataset, protocol)
    assert isinstance(split, BasketSplit) and split.protocol == protocol
    assert len(split.test) > 0 and len(split.test_targets.offsets) == len(split.test) + 1
    data = training_data(dataset, split, exclude_seen=True)
    # validation shaped like the test: whole baskets
    assert data.validation is split.validation
    assert data.validation_targets is split.validation_targets


def test_a_basket_column_separates_baskets_that_share_a_timestamp(dataset) -> None:
    keyed = dataset.events.copy()
    keyed["basket_id"] = np.arange(len(keyed))  # every line its own basket
    split = split_dataset(type(dataset)(**{**vars(dataset), "events": keyed}), NEXT_BASKET)
    plain = split_dataset(dataset, NEXT_BASKET)
    assert split.basket.max() >= plain.basket.max()


def test_run_models_reports_paired_differences(dataset, tmp_path) -> None:
    records = run_models(
        dataset, NEXT_BASKET, ["popularity", "repeat-history", "cooccurrence-knn"], progress=False
    )
    assert {"recall@10", "ndcg@10", "hit@10", "mrr@10"} <= set(records[0]["metrics"])
    report = write_report(records, tmp_path, "toy next-basket")
    text = report.read_text()
    assert "Differences to the strongest baseline" in text
    assert text.split("\n")[2].startswith("**")  # the verdict opens the report
    comparisons = json.loads((tmp_path / "comparisons.json").read_text())
    assert len(comparisons) == 2  # every model but the strongest baseline
    strongest = comparisons[0]["baseline"]
    means = {r["model"]: r["metrics"]["ndcg@10"] for r in records}
    assert means[strongest] == max(means.values())
    for row in comparisons:
        difference = means[row["model"]] - means[strongest]
        assert row["mean_difference"] == pytest.approx(difference)
        assert row["low"] <= row["mean_difference"] <= row["high"]
    per_query = pd.read_parquet(tmp_path / "per_query.parquet")
    assert len(per_query) == 3 * records[0]["queries"]
    assert "per_query" not in json.loads((tmp_path / "results.json").read_text())[0]


def test_lambdamart_learns_from_whole_validation_baskets(dataset) -> None:
    """Under a basket protocol every item of a validation basket is a positive of its group
    (what full strength means there), not one query per item."""
    events = dataset.events.copy()
    # One event a day in the toy world: a basket per three days gives baskets of 3.
    events["timestamp"] = pd.to_datetime(events["timestamp"]).dt.floor("3D")
    dataset = type(dataset)(**{**vars(dataset), "events": events})
    split = split_dataset(dataset, NEXT_BASKET)
    data = training_data(dataset, split, exclude_seen=False)
    model = LambdaMARTRecommender(replace(TINY_LAMBDAMART, n_estimators=5)).fit(data)
    generators = model.generators
    assert generators is not None
    queries, targets = data.validation, data.validation_targets
    _, labels, sizes = model._groups(generators, queries, targets)
    positives = np.add.reduceat(labels, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    query, item, _ = generators.candidates_and_features(queries)
    expected = [np.isin(item[query == q], targets.of(q)).sum() for q in range(len(queries))]
    assert positives.tolist() == [n for n in expected if n > 0]
    assert positives.max() > 1  # some groups have several positives


def test_run_models_tunes_a_grid_on_validation_and_keeps_it_for_every_seed(dataset) -> None:
    grid = {
        "lambdamart": {
            "text_encoder": ("hashing",),
            "embedding_cache": (None,),
            "n_estimators": (1, 30),
        }
    }
    records = run_models(
        dataset, NEXT_BASKET, ["lambdamart"], seeds=(0, 1), progress=False, tuning=grid
    )
    first, second = records
    tried = first["tuning"]
    assert [t["settings"]["n_estimators"] for t in tried] == [1, 30]
    best = max(tried, key=lambda t: t["validation_ndcg@10"])
    assert first["settings"] == best["settings"]
    assert second["settings"] == first["settings"] and second["tuning"] == tried


def test_run_models_saves_each_fitted_model_when_asked(dataset, tmp_path) -> None:
    (record,) = run_models(
        dataset, NEXT_BASKET, ["top-frequency"], progress=False, save_to=tmp_path / "models"
    )
    split = split_dataset(dataset, NEXT_BASKET)
    fitted = make_model("top-frequency", seed=0).fit(training_data(dataset, split, False))
    loaded = type(fitted).load(tmp_path / "models" / "top-frequency-seed0")
    queries = split.test[:20]
    np.testing.assert_array_equal(loaded.score(queries), fitted.score(queries))
    assert record["model"] == "top-frequency"


def test_run_models_evaluates_a_fitted_model_again_with_places(dataset) -> None:
    """`places`: one more record per kind of new-item places, from the same fitted model:
    the first 10 places never change, so NDCG@10 is the plain record's."""
    places = {"top-frequency": ((2, "shopper"), (2, "catalogue"))}
    plain, explore, new = run_models(
        dataset, NEXT_BASKET, ["top-frequency"], progress=False, places=places
    )
    assert [r["model"] for r in (plain, explore, new)] == [
        "top-frequency",
        "top-frequency +2 explore slots",
        "top-frequency +2 new-item slots",
    ]
    split = split_dataset(dataset, NEXT_BASKET)
    fitted = make_model("top-frequency", seed=0).fit(training_data(dataset, split, False))
    for placed, kind in ((explore, "shopper"), (new, "catalogue")):
        assert placed["metrics"]["ndcg@10"] == plain["metrics"]["ndcg@10"]
        assert placed["train_s"] == plain["train_s"]
        config = EvaluationConfig(progress=False, new_item_slots=2, new_to=kind)
        expected = evaluate(fitted, split.test, split.test_targets, split.train, config)
        for name, values in expected["per_query"].items():
            np.testing.assert_array_equal(placed["per_query"][name], values)


def test_settings_replace_nested_fields_by_dotted_path() -> None:
    model = make_model("sasrec", seed=0, settings={"train.learning_rate": 1e-3})
    assert model.config.train.learning_rate == 1e-3
    assert not model.config.model.use_text  # the variant's switches still apply
    with pytest.raises(ValueError, match="no field 'learning_rat'"):
        make_model("sasrec", seed=0, settings={"train.learning_rat": 1e-3})
