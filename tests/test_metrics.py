"""Ranking metrics by hand, tie-breaking of `top_k` / `ranks_of`, and `evaluate` end to end
on a tiny hand-made model whose every rank and slice can be checked on paper."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from starsrec.data.baskets import BasketTargets
from starsrec.data.dataset import Dataset, EventType
from starsrec.data.interactions import Catalogue, EventLog, Queries
from starsrec.data.validation import validate
from starsrec.evaluation.evaluate import EvaluationConfig, evaluate
from starsrec.evaluation.metrics import coverage, metrics_from_ranks
from starsrec.recommender import Recommender, TrainingData, ranks_of, top_k

# --- metrics_from_ranks -------------------------------------------------------------------


def test_metrics_from_ranks_by_hand() -> None:
    result = metrics_from_ranks(np.array([0, 3, 12, 40]))
    assert set(result) == {
        "hit@5",
        "ndcg@5",
        "hit@10",
        "ndcg@10",
        "hit@20",
        "ndcg@20",
        "mrr",
    }
    assert result["hit@5"] == pytest.approx(0.5)
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert result["hit@10"] == pytest.approx(0.5)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert result["hit@20"] == pytest.approx(0.75)
    assert result["ndcg@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(14)) / 4)
    assert result["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13 + 1 / 41) / 4)


def test_metrics_cutoff_is_exclusive_and_custom_cutoffs() -> None:
    # rank 4 is the fifth item: inside the top 5; rank 5 is not.
    result = metrics_from_ranks(np.array([4, 5]), cutoffs=(1, 5))
    assert set(result) == {"hit@1", "ndcg@1", "hit@5", "ndcg@5", "mrr"}
    assert result["hit@1"] == 0.0
    assert result["ndcg@1"] == 0.0
    assert result["hit@5"] == pytest.approx(0.5)
    assert result["ndcg@5"] == pytest.approx((1 / math.log2(6)) / 2)
    assert result["mrr"] == pytest.approx((1 / 5 + 1 / 6) / 2)


def test_perfect_ranking_scores_one() -> None:
    result = metrics_from_ranks(np.zeros(7, dtype=np.int64))
    assert all(value == pytest.approx(1.0) for value in result.values())


def test_empty_ranks_give_nan() -> None:
    result = metrics_from_ranks(np.array([], dtype=np.int64))
    assert len(result) == 7
    assert all(math.isnan(value) for value in result.values())


def test_coverage() -> None:
    assert coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)
    assert coverage(np.array([[4, 3, 2, 1, 0]]), 5) == pytest.approx(1.0)
    assert math.isnan(coverage(np.empty((0, 0), dtype=np.int64), 0))


# --- top_k and ranks_of -------------------------------------------------------------------


def test_top_k_breaks_ties_by_lower_index() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    assert top_k(scores, 5)[0].tolist() == [[1, 2, 4, 3, 0], [0, 1, 2, 3, 4]]
    rows, best = top_k(scores, 2)
    assert rows.tolist() == [[1, 2], [0, 1]] and best.tolist() == [[3.0, 3.0], [0.0, 0.0]]
    # k beyond the catalogue pads with row -1 and score -inf.
    rows, best = top_k(scores, 7)
    assert rows[:, 5:].tolist() == [[-1, -1]] * 2 and np.isneginf(best[:, 5:]).all()


def test_top_k_leaves_out_minus_inf_entries() -> None:
    scores = np.array([[-np.inf, 1.0, -np.inf, 1.0, 0.5]], dtype=np.float32)
    assert top_k(scores, 5)[0].tolist() == [[1, 3, 4, -1, -1]]


def test_top_k_labels_columns_with_rows() -> None:
    scores = np.array([[0.5, 2.0, 2.0]], dtype=np.float32)
    # ties go to the lower row label, not the lower column
    assert top_k(scores, 2, np.array([9, 7, 3]))[0].tolist() == [[3, 7]]


def test_ranks_of_by_hand() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]] * 5, dtype=np.float32)
    assert ranks_of(scores, np.array([0, 1, 2, 3, 4])).tolist() == [4, 0, 1, 3, 2]


def test_ranks_of_agrees_with_top_k_on_ties() -> None:
    rng = np.random.default_rng(7)
    # Few distinct values: most rows are full of ties; some -inf (filtered) entries too.
    scores = rng.integers(0, 4, size=(30, 9)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    order = top_k(scores, scores.shape[1])[0]
    for item in range(scores.shape[1]):
        targets = np.full(len(scores), item)
        listed = (order == item).any(axis=1)  # top_k leaves -inf entries out
        expected = np.argmax(order == item, axis=1)  # position of `item` in each ranking
        np.testing.assert_array_equal(ranks_of(scores, targets)[listed], expected[listed])


# --- evaluate on a hand-made model --------------------------------------------------------

ITEMS = list("abcdefghijkl")  # 12 items; item index = position in this list
EVENT_TYPES = (EventType("purchase"), EventType("return", weight=0.0, target=False))


@dataclass(frozen=True)
class NextLetterConfig:
    boost: float = 100.0


class NextLetterModel(Recommender):
    """Scores item j as N - j, plus `boost` for the item after the last history item."""

    name = "next-letter"
    config_class = NextLetterConfig

    def _fit(self, data: TrainingData) -> None:
        pass

    def score(self, queries: Queries) -> np.ndarray:
        n = self._fitted_catalogue().size
        scores = np.tile(np.arange(n, 0, -1, dtype=np.float32), (len(queries), 1))
        for q in range(len(queries)):
            history = queries.log.item[queries.history(q)]
            if len(history):
                scores[q, (history[-1] + 1) % n] += self.config.boost
        return scores

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _restore(self, state: dict[str, np.ndarray], path: Path) -> None:
        pass


single = BasketTargets.single  # one target per query


def idx(letters: str) -> list[int]:
    return [ITEMS.index(letter) for letter in letters]


@pytest.fixture(scope="module")
def tiny() -> tuple[NextLetterModel, Queries, np.ndarray, EventLog]:
    """Training purchases: a x3, b x2, c x1 (so the head, top 20% of 3 seen items, is {a});
    g only returned (in train, so warm, but never a target). The rest never appear."""
    events = pd.DataFrame(
        [
            ("u1", "a", "2024-01-01", "purchase"),
            ("u1", "a", "2024-01-02", "purchase"),
            ("u1", "b", "2024-01-03", "purchase"),
            ("u2", "a", "2024-01-01", "purchase"),
            ("u2", "b", "2024-01-02", "purchase"),
            ("u2", "c", "2024-01-03", "purchase"),
            ("u3", "g", "2024-01-04", "return"),
        ],
        columns=["user_id", "item_id", "timestamp", "event_type"],
    )
    items = pd.DataFrame({"item_id": ITEMS, "text": [f"item {x}" for x in ITEMS]})
    dataset = validate(Dataset("tiny", events, items, EVENT_TYPES))
    catalogue = Catalogue.from_items(dataset.items)
    train = EventLog.from_dataset(dataset, catalogue)
    model = NextLetterModel(NextLetterConfig()).fit(TrainingData(train, catalogue))
    # history -> target; boosted item; rank (hand-computed)
    # q0: a       -> b   boost b                  rank 0   new   short  warm long_tail
    # q1: bc      -> a   boost d: d a ...         rank 1   new   short  warm head
    # q2: abc     -> c   boost d: d a b c         rank 3   repeat long  warm long_tail
    # q3: j       -> l   boost k: k a..j l        rank 11  new   short  cold long_tail
    # q4: acdb    -> g   boost c: c a b d e f g   rank 6   new   long   warm long_tail
    histories = [idx("a"), idx("bc"), idx("abc"), idx("j"), idx("acdb")]
    queries = Queries.from_histories(histories, EVENT_TYPES)
    targets = np.array(idx("baclg"))
    return model, queries, targets, train


def test_hand_model_ranks(tiny) -> None:
    model, queries, targets, _ = tiny
    assert ranks_of(model.score(queries), targets).tolist() == [0, 1, 3, 11, 6]


def test_evaluate_metrics_by_hand(tiny) -> None:
    model, queries, targets, train = tiny
    result = evaluate(model, queries, single(targets), train, EvaluationConfig(progress=False))
    assert result["queries"] == 5
    assert result["exclude_seen"] is False
    m = result["metrics"]
    # ranks 0, 1, 3, 11, 6; one target each, so recall@k = hit@k
    assert m["hit@5"] == m["recall@5"] == pytest.approx(3 / 5)
    assert m["hit@10"] == m["recall@10"] == pytest.approx(4 / 5)
    assert m["hit@20"] == pytest.approx(1.0)
    ndcg5 = 1 + 1 / math.log2(3) + 1 / math.log2(5)
    assert m["ndcg@5"] == pytest.approx(ndcg5 / 5)
    assert m["ndcg@10"] == pytest.approx((ndcg5 + 1 / 3) / 5)
    assert m["ndcg@20"] == pytest.approx((ndcg5 + 1 / 3 + 1 / math.log2(13)) / 5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 5)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 12 + 1 / 7) / 5)
    # Every top 10 holds a..j except q3's, which holds k (boosted) instead of j: 11 of 12.
    assert m["coverage@10"] == pytest.approx(11 / 12)
    # the per-query values behind paired intervals
    assert result["per_query"]["hit@10"].tolist() == [1, 1, 1, 0, 1]


def test_evaluate_slices_by_hand(tiny) -> None:
    model, queries, targets, train = tiny
    config = EvaluationConfig(progress=False)
    slices = evaluate(model, queries, single(targets), train, config)["slices"]
    counts = {name: s["queries"] for name, s in slices.items() if name != "thresholds"}
    assert counts == {
        "repeat": 1,
        "explore": 4,
        "cold": 1,
        "warm": 4,
        "long_tail": 4,
        "short_history": 3,
        "long_history": 2,
    }
    assert slices["thresholds"] == {"history_median": 2.0}
    # Slice metrics use the ranks of their own queries only.
    assert slices["cold"]["recall@20"] == 1.0 and slices["cold"]["recall@10"] == 0.0  # q3
    assert slices["warm"]["recall@10"] == 1.0  # q0 q1 q2 q4: ranks 0, 1, 3, 6
    assert slices["long_tail"]["recall@5"] == pytest.approx(2 / 4)  # q0 q2 q3 q4
    assert slices["repeat"]["recall@5"] == 1.0  # q2
    assert slices["explore"]["recall@10"] == pytest.approx(3 / 4)  # q0 q1 q3 q4
    assert slices["short_history"]["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 12) / 3)
    assert slices["long_history"]["mrr@20"] == pytest.approx((1 / 4 + 1 / 7) / 2)  # q2 q4


def test_evaluate_exclude_seen_by_hand(tiny) -> None:
    model, queries, targets, train = tiny
    config = EvaluationConfig(exclude_seen=True, progress=False)
    result = evaluate(model, queries, single(targets), train, config)
    assert result["exclude_seen"] is True
    # q0: a removed, b boosted -> 0. q1: d a -> 1. q2: the target c is seen, so filtered:
    # never ranked. q3: j removed -> 10. q4: a c d b removed: e f g -> 2.
    m = result["metrics"]
    assert m["hit@5"] == pytest.approx(3 / 5)
    assert m["hit@20"] == pytest.approx(4 / 5)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 3) / 5)
    assert result["slices"]["repeat"]["recall@20"] == 0.0


@pytest.mark.parametrize("max_scores", [1, 12, 30, 59])
def test_evaluate_chunking_matches_one_chunk(tiny, max_scores: int) -> None:
    # 12 items: max_scores 1 and 12 give chunks of one query, 30 of two, 59 of four.
    model, queries, targets, train = tiny
    for exclude_seen in (False, True):
        whole = evaluate(
            model, queries, single(targets), train, EvaluationConfig(exclude_seen, progress=False)
        )
        chunked = evaluate(
            model,
            queries,
            single(targets),
            train,
            EvaluationConfig(exclude_seen, max_scores=max_scores, progress=False),
        )
        assert chunked["metrics"] == whole["metrics"] and chunked["slices"] == whole["slices"]


def test_evaluate_rejects_mismatched_targets(tiny) -> None:
    model, queries, targets, train = tiny
    with pytest.raises(ValueError, match="5 queries but 4 target lists"):
        evaluate(model, queries, single(targets[:4]), train, EvaluationConfig(progress=False))


def test_evaluate_needs_a_fitted_model(tiny) -> None:
    _, queries, targets, train = tiny
    with pytest.raises(RuntimeError, match="not fitted"):
        evaluate(NextLetterModel(NextLetterConfig()), queries, single(targets), train)
