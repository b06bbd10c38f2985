"""The within-basket protocols (in-session, basket-completion) on a log small enough to
check by hand: the history is the user's earlier baskets plus the asked basket's session,
never the target's own lines or anything later."""

from __future__ import annotations

import numpy as np
import pytest

from starsrec.data.baskets import next_basket
from starsrec.data.sessions import BASKET_COMPLETION, IN_SESSION, within_basket
from starsrec.data.splits import Split, within_baskets
from test_baskets import TEST_CUT, VALIDATION_CUT, make_log

# u1: a training basket, then a test basket i2 i3 i4 i3 (i3 twice: two invoice lines).
# u2: a training basket, then a one-item test basket (too small to ask).
# u3: a validation basket i1 i5, then a test basket i6 i1 i2.
ROWS = [
    ("u1", "i1", "2024-01-10", "purchase"),
    ("u1", "i2", "2024-03-05", "purchase"),
    ("u1", "i3", "2024-03-05", "purchase"),
    ("u1", "i4", "2024-03-05", "purchase"),
    ("u1", "i3", "2024-03-05", "purchase"),
    ("u2", "i1", "2024-01-12", "purchase"),
    ("u2", "i5", "2024-03-06", "purchase"),
    ("u3", "i4", "2024-01-15", "purchase"),
    ("u3", "i1", "2024-02-10", "purchase"),
    ("u3", "i5", "2024-02-10", "purchase"),
    ("u3", "i6", "2024-03-07", "purchase"),
    ("u3", "i1", "2024-03-07", "purchase"),
    ("u3", "i2", "2024-03-07", "purchase"),
]


@pytest.fixture(scope="module")
def baskets():
    _, log, catalogue = make_log(ROWS)
    return next_basket(log, catalogue, VALIDATION_CUT, TEST_CUT)


def asked(split: Split, part: str) -> list[tuple[str, str, list[str]]]:
    """(user, target item, history items) per query of `part`."""
    queries = getattr(split, part)
    targets = getattr(split, f"{part}_target")
    ids = split.catalogue.item_ids
    return [
        (
            str(split.log.user_ids[queries.user[q]]),
            str(ids[targets[q]]),
            [str(i) for i in ids[split.log.item[queries.history(q)]]],
        )
        for q in range(len(queries))
    ]


@pytest.mark.parametrize("seed", range(5))
def test_in_session_asks_a_later_new_item_given_the_earlier_ones(baskets, seed) -> None:
    split = within_baskets(baskets, IN_SESSION, seed)
    assert split.protocol == IN_SESSION and split.train.size == baskets.train.size
    test = dict((user, (target, history)) for user, target, history in asked(split, "test"))
    assert set(test) == {"u1", "u3"}  # u2's basket has one item: nothing to ask
    target, history = test["u1"]
    # a position after the first whose item is new to the basket: i3 (first line) or i4
    assert (target, history) in [("i3", ["i1", "i2"]), ("i4", ["i1", "i2", "i3"])]
    target, history = test["u3"]
    assert (target, history) in [
        ("i1", ["i4", "i1", "i5", "i6"]),
        ("i2", ["i4", "i1", "i5", "i6", "i1"]),
    ]
    (validation,) = asked(split, "validation")
    assert validation == ("u3", "i5", ["i4", "i1"])


@pytest.mark.parametrize("seed", range(5))
def test_basket_completion_holds_out_one_item_and_every_line_of_it(baskets, seed) -> None:
    split = within_baskets(baskets, BASKET_COMPLETION, seed)
    for user, target, history in asked(split, "test"):
        basket = {"u1": ["i2", "i3", "i4"], "u3": ["i6", "i1", "i2"]}[user]
        before = {"u1": ["i1"], "u3": ["i4", "i1", "i5"]}[user]
        session = history[len(before) :]
        # earlier baskets whole (u3's validation basket may be reordered: it was asked too)
        assert sorted(history[: len(before)]) == sorted(before)
        assert target in basket and target not in session  # both i3 lines held out
        assert sorted(set(session)) == sorted(set(basket) - {target})
    # the reordering stays inside baskets: same rows per (user, timestamp)
    log, original = split.log, baskets.log
    keys = lambda lg: sorted(zip(lg.user, lg.timestamp, lg.item, strict=True))  # noqa: E731
    assert keys(log) == keys(original)


def test_seeds_change_the_asked_items_deterministically(baskets) -> None:
    def targets(seed: int) -> tuple[str, ...]:
        split = within_baskets(baskets, BASKET_COMPLETION, seed)
        return tuple(target for _, target, _ in asked(split, "test"))

    assert targets(3) == targets(3)
    assert len({targets(seed) for seed in range(20)}) > 1


def test_unknown_protocol(baskets) -> None:
    with pytest.raises(ValueError, match="in-session"):
        within_basket(baskets, "next-item")


def test_split_dataset_offers_both(baskets) -> None:
    from starsrec.data.splits import PROTOCOLS, split_dataset

    dataset, _, _ = make_log(ROWS)
    dataset = type(dataset)(**{**vars(dataset), "temporal_cuts": None})
    split = split_dataset(dataset, IN_SESSION)  # no cut dates: on the last baskets
    assert {IN_SESSION, BASKET_COMPLETION} <= set(PROTOCOLS)
    assert isinstance(split, Split) and "last-basket" in split.description
    assert np.all(split.test.end > split.test.start)
