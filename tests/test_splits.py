"""Evaluation protocols on datasets small enough to split by hand, plus the history
invariant on the toy world."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from starsrec.data.dataset import DataError, Dataset, EventType, TemporalCuts
from starsrec.data.interactions import Queries, to_seconds
from starsrec.data.splits import Split, split_dataset
from starsrec.data.toyworld import make_toy_world
from starsrec.data.validation import validate

EVENT_TYPES = (EventType("purchase"), EventType("return", weight=0.0, target=False))
ITEMS = pd.DataFrame({"item_id": [f"i{n}" for n in range(1, 7)], "text": ["x"] * 6})


def make_dataset(rows: list[tuple[str, str, str, str]], cuts: TemporalCuts | None = None):
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    return validate(Dataset("tiny", events, ITEMS, EVENT_TYPES, temporal_cuts=cuts))


def described(split: Split, queries: Queries, targets: np.ndarray) -> list[tuple]:
    """(user id, target item id, history item ids) per query, in query order."""
    ids = split.catalogue.item_ids
    return [
        (
            str(split.log.user_ids[queries.user[q]]),
            str(ids[targets[q]]),
            [str(i) for i in ids[split.log.item[queries.history(q)]]],
        )
        for q in range(len(queries))
    ]


def train_by_user(split: Split) -> dict[str, list[str]]:
    train = split.train
    return {
        str(user): [str(split.catalogue.item_ids[i]) for i in train.item[lo:hi]]
        for user, lo, hi in zip(train.user_ids, train.offsets[:-1], train.offsets[1:], strict=True)
    }


def seconds(text: str) -> int:
    return int(to_seconds(pd.DatetimeIndex([text]))[0])


# --- leave-one-out ------------------------------------------------------------------------

LOO_ROWS = [
    # u_c first and with a tie: validate sorts users, and events at the same time keep
    # their source order, so i4 (listed after i3) is u_c's last purchase.
    ("u_c", "i3", "2024-01-02", "purchase"),
    ("u_c", "i4", "2024-01-02", "purchase"),
    ("u_c", "i2", "2024-01-01", "purchase"),
    # u_a: 4 purchases with returns in between and after.
    ("u_a", "i1", "2024-01-01", "purchase"),
    ("u_a", "i2", "2024-01-02", "purchase"),
    ("u_a", "i5", "2024-01-03", "return"),
    ("u_a", "i3", "2024-01-04", "purchase"),
    ("u_a", "i6", "2024-01-05", "return"),
    ("u_a", "i4", "2024-01-06", "purchase"),
    ("u_a", "i1", "2024-01-07", "return"),
    # u_b: only 2 purchases: not evaluated.
    ("u_b", "i1", "2024-01-01", "purchase"),
    ("u_b", "i2", "2024-01-02", "purchase"),
    ("u_b", "i3", "2024-01-03", "return"),
    # u_d: 5 events but only 2 are purchases: not evaluated, returns are never targets.
    ("u_d", "i1", "2024-01-01", "return"),
    ("u_d", "i2", "2024-01-02", "purchase"),
    ("u_d", "i3", "2024-01-03", "return"),
    ("u_d", "i4", "2024-01-04", "purchase"),
    ("u_d", "i5", "2024-01-05", "return"),
]


@pytest.fixture(scope="module")
def loo() -> Split:
    return split_dataset(make_dataset(LOO_ROWS), "leave-one-out")


def test_leave_one_out_targets_and_histories(loo: Split) -> None:
    assert loo.protocol == "leave-one-out"
    assert described(loo, loo.test, loo.test_target) == [
        ("u_a", "i4", ["i1", "i2", "i5", "i3", "i6"]),  # the return before it is history
        ("u_c", "i4", ["i2", "i3"]),
    ]
    assert described(loo, loo.validation, loo.validation_target) == [
        ("u_a", "i3", ["i1", "i2", "i5"]),
        ("u_c", "i3", ["i2"]),
    ]


def test_leave_one_out_query_times_are_target_times(loo: Split) -> None:
    assert loo.test.time.tolist() == [seconds("2024-01-06"), seconds("2024-01-02")]
    assert loo.validation.time.tolist() == [seconds("2024-01-04"), seconds("2024-01-02")]


def test_leave_one_out_train_excludes_validation_and_test(loo: Split) -> None:
    assert train_by_user(loo) == {
        "u_a": ["i1", "i2", "i5"],  # not i3 (validation), i6, i4 (test) nor the late return
        "u_b": ["i1", "i2", "i3"],  # fewer than 3 purchases: all of it is train
        "u_c": ["i2"],
        "u_d": ["i1", "i2", "i3", "i4", "i5"],
    }
    assert loo.train.size == 12
    assert loo.train_end == seconds("2024-01-05")  # u_d's last return


def test_leave_one_out_with_no_evaluable_user() -> None:
    split = split_dataset(make_dataset(LOO_ROWS[10:]), "leave-one-out")  # u_b and u_d only
    assert len(split.test) == len(split.validation) == 0
    assert len(split.test_target) == len(split.validation_target) == 0
    assert split.train.size == 8


# --- temporal -----------------------------------------------------------------------------

TEMPORAL_ROWS = [
    ("u_a", "i1", "2024-01-10", "purchase"),
    ("u_a", "i2", "2024-01-31 23:59:59", "purchase"),  # last second before the cut: train
    ("u_a", "i3", "2024-02-01 00:00:00", "purchase"),  # exactly at the cut: validation
    ("u_a", "i4", "2024-02-05", "purchase"),
    ("u_a", "i5", "2024-02-10", "return"),
    ("u_a", "i6", "2024-03-01", "purchase"),
    ("u_a", "i1", "2024-03-02", "purchase"),
    # u_b's first event has no history, so its first target is the second purchase.
    ("u_b", "i2", "2024-02-03", "purchase"),
    ("u_b", "i3", "2024-02-04", "purchase"),
    # u_c: a return is history but no target.
    ("u_c", "i4", "2024-02-02", "return"),
    ("u_c", "i5", "2024-03-05", "purchase"),
    # u_d: one purchase and nothing before it: never a target.
    ("u_d", "i6", "2024-03-10", "purchase"),
]
CUTS = TemporalCuts(validation="2024-02-01", test="2024-03-01")


@pytest.fixture(scope="module")
def temporal_dataset() -> Dataset:
    return make_dataset(TEMPORAL_ROWS, CUTS)


def test_temporal_first_target_per_user(temporal_dataset: Dataset) -> None:
    split = split_dataset(temporal_dataset, "temporal")  # the dataset's own cuts
    assert split.protocol == "temporal"
    assert described(split, split.validation, split.validation_target) == [
        ("u_a", "i3", ["i1", "i2"]),
        ("u_b", "i3", ["i2"]),
    ]
    assert described(split, split.test, split.test_target) == [
        # a test target's history includes the validation-period events
        ("u_a", "i6", ["i1", "i2", "i3", "i4", "i5"]),
        ("u_c", "i5", ["i4"]),
    ]
    assert split.validation.time.tolist() == [seconds("2024-02-01"), seconds("2024-02-04")]
    assert split.test.time.tolist() == [seconds("2024-03-01"), seconds("2024-03-05")]


def test_temporal_train_is_strictly_before_validation_cut(temporal_dataset: Dataset) -> None:
    split = split_dataset(temporal_dataset, "temporal")
    assert train_by_user(split) == {"u_a": ["i1", "i2"], "u_b": [], "u_c": [], "u_d": []}
    assert split.train_end == seconds("2024-01-31 23:59:59")


def test_temporal_max_targets_per_user(temporal_dataset: Dataset) -> None:
    split = split_dataset(temporal_dataset, "temporal", max_targets_per_user=2)
    assert described(split, split.validation, split.validation_target) == [
        ("u_a", "i3", ["i1", "i2"]),
        ("u_a", "i4", ["i1", "i2", "i3"]),
        ("u_b", "i3", ["i2"]),  # its only eligible target
    ]
    assert described(split, split.test, split.test_target) == [
        ("u_a", "i6", ["i1", "i2", "i3", "i4", "i5"]),
        ("u_a", "i1", ["i1", "i2", "i3", "i4", "i5", "i6"]),
        ("u_c", "i5", ["i4"]),
    ]
    many = split_dataset(temporal_dataset, "temporal", max_targets_per_user=100)
    assert len(many.validation) == 3  # nothing more to take
    assert len(many.test) == 3


def test_temporal_explicit_cuts_override_the_dataset(temporal_dataset: Dataset) -> None:
    split = split_dataset(
        temporal_dataset, "temporal", validation_cut="2024-02-04", test_cut="2024-03-02"
    )
    assert described(split, split.validation, split.validation_target) == [
        ("u_a", "i4", ["i1", "i2", "i3"]),
        ("u_b", "i3", ["i2"]),
    ]
    assert described(split, split.test, split.test_target) == [
        ("u_a", "i1", ["i1", "i2", "i3", "i4", "i5", "i6"]),
        ("u_c", "i5", ["i4"]),
    ]
    assert train_by_user(split)["u_b"] == ["i2"]  # Feb 3 is now before the validation cut


@pytest.mark.parametrize("protocol", ["temporal", "next-basket"])
@pytest.mark.parametrize(
    ("validation_cut", "test_cut", "problem"),
    [
        ("2025-01-01", "2025-02-01", "between the cuts 2025-01-01 and 2025-02-01"),
        ("2024-01-01", "2024-01-02", "no events before the validation cut 2024-01-01"),
        ("2024-01-20", "2025-02-01", "from the test cut 2025-02-01 on"),
    ],
)
def test_cuts_leaving_a_window_empty_are_refused(
    protocol: str, validation_cut: str, test_cut: str, problem: str
) -> None:
    # Models would fit on nothing or be scored over no query: one error saying what to move.
    with pytest.raises(DataError, match=problem) as error:
        split_dataset(
            make_dataset(TEMPORAL_ROWS), protocol, validation_cut=validation_cut, test_cut=test_cut
        )
    assert "its events run from 2024-01-10" in str(error.value)
    assert "starsrec data summary" in str(error.value)


@pytest.mark.parametrize(
    ("validation_cut", "test_cut"), [("2024-03-01", "2024-02-01"), ("2024-02-01", "2024-02-01")]
)
def test_temporal_bad_cut_order_raises(
    temporal_dataset: Dataset, validation_cut: str, test_cut: str
) -> None:
    with pytest.raises(ValueError, match="must be before test cut"):
        split_dataset(
            temporal_dataset, "temporal", validation_cut=validation_cut, test_cut=test_cut
        )


def test_temporal_bad_arguments_raise(temporal_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="max_targets_per_user must be >= 1"):
        split_dataset(temporal_dataset, "temporal", max_targets_per_user=0)
    with pytest.raises(ValueError, match="no default temporal cut dates"):
        split_dataset(make_dataset(TEMPORAL_ROWS), "temporal")
    with pytest.raises(ValueError, match="unknown protocol 'random'"):
        split_dataset(temporal_dataset, "random")


# --- properties on the toy world ----------------------------------------------------------


def split_arrays(split: Split) -> dict[str, np.ndarray]:
    out = {}
    for name in ("train", "log"):
        log = getattr(split, name)
        for field in ("user", "item", "timestamp", "event_type", "offsets", "user_ids"):
            out[f"{name}.{field}"] = getattr(log, field)
    for name in ("validation", "test"):
        queries = getattr(split, name)
        for field in ("start", "end", "time", "user"):
            out[f"{name}.{field}"] = getattr(queries, field)
        out[f"{name}_target"] = getattr(split, f"{name}_target")
    out["catalogue"] = split.catalogue.item_ids
    return out


@pytest.mark.parametrize("protocol", ["leave-one-out", "temporal"])
def test_splits_are_deterministic(protocol: str) -> None:
    first = split_arrays(split_dataset(make_toy_world(n_users=60, seed=3), protocol))
    second = split_arrays(split_dataset(make_toy_world(n_users=60, seed=3), protocol))
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@pytest.mark.parametrize("protocol", ["leave-one-out", "temporal"])
def test_histories_are_exactly_the_events_before_the_target(protocol: str) -> None:
    world = make_toy_world(n_users=80, noise=0.2, seed=1)
    split = split_dataset(world, protocol, max_targets_per_user=2)
    log = split.log
    assert len(split.validation) >= 10 and len(split.test) >= 10
    for queries, targets in (
        (split.validation, split.validation_target),
        (split.test, split.test_target),
    ):
        # Each history starts at the user's first event and stops right before the target
        # row: the target event is log row `end`, of the query's user, at the query time.
        np.testing.assert_array_equal(queries.start, log.offsets[queries.user])
        np.testing.assert_array_equal(log.user[queries.end], queries.user)
        np.testing.assert_array_equal(log.item[queries.end], targets)
        np.testing.assert_array_equal(log.timestamp[queries.end], queries.time)
        assert log.is_target[queries.end].all()
        assert (queries.lengths >= 1).all()
    if protocol == "leave-one-out":
        # Train keeps exactly the evaluated users' events before their validation target.
        kept = split.train.offsets[1:] - split.train.offsets[:-1]
        v = split.validation
        np.testing.assert_array_equal(kept[v.user], v.end - v.start)
        np.testing.assert_array_equal(split.test.start, v.start)
        assert (split.test.end > v.end).all()
    else:
        cut = seconds("2024-01-30")
        assert (split.train.timestamp < cut).all()
        assert split.train.size == int((log.timestamp < cut).sum())
        assert (split.validation.time >= cut).all()
        assert (split.validation.time < seconds("2024-02-03")).all()
        assert (split.test.time >= seconds("2024-02-03")).all()


def test_default_protocol_follows_the_log() -> None:
    """Shop logs are measured on next baskets, rating logs on the next item."""
    from starsrec.data.splits import default_protocol

    shop = make_toy_world(n_users=20)
    assert not shop.exclude_seen and shop.temporal_cuts is not None
    assert default_protocol(shop) == "next-basket"
    assert default_protocol(type(shop)(**{**vars(shop), "temporal_cuts": None})) == "last-basket"
    ratings = type(shop)(**{**vars(shop), "exclude_seen": True})
    assert default_protocol(ratings) == "leave-one-out"
