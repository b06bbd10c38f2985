"""Baskets and the next-basket protocols on logs small enough to split by hand, plus the
history invariant on a seeded random log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from starsrec.data.baskets import BasketSplit, BasketTargets, basket_ids, last_baskets, next_basket
from starsrec.data.dataset import Dataset, EventType
from starsrec.data.interactions import Catalogue, EventLog, Queries, to_seconds
from starsrec.data.validation import validate

EVENT_TYPES = (EventType("purchase"), EventType("return", weight=0.5, target=False))
ITEMS = pd.DataFrame({"item_id": [f"i{n}" for n in range(1, 7)], "text": ["x"] * 6})
VALIDATION_CUT, TEST_CUT = "2024-02-01", "2024-03-01"


def make_log(rows: list[tuple]) -> tuple[Dataset, EventLog, Catalogue]:
    columns = ["user_id", "item_id", "timestamp", "event_type", "order_id"][: len(rows[0])]
    dataset = validate(Dataset("tiny", pd.DataFrame(rows, columns=columns), ITEMS, EVENT_TYPES))
    catalogue = Catalogue.from_items(dataset.items)
    return dataset, EventLog.from_dataset(dataset, catalogue), catalogue


def seconds(text: str) -> int:
    return int(to_seconds(pd.DatetimeIndex([text]))[0])


def described(split: BasketSplit, queries: Queries, targets: BasketTargets) -> list[tuple]:
    """(user id, target item ids, history item ids) per query, in query order."""
    ids = split.catalogue.item_ids
    return [
        (
            str(split.log.user_ids[queries.user[q]]),
            [str(i) for i in ids[targets.of(q)]],
            [str(i) for i in ids[split.log.item[queries.history(q)]]],
        )
        for q in range(len(queries))
    ]


def slices(split: BasketSplit) -> list[tuple[Queries, BasketTargets]]:
    return [
        (split.validation, split.validation_targets),
        (split.test, split.test_targets),
        (split.validation_new_users, split.validation_new_users_targets),
        (split.test_new_users, split.test_new_users_targets),
    ]


def assert_no_leak(split: BasketSplit) -> None:
    """Every query's history is exactly its user's rows before its basket, no row of the
    basket or later; its targets are the distinct target items of that basket."""
    log, basket = split.log, split.basket
    for queries, targets in slices(split):
        assert targets.offsets.shape == (len(queries) + 1,)
        for q in range(len(queries)):
            user, start, end = int(queries.user[q]), int(queries.start[q]), int(queries.end[q])
            own = basket[end]
            assert start == log.offsets[user] and end < log.offsets[user + 1]
            assert (basket[start:end] < own).all()
            assert (end == log.offsets[user]) or basket[end - 1] != own  # basket opens at end
            assert queries.time[q] == log.timestamp[end]
            rows = np.flatnonzero((basket == own) & log.is_target)
            assert targets.of(q).tolist() == sorted(set(log.item[rows].tolist()))
            assert len(targets.of(q)) >= 1


# --- basket_ids ---------------------------------------------------------------------------


def test_basket_ids_by_timestamp_and_by_key() -> None:
    _, log, _ = make_log(
        [
            ("u_a", "i1", "2024-01-01 10:00", "purchase", "o1"),
            ("u_a", "i2", "2024-01-01 10:00", "purchase", "o1"),
            ("u_a", "i3", "2024-01-01 10:00", "purchase", "o2"),  # same minute, next order
            ("u_a", "i4", "2024-01-01 10:05", "purchase", "o2"),  # a session spans minutes
            ("u_b", "i1", "2024-01-01 10:05", "purchase", "o2"),  # same key, other user
            ("u_b", "i2", "2024-01-02 09:00", "return", "o3"),
        ]
    )
    assert basket_ids(log).tolist() == [0, 0, 0, 1, 2, 3]
    assert basket_ids(log, np.array(["o1", "o1", "o2", "o2", "o2", "o3"])).tolist() == [
        0,
        0,
        1,
        1,
        2,
        3,
    ]
    assert basket_ids(log, np.array([7, 7, 8, 8, 8, 9])).dtype == np.int64


def test_basket_ids_rejects_bad_keys_and_unsorted_logs() -> None:
    _, log, _ = make_log([("u_a", "i1", "2024-01-01", "purchase")] * 2)
    with pytest.raises(ValueError, match="shape"):
        basket_ids(log, np.array(["o1"]))
    with pytest.raises(ValueError, match="missing"):
        basket_ids(log, np.array(["o1", None], dtype=object))
    backwards = EventLog(
        user=np.array([0, 0]),
        item=np.array([0, 1]),
        timestamp=np.array([5, 4]),
        event_type=np.zeros(2, dtype=np.int16),
        offsets=np.array([0, 2]),
        user_ids=np.array(["u"]),
        event_types=EVENT_TYPES,
    )
    with pytest.raises(ValueError, match="time order"):
        basket_ids(backwards)


# --- next_basket --------------------------------------------------------------------------

ROWS = [
    # u_a: returning customer; i1 is bought again and again (twice in one invoice).
    ("u_a", "i1", "2024-01-10 10:00", "purchase"),  # A1: train
    ("u_a", "i2", "2024-01-10 10:00", "purchase"),
    ("u_a", "i3", "2024-02-05 09:00", "purchase"),  # A2: validation
    ("u_a", "i1", "2024-02-05 09:00", "purchase"),
    ("u_a", "i1", "2024-03-02 12:00", "purchase"),  # A3: test, i1 on two lines
    ("u_a", "i4", "2024-03-02 12:00", "purchase"),
    ("u_a", "i1", "2024-03-02 12:00", "purchase"),
    ("u_a", "i2", "2024-03-05 08:00", "return"),  # A4: returns only, no query
    ("u_a", "i5", "2024-03-10 08:00", "purchase"),  # A5: test, with a return in the basket
    ("u_a", "i2", "2024-03-10 08:00", "return"),
    # u_b: one train basket, one test basket.
    ("u_b", "i2", "2024-01-20 15:00", "purchase"),
    ("u_b", "i3", "2024-01-20 15:00", "purchase"),
    ("u_b", "i6", "2024-03-03 10:00", "purchase"),
    # u_c: new in the test window; its second basket is a returning-user query.
    ("u_c", "i1", "2024-03-04 11:00", "purchase"),
    ("u_c", "i2", "2024-03-04 11:00", "purchase"),
    ("u_c", "i3", "2024-03-08 11:00", "purchase"),
    # u_d: new in the validation window, never back.
    ("u_d", "i4", "2024-02-10 13:00", "purchase"),
    # u_e: train only.
    ("u_e", "i5", "2024-01-05 09:00", "purchase"),
    ("u_e", "i6", "2024-01-06 09:00", "purchase"),
]


@pytest.fixture(scope="module")
def split() -> BasketSplit:
    _, log, catalogue = make_log(ROWS)
    return next_basket(log, catalogue, VALIDATION_CUT, TEST_CUT)


def test_no_query_sees_its_own_basket_or_later(split: BasketSplit) -> None:
    assert_no_leak(split)


def test_every_window_basket_of_a_returning_user_is_a_query(split: BasketSplit) -> None:
    assert split.protocol == "next-basket"
    assert described(split, split.validation, split.validation_targets) == [
        ("u_a", ["i1", "i3"], ["i1", "i2"]),
    ]
    assert described(split, split.test, split.test_targets) == [
        ("u_a", ["i1", "i4"], ["i1", "i2", "i3", "i1"]),  # the validation basket is history
        # the earlier test basket and the returns-only one are history; its own return is not
        ("u_a", ["i5"], ["i1", "i2", "i3", "i1", "i1", "i4", "i1", "i2"]),
        ("u_b", ["i6"], ["i2", "i3"]),
        ("u_c", ["i3"], ["i1", "i2"]),  # second basket: a returning user, not the first only
    ]
    assert split.test.time.tolist() == [
        seconds(t) for t in ("2024-03-02 12:00", "2024-03-10 08:00", "2024-03-03 10:00")
    ] + [seconds("2024-03-08 11:00")]


def test_new_user_baskets_land_in_their_slice(split: BasketSplit) -> None:
    assert described(split, split.validation_new_users, split.validation_new_users_targets) == [
        ("u_d", ["i4"], []),
    ]
    assert described(split, split.test_new_users, split.test_new_users_targets) == [
        ("u_c", ["i1", "i2"], []),
    ]
    headline = set(split.basket[np.r_[split.validation.end, split.test.end]].tolist())
    new = split.basket[np.r_[split.validation_new_users.end, split.test_new_users.end]]
    assert headline.isdisjoint(new.tolist())


def test_targets_are_distinct_target_items(split: BasketSplit) -> None:
    assert split.test_targets.sizes.tolist() == [2, 1, 1, 1]
    assert split.test_targets.offsets.tolist() == [0, 2, 3, 4, 5]
    offsets, items = split.test_targets  # the pair the basket metrics take
    assert offsets.dtype == items.dtype == np.int64


def test_train_holds_only_rows_before_the_validation_cut(split: BasketSplit) -> None:
    train = split.train
    assert train.size == 6  # A1 (2), B1 (2), u_e (2)
    assert (train.timestamp < seconds(VALIDATION_CUT)).all()
    assert train.n_users == split.log.n_users  # u_c, u_d kept, with no events
    assert split.train_end == seconds("2024-01-20 15:00")


def test_cuts_in_seconds_match_date_strings() -> None:
    _, log, catalogue = make_log(ROWS)
    by_seconds = next_basket(log, catalogue, seconds(VALIDATION_CUT), seconds(TEST_CUT))
    by_dates = next_basket(log, catalogue, VALIDATION_CUT, TEST_CUT)
    for (q1, t1), (q2, t2) in zip(slices(by_seconds), slices(by_dates), strict=True):
        assert q1.end.tolist() == q2.end.tolist() and t1.items.tolist() == t2.items.tolist()
    with pytest.raises(ValueError, match="before test cut"):
        next_basket(log, catalogue, TEST_CUT, VALIDATION_CUT)


def test_a_key_splits_baskets_that_share_a_timestamp() -> None:
    rows = [
        ("u_a", "i1", "2024-01-10 10:00", "purchase", "o1"),
        ("u_a", "i2", "2024-03-02 12:00", "purchase", "o2"),
        ("u_a", "i3", "2024-03-02 12:00", "purchase", "o3"),  # same time, another order
    ]
    dataset, log, catalogue = make_log(rows)
    key = dataset.events["order_id"].to_numpy()
    keyed = next_basket(log, catalogue, VALIDATION_CUT, TEST_CUT, key=key)
    assert described(keyed, keyed.test, keyed.test_targets) == [
        ("u_a", ["i2"], ["i1"]),
        ("u_a", ["i3"], ["i1", "i2"]),
    ]
    assert_no_leak(keyed)
    merged = next_basket(log, catalogue, VALIDATION_CUT, TEST_CUT)
    assert described(merged, merged.test, merged.test_targets) == [("u_a", ["i2", "i3"], ["i1"])]


# --- last_baskets -------------------------------------------------------------------------

RELATIVE_ROWS = [
    # u_a: four orders; o3 validation, o4 test.
    ("u_a", "i1", "2017-06-01 08:00", "purchase", "o1"),
    ("u_a", "i2", "2017-06-01 08:00", "purchase", "o1"),
    ("u_a", "i2", "2017-06-08 09:00", "purchase", "o2"),
    ("u_a", "i3", "2017-06-08 09:00", "purchase", "o2"),
    ("u_a", "i1", "2017-06-15 10:00", "purchase", "o3"),
    ("u_a", "i4", "2017-06-26 10:00", "purchase", "o4"),
    ("u_a", "i1", "2017-06-26 10:00", "purchase", "o4"),
    # u_b: two orders in the same hour (days_since_prior_order 0): only a key tells them apart.
    ("u_b", "i5", "2017-06-10 08:00", "purchase", "o5"),
    ("u_b", "i6", "2017-06-27 18:00", "purchase", "o6"),
    ("u_b", "i2", "2017-06-27 18:00", "purchase", "o7"),
    ("u_b", "i3", "2017-06-27 18:00", "purchase", "o7"),
    # u_c: two orders: too few, all train.
    ("u_c", "i1", "2017-06-20 08:00", "purchase", "o8"),
    ("u_c", "i2", "2017-06-29 08:00", "purchase", "o9"),
    # u_d: a returns-only basket between validation and test is test history, not train.
    ("u_d", "i1", "2017-06-02 08:00", "purchase", "o10"),
    ("u_d", "i2", "2017-06-12 08:00", "purchase", "o11"),
    ("u_d", "i3", "2017-06-20 08:00", "return", "o12"),
    ("u_d", "i4", "2017-06-28 08:00", "purchase", "o13"),
]


def test_last_baskets_on_a_relative_time_log() -> None:
    dataset, log, catalogue = make_log(RELATIVE_ROWS)
    split = last_baskets(log, catalogue, key=dataset.events["order_id"].to_numpy())
    assert_no_leak(split)
    assert split.protocol == "last-basket"
    assert described(split, split.validation, split.validation_targets) == [
        ("u_a", ["i1"], ["i1", "i2", "i2", "i3"]),
        ("u_b", ["i6"], ["i5"]),
        ("u_d", ["i2"], ["i1"]),
    ]
    assert described(split, split.test, split.test_targets) == [
        ("u_a", ["i1", "i4"], ["i1", "i2", "i2", "i3", "i1"]),
        ("u_b", ["i2", "i3"], ["i5", "i6"]),  # same timestamp, earlier order: history
        ("u_d", ["i4"], ["i1", "i2", "i3"]),
    ]
    ids = catalogue.item_ids
    train = {
        str(u): [str(i) for i in ids[split.train.item[lo:hi]]]
        for u, lo, hi in zip(
            split.train.user_ids, split.train.offsets[:-1], split.train.offsets[1:], strict=True
        )
    }
    assert train == {
        "u_a": ["i1", "i2", "i2", "i3"],
        "u_b": ["i5"],
        "u_c": ["i1", "i2"],
        "u_d": ["i1"],
    }
    assert len(split.validation_new_users) == len(split.test_new_users) == 0
    assert split.test_new_users_targets.offsets.tolist() == [0]


def test_last_baskets_without_a_key_merges_same_time_orders() -> None:
    _, log, catalogue = make_log(RELATIVE_ROWS)
    split = last_baskets(log, catalogue)
    # u_b's o6 and o7 are one basket now: two baskets, so u_b is not evaluated.
    assert [str(log.user_ids[u]) for u in split.test.user] == ["u_a", "u_d"]
    assert_no_leak(split)


# --- invariant on a random log ------------------------------------------------------------


def random_log(seed: int, users: int = 40) -> tuple[EventLog, np.ndarray]:
    """A log of baskets of 1-4 lines per user (some sharing a timestamp by chance), each line
    a purchase or (1 in 5) a return, with an order key."""
    rng = np.random.default_rng(seed)
    user, item, stamp, kind, key = [], [], [], [], []
    order = 0
    for u in range(users):
        t = int(rng.integers(0, 50)) * 86_400
        for _ in range(int(rng.integers(1, 7))):
            t += int(rng.integers(0, 3)) * 86_400  # gap 0: two orders at one timestamp
            lines = int(rng.integers(1, 5))
            user += [u] * lines
            item += rng.integers(0, 6, lines).tolist()
            stamp += [t] * lines
            kind += (rng.random(lines) < 0.2).astype(int).tolist()
            key += [order] * lines
            order += 1
    counts = np.bincount(user, minlength=users)
    log = EventLog(
        user=np.array(user, dtype=np.int64),
        item=np.array(item, dtype=np.int64),
        timestamp=np.array(stamp, dtype=np.int64),
        event_type=np.array(kind, dtype=np.int16),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        user_ids=np.array([f"u{u:02d}" for u in range(users)]),
        event_types=EVENT_TYPES,
    )
    return log, np.array(key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_leak_and_every_window_basket_counted_on_a_random_log(seed: int) -> None:
    log, key = random_log(seed)
    _, _, catalogue = make_log(ROWS)
    cut_v, cut_t = 40 * 86_400, 50 * 86_400
    for k in (None, key):
        split = next_basket(log, catalogue, cut_v, cut_t, key=k)
        assert_no_leak(split)
        assert (split.train.timestamp < cut_v).all()
        assert split.train.size == int((log.timestamp < cut_v).sum())
        basket = split.basket
        first = np.flatnonzero(np.diff(basket, prepend=-1))
        targeted = np.bincount(basket, weights=log.is_target.astype(float)) > 0
        returning = first != log.offsets[log.user[first]]
        opened = log.timestamp[first]
        window = targeted & (opened >= cut_t)
        assert len(split.test) == int((window & returning).sum())
        assert len(split.test_new_users) == int((window & ~returning).sum())
        assert_no_leak(last_baskets(log, catalogue, key=k))
