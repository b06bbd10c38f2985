"""Places kept for a set of items (`Slots`): the rule, checked against its plain
definition on lists, and what the evaluator and the contract make of it."""

from __future__ import annotations

import numpy as np
import pytest

from starsrec.evaluation.baskets import basket_metrics
from starsrec.recommender import Slots, place_slots, top_k


def placed_order(scores: np.ndarray, members: np.ndarray, count: int, after: int) -> list[int]:
    """The rule on a list: the first `after`, then the best `count` members below them,
    then everything else, each part in score order (ties by lower index)."""
    order = [int(i) for i in np.lexsort((np.arange(len(scores)), -scores)) if scores[i] > -np.inf]
    first = order[:after]
    chosen = [i for i in order[after:] if members[i]][:count]
    return first + chosen + [i for i in order[after:] if i not in chosen]


@pytest.mark.parametrize("seed", range(30))
def test_placed_scores_rank_as_the_rule_says(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    scores = rng.normal(size=(3, n)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf  # filtered items are never placed
    members = rng.random(n) < 0.3
    count, after = int(rng.integers(0, 4)), int(rng.integers(0, 12))
    expected = [placed_order(row, members, count, after) for row in scores]
    place_slots(scores, Slots(members, count, after))
    rows, _ = top_k(scores, n)
    for q in range(3):
        assert rows[q][rows[q] >= 0].tolist() == expected[q]


def test_the_first_places_stay_when_their_last_score_ties_the_next() -> None:
    scores = np.array([[3.0, 2.0, 2.0, 1.0, 0.5]], dtype=np.float32)
    members = np.array([False, False, False, False, True])
    place_slots(scores, Slots(members, count=1, after=2))
    rows, _ = top_k(scores, 5)
    # Item 2 ties the 2nd place: the placed item comes after it, never before item 1.
    assert rows[0].tolist() == [0, 1, 2, 4, 3]


def test_no_slots_and_too_few_items_change_nothing() -> None:
    scores = np.array([[1.0, 0.5, -np.inf]], dtype=np.float32)
    for slots in (Slots(np.ones(3, bool), count=0), Slots(np.ones(3, bool), count=2, after=5)):
        before = scores.copy()
        place_slots(scores, slots)
        np.testing.assert_array_equal(scores, before)


def test_slots_raise_a_member_into_the_evaluators_top() -> None:
    # The target (item 5, a member) ranks 6th; one slot after the first 3 makes it 4th.
    scores = np.array([[6, 5, 4, 3, 2, 1]], dtype=np.float32)
    targets = (np.array([0, 1]), np.array([5]))
    members = np.zeros(6, bool)
    members[5] = True
    assert basket_metrics(scores, targets, ks=(5,))["recall@5"][0] == 0.0
    place_slots(scores, Slots(members, count=1, after=3))
    metrics = basket_metrics(scores, targets, ks=(5,))
    assert metrics["recall@5"][0] == 1.0
    assert metrics["mrr@5"][0] == pytest.approx(1 / 4)


def test_bad_slots_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Slots(np.ones(3, bool), count=-1)
