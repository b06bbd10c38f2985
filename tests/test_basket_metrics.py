"""Multi-target metrics by hand, expected gains of tied scores (against enumeration of every
tie order), agreement with the single-target metrics, and the paired bootstrap interval."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from starsrec.evaluation.baskets import basket_metrics, csr_targets, mean_metrics
from starsrec.evaluation.intervals import minimal_detectable_difference, paired_difference
from starsrec.evaluation.metrics import metrics_from_ranks
from starsrec.recommender import ranks_of

NEG = -np.inf


def _d(position: int) -> float:
    """Discount of a 0-based position."""
    return 1.0 / math.log2(position + 2)


def _one(scores: list[float], targets: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    """Metrics of a single query, as plain floats."""
    result = basket_metrics(np.array([scores], dtype=np.float32), csr_targets([targets]), ks)
    return {name: float(values[0]) for name, values in result.items()}


# --- distinct scores, by hand -------------------------------------------------------------


def test_two_item_basket_by_hand() -> None:
    # Item i is at rank i; the basket holds the items at ranks 1 and 6.
    scores = list(np.arange(10, 0, -1, dtype=np.float32))
    result = _one(scores, [1, 6], ks=(1, 5, 10))
    ideal = 1 + _d(1)
    assert result["recall@1"] == 0.0
    assert result["ndcg@1"] == 0.0
    assert result["hit@1"] == 0.0
    assert result["mrr@1"] == 0.0
    assert result["recall@5"] == pytest.approx(0.5)
    assert result["ndcg@5"] == pytest.approx(_d(1) / ideal)
    assert result["hit@5"] == 1.0
    assert result["mrr@5"] == pytest.approx(0.5)
    assert result["recall@10"] == pytest.approx(1.0)
    assert result["ndcg@10"] == pytest.approx((_d(1) + _d(6)) / ideal)
    assert result["mrr@10"] == pytest.approx(0.5)


def test_ideal_dcg_over_min_of_basket_and_cutoff() -> None:
    # Three targets at ranks 0, 1, 4: at K = 2 the ideal holds two positions, both filled.
    scores = [5.0, 4.0, 3.0, 2.0, 1.0]
    result = _one(scores, [0, 1, 4], ks=(2, 5))
    assert result["ndcg@2"] == pytest.approx(1.0)
    assert result["recall@2"] == pytest.approx(2 / 3)
    assert result["ndcg@5"] == pytest.approx((1 + _d(1) + _d(4)) / (1 + _d(1) + _d(2)))
    assert result["recall@5"] == pytest.approx(1.0)


def test_mrr_has_its_cutoff() -> None:
    scores = [5.0, 4.0, 3.0, 2.0, 1.0]
    result = _one(scores, [3], ks=(3, 4))
    assert result["mrr@3"] == 0.0
    assert result["hit@3"] == 0.0
    assert result["mrr@4"] == pytest.approx(1 / 4)


def test_keys_and_shapes() -> None:
    scores = np.random.default_rng(0).random((3, 8), dtype=np.float32)
    result = basket_metrics(scores, csr_targets([[0], [1, 2], [3, 4, 5]]))
    assert list(result) == [
        f"{m}@{k}" for m in ("recall", "ndcg", "hit", "mrr") for k in (5, 10, 20)
    ]
    assert all(values.shape == (3,) and values.dtype == np.float64 for values in result.values())


# --- ties -----------------------------------------------------------------------------------


def test_all_scores_equal_average_over_positions() -> None:
    result = _one([1.0] * 4, [1], ks=(2, 4))
    assert result["ndcg@2"] == pytest.approx((1 + _d(1)) / 4)
    assert result["ndcg@4"] == pytest.approx(sum(_d(p) for p in range(4)) / 4)
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["hit@2"] == pytest.approx(0.5)
    assert result["mrr@2"] == pytest.approx((1 + 1 / 2) / 4)


def test_all_scores_equal_two_targets() -> None:
    result = _one([1.0] * 4, [0, 3], ks=(2,))
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["ndcg@2"] == pytest.approx(0.5)
    # Neither target in the first two of four: C(2, 2) / C(4, 2) = 1/6.
    assert result["hit@2"] == pytest.approx(5 / 6)
    # The first target is at offset 0 w.p. 3/6 and at offset 1 w.p. 2/6.
    assert result["mrr@2"] == pytest.approx(3 / 6 + (2 / 6) / 2)


def test_tie_straddling_the_cutoff() -> None:
    # Item 2 shares positions 1..3 with items 1 and 3; only position 1 is inside K = 2.
    result = _one([3.0, 2.0, 2.0, 2.0, 1.0], [2], ks=(2,))
    assert result["recall@2"] == pytest.approx(1 / 3)
    assert result["hit@2"] == pytest.approx(1 / 3)
    assert result["ndcg@2"] == pytest.approx(_d(1) / 3)
    assert result["mrr@2"] == pytest.approx((1 / 2) / 3)


def test_ties_never_broken_by_index() -> None:
    # The same tie, the target first or last by index: same value either way.
    low = _one([2.0, 2.0, 2.0, 1.0], [0], ks=(1,))
    high = _one([2.0, 2.0, 2.0, 1.0], [2], ks=(1,))
    assert low == pytest.approx(high)
    assert low["hit@1"] == pytest.approx(1 / 3)


def _enumerated(scores: np.ndarray, targets: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    """Exact expectation over every order of tied items: each permutation of the catalogue,
    then a stable sort by score, is one equally likely tie-break."""
    n = len(scores)
    totals: dict[str, float] = {
        f"{m}@{k}": 0.0 for m in ("recall", "ndcg", "hit", "mrr") for k in ks
    }
    target_set = set(targets)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        perm = np.array(perm)
        ranking = perm[np.argsort(-scores[perm], kind="stable")]
        ranking = [i for i in ranking if scores[i] > NEG]
        positions = [p for p, item in enumerate(ranking) if item in target_set]
        for k in ks:
            inside = [p for p in positions if p < k]
            ideal = sum(_d(p) for p in range(min(len(targets), k)))
            totals[f"recall@{k}"] += len(inside) / len(targets)
            totals[f"ndcg@{k}"] += sum(_d(p) for p in inside) / ideal
            totals[f"hit@{k}"] += float(bool(inside))
            totals[f"mrr@{k}"] += 1 / (inside[0] + 1) if inside else 0.0
    return {name: value / len(perms) for name, value in totals.items()}


def test_ties_match_enumeration_of_every_order() -> None:
    rng = np.random.default_rng(7)
    ks = (1, 2, 3, 5)
    rows, baskets, expected = [], [], []
    for _ in range(12):
        # Few distinct values so blocks are large; some filtered items and targets.
        scores = rng.integers(0, 3, size=6).astype(np.float32)
        scores[rng.random(6) < 0.2] = NEG
        basket = sorted(rng.choice(6, size=int(rng.integers(1, 4)), replace=False).tolist())
        rows.append(scores)
        baskets.append(basket)
        expected.append(_enumerated(scores, basket, ks))
    result = basket_metrics(np.stack(rows), csr_targets(baskets), ks)
    for q, want in enumerate(expected):
        for name, value in want.items():
            assert result[name][q] == pytest.approx(value, abs=1e-12), (q, name)


# --- filtered items -------------------------------------------------------------------------


def test_filtered_target_is_a_miss() -> None:
    # Item 1 is filtered: a miss, though it still counts in |T| and the ideal DCG.
    result = _one([1.0, NEG, 0.5], [1, 2], ks=(5,))
    assert result["recall@5"] == pytest.approx(0.5)
    assert result["ndcg@5"] == pytest.approx(_d(1) / (1 + _d(1)))
    assert result["hit@5"] == 1.0
    assert result["mrr@5"] == pytest.approx(0.5)


def test_all_filtered_scores_zero() -> None:
    result = _one([NEG, NEG, NEG], [0, 2], ks=(1, 5))
    assert all(value == 0.0 for value in result.values())


def test_filtered_items_do_not_push_targets_down() -> None:
    result = _one([NEG, NEG, 0.0, NEG], [2], ks=(1,))
    assert result["hit@1"] == 1.0
    assert result["ndcg@1"] == 1.0


# --- single target --------------------------------------------------------------------------


def test_single_target_agrees_with_rank_metrics() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random((50, 40), dtype=np.float32)
    targets = rng.integers(0, 40, size=50)
    ranks = ranks_of(scores, targets)
    result = basket_metrics(scores, (np.arange(51), targets), ks=(5, 10, 20, 40))
    means = mean_metrics(result)
    reference = metrics_from_ranks(ranks)
    for k in (5, 10, 20):
        assert means[f"hit@{k}"] == pytest.approx(reference[f"hit@{k}"], rel=1e-12)
        assert means[f"ndcg@{k}"] == pytest.approx(reference[f"ndcg@{k}"], rel=1e-12)
        np.testing.assert_allclose(result[f"recall@{k}"], result[f"hit@{k}"])
    # With the cut-off at the catalogue size, MRR@K is the uncut MRR.
    assert means["mrr@40"] == pytest.approx(reference["mrr"], rel=1e-12)
    np.testing.assert_allclose(result["ndcg@40"], 1.0 / np.log2(ranks + 2.0), rtol=1e-12)


def test_row_chunks_give_the_same_values() -> None:
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(20, 30)).astype(np.float32)
    baskets = [rng.choice(30, size=int(rng.integers(1, 6)), replace=False) for _ in range(20)]
    whole = basket_metrics(scores, csr_targets(baskets))
    chunked = basket_metrics(scores, csr_targets(baskets), max_elements=31)
    for name in whole:
        np.testing.assert_array_equal(whole[name], chunked[name])


# --- inputs ---------------------------------------------------------------------------------


def test_csr_targets_and_mean_metrics() -> None:
    offsets, items = csr_targets([np.array([3, 1]), np.array([0])])
    np.testing.assert_array_equal(offsets, [0, 2, 3])
    np.testing.assert_array_equal(items, [3, 1, 0])
    means = mean_metrics({"hit@5": np.array([1.0, 0.0]), "ndcg@5": np.array([])})
    assert means["hit@5"] == pytest.approx(0.5)
    assert math.isnan(means["ndcg@5"])


def test_no_queries_give_empty_arrays() -> None:
    result = basket_metrics(np.empty((0, 5), dtype=np.float32), csr_targets([]))
    assert all(values.shape == (0,) for values in result.values())


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ((np.array([0, 2]), np.array([1, 1])), "distinct"),
        ((np.array([0, 0]), np.array([], dtype=np.int64)), "at least one"),
        ((np.array([0, 1]), np.array([9])), "lie in"),
        ((np.array([0, 1, 2]), np.array([0, 1])), "shape"),
    ],
)
def test_bad_targets_are_rejected(targets: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        basket_metrics(np.zeros((1, 4), dtype=np.float32), targets)


def test_nan_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        basket_metrics(np.array([[np.nan, 1.0]], dtype=np.float32), csr_targets([[1]]))


# --- paired intervals -----------------------------------------------------------------------


def _paired(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = rng.random(n)
    return b + shift + rng.normal(0.0, 0.1, size=n), b


def test_interval_covers_a_known_difference() -> None:
    a, b = _paired(200, 0.1, seed=11)
    result = paired_difference(a, b)
    assert result["n"] == 200
    assert result["method"] == "BCa"
    assert result["low"] < 0.1 < result["high"]
    assert result["low"] < result["mean_difference"] < result["high"]
    assert result["excludes_zero"]
    se = np.std(a - b, ddof=1) / np.sqrt(200)
    assert result["standard_error"] == pytest.approx(se)
    # A 95% interval is about 2 * 1.96 standard errors wide.
    assert result["high"] - result["low"] == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_interval_coverage_over_simulations() -> None:
    intervals = [
        paired_difference(*_paired(100, 0.1, seed=s), resamples=1000, seed=s) for s in range(40)
    ]
    covered = [r["low"] < 0.1 < r["high"] for r in intervals]
    # Nominal 95%: 40 draws from Binomial(40, 0.95) fall below 34 with chance under 1%.
    assert sum(covered) >= 34


def test_identical_models_include_zero() -> None:
    a = np.random.default_rng(2).random(200)
    result = paired_difference(a, a.copy())
    assert result["mean_difference"] == 0.0
    assert (result["low"], result["high"]) == (0.0, 0.0)
    assert not result["excludes_zero"]
    # Two models of the same quality, scored independently: 0 lies inside.
    rng = np.random.default_rng(4)
    result = paired_difference(rng.random(200), rng.random(200))
    assert result["low"] < 0.0 < result["high"]
    assert not result["excludes_zero"]


def test_differences_heaped_at_zero() -> None:
    # Most queries missed by both models: the differences are mostly exact zeros.
    a = np.zeros(300)
    a[:12] = 1.0
    b = np.zeros(300)
    b[12:15] = 1.0
    result = paired_difference(a, b, resamples=2000)
    assert result["method"] == "BCa"
    assert result["mean_difference"] == pytest.approx(9 / 300)
    assert result["low"] < result["mean_difference"] < result["high"]


def test_deterministic_under_a_seed() -> None:
    a, b = _paired(80, 0.05, seed=1)
    first = paired_difference(a, b, resamples=2000, seed=9)
    assert paired_difference(a, b, resamples=2000, seed=9) == first
    other = paired_difference(a, b, resamples=2000, seed=10)
    assert (other["low"], other["high"]) != (first["low"], first["high"])


def test_fewer_than_two_queries() -> None:
    empty = paired_difference(np.array([]), np.array([]))
    assert empty["n"] == 0
    assert all(
        math.isnan(empty[key])
        for key in (
            "mean_difference",
            "standard_error",
            "low",
            "high",
            "minimal_detectable_difference",
        )
    )
    assert not empty["excludes_zero"]
    one = paired_difference(np.array([0.5]), np.array([0.2]))
    assert one["mean_difference"] == pytest.approx(0.3)
    assert math.isnan(one["low"]) and math.isnan(one["high"]) and math.isnan(one["standard_error"])
    assert not one["excludes_zero"]


def test_all_equal_differences_give_a_point_interval() -> None:
    b = np.linspace(0.0, 0.5, 10)
    result = paired_difference(b + 0.2, b)
    assert result["low"] == pytest.approx(0.2) and result["high"] == pytest.approx(0.2)
    assert result["standard_error"] == pytest.approx(0.0, abs=1e-15)
    assert result["excludes_zero"]


def test_paired_difference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        paired_difference(np.array([np.nan, 1.0]), np.zeros(2))


def test_minimal_detectable_difference() -> None:
    factor = 1.959963984540054 + 0.8416212335729143
    assert minimal_detectable_difference(0.1, n=100) == pytest.approx(factor * 0.01)
    differences = np.random.default_rng(6).normal(size=50)
    from_array = minimal_detectable_difference(differences)
    from_std = minimal_detectable_difference(differences.std(ddof=1), n=50)
    assert from_array == pytest.approx(from_std)
    assert math.isnan(minimal_detectable_difference(0.1, n=1))
    assert math.isnan(minimal_detectable_difference(np.array([0.3])))
    with pytest.raises(ValueError, match="n is required"):
        minimal_detectable_difference(0.1)
    result = paired_difference(*_paired(100, 0.1, seed=3), resamples=500)
    assert result["minimal_detectable_difference"] == pytest.approx(
        factor * result["standard_error"]
    )
