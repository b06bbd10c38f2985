"""Personal top-frequency by hand: the baskets of a history, the basket counts and the
popularity tie-break."""

from __future__ import annotations

import numpy as np
import pandas as pd

from starsrec.baselines.topfreq import TopFrequencyRecommender, history_baskets
from starsrec.data.dataset import Dataset, EventType
from starsrec.data.interactions import Catalogue, EventLog, Queries
from starsrec.data.validation import validate
from starsrec.recommender import TrainingData

ITEMS = list("abcdefgh")
TYPES = (EventType("purchase"), EventType("return", weight=0.5, target=False))


def shop(rows: list[tuple[str, str, str, str]]) -> tuple[EventLog, Catalogue]:
    """An event log of (user, item, timestamp, event type) rows over items a..h."""
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    items = pd.DataFrame({"item_id": ITEMS, "text": [f"item {x}" for x in ITEMS]})
    dataset = validate(Dataset("shop", events, items, TYPES))
    catalogue = Catalogue.from_items(dataset.items)
    return EventLog.from_dataset(dataset, catalogue), catalogue


def idx(items: str) -> list[int]:
    return [ITEMS.index(x) for x in items]


# u1's baskets: [a, b, a] (a on two lines) at 10:00, a return of c at 11:00 (no target
# item: not a basket), [a] at 12:00, [c] the next day. u2 bought d, d and e, popularity's
# tie-breakers.
U1 = [
    ("u1", "a", "2024-01-01 10:00", "purchase"),
    ("u1", "b", "2024-01-01 10:00", "purchase"),
    ("u1", "a", "2024-01-01 10:00", "purchase"),
    ("u1", "c", "2024-01-01 11:00", "return"),
    ("u1", "a", "2024-01-01 12:00", "purchase"),
    ("u1", "c", "2024-01-02 09:00", "purchase"),
]
U2 = [
    ("u2", "d", "2024-01-01 09:00", "purchase"),
    ("u2", "d", "2024-01-02 09:00", "purchase"),
    ("u2", "e", "2024-01-03 09:00", "purchase"),
]


def whole_histories(log: EventLog) -> Queries:
    return Queries.for_users(log, list(log.user_ids))


def test_history_baskets_are_distinct_target_items_per_timestamp() -> None:
    log, _ = shop(U1 + U2)
    baskets = history_baskets(whole_histories(log))
    np.testing.assert_array_equal(baskets.n_baskets, [3, 3])
    triples = list(zip(baskets.query, baskets.rank, baskets.item, strict=True))
    assert triples == [
        (0, 0, idx("a")[0]),
        (0, 0, idx("b")[0]),
        (0, 1, idx("a")[0]),
        (0, 2, idx("c")[0]),
        (1, 0, idx("d")[0]),
        (1, 1, idx("d")[0]),
        (1, 2, idx("e")[0]),
    ]


def test_top_frequency_counts_baskets_and_breaks_ties_by_popularity() -> None:
    log, catalogue = shop(U1 + U2)
    model = TopFrequencyRecommender().fit(TrainingData(log, catalogue))
    queries = whole_histories(log)
    counts = model.basket_counts(queries)
    np.testing.assert_array_equal(counts[0, idx("abcd")], [2, 1, 1, 0])  # a twice in basket 0
    ids, _ = model.recommend(queries[:1], k=5)
    # a (2 baskets); b and c (1 each) by popularity: a 4, b 1, c 1 (the return is no
    # target), so b before c by index as equals; then the unseen by popularity: d 2, e 1.
    assert ids[0].tolist() == ["a", "b", "c", "d", "e"]
    assert model.popularity[idx("c")[0]] == model.popularity[idx("b")[0]] == 1
    ids, _ = model.recommend(queries[1:], k=3)
    assert ids[0].tolist() == ["d", "e", "a"]  # d (2 baskets), e (1), then a, the popular


def test_top_frequency_ties_among_counts_follow_popularity() -> None:
    # u1 had b and c once each; b is the more popular (u2 bought it twice): b first.
    log, catalogue = shop(
        [
            ("u1", "c", "2024-01-01", "purchase"),
            ("u1", "b", "2024-01-02", "purchase"),
            ("u2", "b", "2024-01-01", "purchase"),
            ("u2", "b", "2024-01-02", "purchase"),
        ]
    )
    model = TopFrequencyRecommender().fit(TrainingData(log, catalogue))
    ids, _ = model.recommend(whole_histories(log)[:1], k=2)
    assert ids[0].tolist() == ["b", "c"]
