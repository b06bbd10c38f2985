"""`evaluate_baskets` end to end on a hand-made model: the means of `basket_metrics`, the
per-query values kept for intervals, the target slices, and chunking that changes nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from starsrec.data.baskets import BasketTargets
from starsrec.data.dataset import Dataset, EventType
from starsrec.data.interactions import Catalogue, EventLog, Queries
from starsrec.data.validation import validate
from starsrec.evaluation.baskets import basket_metrics, csr_targets, mean_metrics
from starsrec.evaluation.evaluate import EvaluationConfig, evaluate, validation_metric
from starsrec.recommender import Slots, TrainingData, place_slots
from test_metrics import ITEMS, NextLetterConfig, NextLetterModel, idx


@pytest.fixture(scope="module")
def world():
    """Training: u1 bought a, a, b; u2 bought a, b, c. Baskets asked after each history."""
    events = pd.DataFrame(
        [
            ("u1", "a", "2024-01-01", "purchase"),
            ("u1", "a", "2024-01-02", "purchase"),
            ("u1", "b", "2024-01-03", "purchase"),
            ("u2", "a", "2024-01-01", "purchase"),
            ("u2", "b", "2024-01-02", "purchase"),
            ("u2", "c", "2024-01-03", "purchase"),
        ],
        columns=["user_id", "item_id", "timestamp", "event_type"],
    )
    items = pd.DataFrame({"item_id": ITEMS, "text": [f"item {x}" for x in ITEMS]})
    dataset = validate(Dataset("baskets", events, items, (EventType("purchase"),)))
    catalogue = Catalogue.from_items(dataset.items)
    train = EventLog.from_dataset(dataset, catalogue)
    model = NextLetterModel(NextLetterConfig()).fit(TrainingData(train, catalogue))
    histories = [idx("ab"), idx("abc"), idx("k"), []]
    queries = Queries.from_histories(histories, train.event_types)
    # basket 0: c (the boosted next letter) and a (a repeat); 1: d and l; 2: l and a;
    # 3 (no history): a and b.
    targets = csr_targets([idx("ca"), idx("dl"), idx("la"), idx("ab")])
    return model, queries, targets, train


def test_metrics_are_the_means_of_basket_metrics(world) -> None:
    model, queries, targets, train = world
    result = evaluate(model, queries, targets, train, EvaluationConfig(progress=False))
    expected = basket_metrics(model.score(queries), targets)
    for name, values in expected.items():
        np.testing.assert_allclose(result["per_query"][name], values)
    # top 10s: a..j for three queries, l + a..i after k: 11 of 12 items
    assert result["metrics"] == pytest.approx(mean_metrics(expected) | {"coverage@10": 11 / 12})
    # basket 0: c first (boosted), a second: recall@5 = 1 and ndcg@5 = 1 (both in the top 2)
    assert result["per_query"]["recall@5"][0] == 1.0
    assert result["per_query"]["ndcg@5"][0] == pytest.approx(1.0)
    assert result["queries"] == 4


def test_target_slices(world) -> None:
    model, queries, targets, train = world
    slices = evaluate(model, queries, targets, train, EvaluationConfig(progress=False))["slices"]
    # repeat targets: a in basket 0 (u had a, b). Explore: every query has at least one.
    assert slices["repeat"]["queries"] == 1 and slices["repeat"]["recall@5"] == 1.0
    assert slices["explore"]["queries"] == 4
    # cold targets (no training events): d, l (query 1), l (query 2)
    assert slices["cold"]["queries"] == 2
    # with exclude_seen the repeat target a of basket 0 cannot be found
    seen = evaluate(
        model, queries, targets, train, EvaluationConfig(exclude_seen=True, progress=False)
    )
    assert seen["slices"]["repeat"]["recall@20"] == 0.0


def test_new_item_slots_are_placed_over_the_untrained_items(world) -> None:
    model, queries, targets, train = world
    config = EvaluationConfig(progress=False, new_item_slots=2, new_item_slots_after=0)
    result = evaluate(model, queries, targets, train, config)
    scores = model.score(queries).astype(np.float32)
    new_items = np.ones(len(ITEMS), dtype=bool)
    new_items[idx("abc")] = False  # the items with training events
    place_slots(scores, Slots(new_items, count=2, after=0))
    for name, values in basket_metrics(scores, targets).items():
        np.testing.assert_allclose(result["per_query"][name], values)
    plain = evaluate(model, queries, targets, train, EvaluationConfig(progress=False))
    moved = [n for n, v in plain["per_query"].items() if not np.allclose(result["per_query"][n], v)]
    assert moved  # placing changed some ranking


def test_explore_slots_are_placed_over_each_shoppers_new_items(world) -> None:
    """new_to="shopper": the places go to items not in each query's own history."""
    model, queries, targets, train = world
    config = EvaluationConfig(progress=False, new_item_slots=1, new_item_slots_after=1)
    result = evaluate(model, queries, targets, train, replace(config, new_to="shopper"))
    scores = model.score(queries).astype(np.float32)
    for q, history in enumerate([idx("ab"), idx("abc"), idx("k"), []]):
        new_to_them = np.ones(len(ITEMS), dtype=bool)
        new_to_them[history] = False
        place_slots(scores[q : q + 1], Slots(new_to_them, count=1, after=1))
    for name, values in basket_metrics(scores, targets).items():
        np.testing.assert_allclose(result["per_query"][name], values)
    plain = evaluate(model, queries, targets, train, EvaluationConfig(progress=False))
    moved = [n for n, v in plain["per_query"].items() if not np.allclose(result["per_query"][n], v)]
    assert moved  # placing changed some ranking
    with pytest.raises(ValueError, match="new to one of catalogue, shopper"):
        evaluate(model, queries, targets, train, replace(config, new_to="the shop"))


def test_chunks_change_nothing(world) -> None:
    model, queries, targets, train = world
    whole = evaluate(model, queries, targets, train, EvaluationConfig(progress=False))
    chunked = evaluate(
        model, queries, targets, train, EvaluationConfig(max_scores=len(ITEMS), progress=False)
    )
    for name, values in whole["per_query"].items():
        np.testing.assert_array_equal(chunked["per_query"][name], values)
    assert chunked["slices"] == whole["slices"]


def test_target_lists_must_match_the_queries(world) -> None:
    model, queries, targets, train = world
    with pytest.raises(ValueError, match="4 queries but 3 target lists"):
        evaluate(model, queries, (targets[0][:-1], targets[1]), train)


def test_validation_metric_is_the_evaluators_mean(world) -> None:
    """What models choose by is exactly the evaluated metric, for any metric name."""
    model, queries, targets, train = world
    result = evaluate(model, queries, targets, train, EvaluationConfig(progress=False))
    for metric in ("ndcg@10", "recall@5", "hit@20"):
        chosen = validation_metric(model, queries, targets, exclude_seen=False, metric=metric)
        assert chosen == pytest.approx(result["metrics"][metric])
    with pytest.raises(ValueError, match="ndcg@10"):
        validation_metric(model, queries, targets, exclude_seen=False, metric="ndcg")


def test_basket_targets_single_and_take() -> None:
    single = BasketTargets.single(np.array([4, 2, 7]))
    assert single.sizes.tolist() == [1, 1, 1] and single.items.tolist() == [4, 2, 7]
    offsets, items = csr_targets([idx("ca"), idx("d"), idx("lab")])
    taken = BasketTargets(offsets, items).take(np.array([2, 0]))
    assert [taken.of(q).tolist() for q in range(2)] == [idx("lab"), idx("ca")]


def test_training_data_refuses_validation_without_matching_targets(world) -> None:
    model, queries, _, train = world
    with pytest.raises(ValueError, match="come together"):
        TrainingData(train, model.catalogue, validation=queries)
    with pytest.raises(ValueError, match="4 validation queries but 3 target sets"):
        TrainingData(
            train,
            model.catalogue,
            validation=queries,
            validation_targets=BasketTargets.single(np.arange(3)),
        )
