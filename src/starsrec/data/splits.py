"""Evaluation protocols (DESIGN section 3): leave-one-out and a global temporal split, plus
the basket protocols of `starsrec.data.baskets` (next-basket by calendar cuts, last-basket
per user), which produce a `BasketSplit` whose targets are whole baskets, and the
within-basket ones of `starsrec.data.sessions` (in-session, basket-completion).

Leave-one-out and temporal produce a `Split`: the events a model may fit on, and validation
and test queries whose histories are slices of the full event log ending just before the
target event. So a target's history holds everything the user did before it (for a test target, the
validation-period events too), exactly as a live system would see it; the model weights
only ever learn from `train`. Both are deterministic: no randomness is involved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from starsrec.data.baskets import (
    LAST_BASKET,
    NEXT_BASKET,
    BasketSplit,
    last_baskets,
    next_basket,
)
from starsrec.data.dataset import BASKET_COLUMNS, DataError, Dataset
from starsrec.data.interactions import Catalogue, EventLog, Queries, to_seconds
from starsrec.data.sessions import SESSION_PROTOCOLS, within_basket

LEAVE_ONE_OUT = "leave-one-out"
TEMPORAL = "temporal"
PROTOCOLS = (LEAVE_ONE_OUT, TEMPORAL, NEXT_BASKET, LAST_BASKET, *SESSION_PROTOCOLS)


@dataclass(frozen=True)
class Split:
    """Train events plus validation and test queries with their target items."""

    protocol: str
    catalogue: Catalogue
    log: EventLog  # every event; queries slice it
    train: EventLog  # the events models fit on
    validation: Queries
    validation_target: np.ndarray  # (Qv,) item index
    test: Queries
    test_target: np.ndarray  # (Qt,) item index
    description: str

    @property
    def train_end(self) -> int:
        """Timestamp (seconds) of the last training event."""
        return int(self.train.timestamp.max()) if self.train.size else 0


def default_protocol(dataset: Dataset) -> str:
    """The protocol that measures the task a dataset's users face: the next basket for shop
    logs (repeats allowed) by their cut dates or else each user's last basket, the next item
    (leave-one-out, the literature's protocol) for rating logs."""
    if dataset.exclude_seen:
        return LEAVE_ONE_OUT
    return NEXT_BASKET if dataset.temporal_cuts is not None else LAST_BASKET


def split_dataset(
    dataset: Dataset,
    protocol: str,
    *,
    validation_cut: str | None = None,
    test_cut: str | None = None,
    max_targets_per_user: int = 1,
) -> Split | BasketSplit:
    """Split `dataset` by `protocol` (one of `PROTOCOLS`).

    For the temporal and next-basket protocols the cut dates default to the dataset's own
    (`dataset.temporal_cuts`); `max_targets_per_user` bounds how many of a user's
    post-cut target events the temporal protocol evaluates (the earliest ones). The basket
    protocols (`starsrec.data.baskets`) read baskets from a `BASKET_COLUMNS` column when the
    events have one.
    """
    catalogue = Catalogue.from_items(dataset.items)
    log = EventLog.from_dataset(dataset, catalogue)
    if protocol == LEAVE_ONE_OUT:
        return leave_one_out(log, catalogue)
    if protocol in SESSION_PROTOCOLS:
        # On the baskets of the dataset's basket protocol: by its cut dates where it has them.
        baskets = LAST_BASKET if dataset.temporal_cuts is None else NEXT_BASKET
        return within_baskets(split_dataset(dataset, baskets), protocol)
    if protocol == LAST_BASKET:
        return last_baskets(log, catalogue, basket_key(dataset))
    if protocol in (TEMPORAL, NEXT_BASKET):
        cuts = dataset.temporal_cuts
        validation_cut = validation_cut or (cuts.validation if cuts else None)
        test_cut = test_cut or (cuts.test if cuts else None)
        if validation_cut is None or test_cut is None:
            raise ValueError(
                f"dataset {dataset.name!r} has no default temporal cut dates, which the "
                f"{protocol} protocol needs: add "
                '"temporal_cuts": {"validation": "2011-10-15", "test": "2011-11-01"} to the '
                "dataset.json of your files and prepare them again (`starsrec data summary "
                "DIR` prints the events per week to choose them from), or pass "
                "validation_cut and test_cut"
            )
        split: Split | BasketSplit
        if protocol == NEXT_BASKET:
            split = next_basket(log, catalogue, validation_cut, test_cut, basket_key(dataset))
        else:
            split = temporal(log, catalogue, validation_cut, test_cut, max_targets_per_user)
        _check_windows(split, dataset.name, validation_cut, test_cut)
        return split
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def within_baskets(split: Split | BasketSplit, protocol: str, seed: int = 0) -> Split:
    """The single-target `Split` of a within-basket protocol (`starsrec.data.sessions`)."""
    assert isinstance(split, BasketSplit)  # what the basket protocols give
    log, parts, description = within_basket(split, protocol, seed)
    (validation, validation_target), (test, test_target) = parts["validation"], parts["test"]
    return Split(
        protocol=protocol,
        catalogue=split.catalogue,
        log=log,
        train=split.train,
        validation=validation,
        validation_target=validation_target,
        test=test,
        test_target=test_target,
        description=description,
    )


def _check_windows(
    split: Split | BasketSplit, name: str, validation_cut: str, test_cut: str
) -> None:
    """Refuse cut dates that leave nothing to train on or no queries to validate or test:
    models would fit on nothing or the report would average over no query."""
    times = split.log.timestamp.astype("datetime64[s]")
    span = f"its events run from {times.min()} to {times.max()}" if times.size else "no events"
    hint = (
        "move the dates in dataset.json's temporal_cuts and prepare again (`starsrec data "
        "summary DIR` prints the events and returning baskets per week)"
    )
    queries = "target events of users with earlier events"
    if isinstance(split, BasketSplit):
        queries = "baskets with a target event of users with an earlier basket"
    if split.train.size == 0:
        problem = f"no events before the validation cut {validation_cut}"
    elif len(split.validation) == 0:
        problem = f"no {queries} between the cuts {validation_cut} and {test_cut}"
    elif len(split.test) == 0:
        problem = f"no {queries} from the test cut {test_cut} on"
    else:
        return
    raise DataError(f"dataset {name!r} has {problem} ({span}): {hint}")


def basket_key(dataset: Dataset) -> np.ndarray | None:
    """(R,) the events' basket column in event-log row order, None without one."""
    column = next((c for c in BASKET_COLUMNS if c in dataset.events.columns), None)
    if column is None:
        return None
    users = pd.factorize(dataset.events["user_id"], sort=True)[0]
    return dataset.events[column].to_numpy()[np.argsort(users, kind="stable")]


def leave_one_out(log: EventLog, catalogue: Catalogue) -> Split:
    """Per user: last target event = test, the one before = validation, earlier = train.

    Users with fewer than three target events stay wholly in train and are not evaluated.
    Non-target events (returns, say) between the validation and test targets are part of
    the test history but not of train.
    """
    target_rows = np.flatnonzero(log.is_target)
    per_user = np.bincount(log.user[target_rows], minlength=log.n_users)
    last = np.full(log.n_users, -1)
    second = np.full(log.n_users, -1)
    # Rows are sorted by user then time, so the last write per user wins.
    last[log.user[target_rows]] = target_rows
    before_last = target_rows[target_rows != last[log.user[target_rows]]]
    second[log.user[before_last]] = before_last
    evaluated = np.flatnonzero(per_user >= 3)

    cutoff = np.full(log.n_users, np.iinfo(np.int64).max)
    cutoff[evaluated] = second[evaluated]
    train = log.select(np.arange(log.size) < cutoff[log.user])

    validation = _queries(log, evaluated, second[evaluated])
    test = _queries(log, evaluated, last[evaluated])
    return Split(
        protocol=LEAVE_ONE_OUT,
        catalogue=catalogue,
        log=log,
        train=train,
        validation=validation,
        validation_target=log.item[second[evaluated]],
        test=test,
        test_target=log.item[last[evaluated]],
        description=(
            "leave-one-out: per user with >= 3 target events, the last is test, the one "
            "before it validation, earlier events train"
        ),
    )


def temporal(
    log: EventLog,
    catalogue: Catalogue,
    validation_cut: str,
    test_cut: str,
    max_targets_per_user: int = 1,
) -> Split:
    """Train before `validation_cut`; targets are each user's first target events after it.

    Validation targets fall in [validation_cut, test_cut), test targets at or after
    `test_cut`. A target needs at least one earlier event of the same user as history.
    """
    if max_targets_per_user < 1:
        raise ValueError(f"max_targets_per_user must be >= 1, got {max_targets_per_user}")
    cut_v, cut_t = (int(to_seconds(pd.DatetimeIndex([c]))[0]) for c in (validation_cut, test_cut))
    if cut_v >= cut_t:
        raise ValueError(f"validation cut {validation_cut} must be before test cut {test_cut}")
    train = log.select(log.timestamp < cut_v)
    has_history = np.arange(log.size) > log.offsets[log.user]
    eligible = log.is_target & has_history

    def window(lo: int, hi: int) -> tuple[Queries, np.ndarray]:
        rows = np.flatnonzero(eligible & (log.timestamp >= lo) & (log.timestamp < hi))
        # Rank of each row among its user's rows in the window; keep the earliest few.
        first_of_user = np.r_[True, log.user[rows][1:] != log.user[rows][:-1]]
        group_start = np.maximum.accumulate(np.where(first_of_user, np.arange(len(rows)), 0))
        rows = rows[np.arange(len(rows)) - group_start < max_targets_per_user]
        return _queries(log, log.user[rows], rows), log.item[rows]

    validation, validation_target = window(cut_v, cut_t)
    test, test_target = window(cut_t, np.iinfo(np.int64).max)
    return Split(
        protocol=TEMPORAL,
        catalogue=catalogue,
        log=log,
        train=train,
        validation=validation,
        validation_target=validation_target,
        test=test,
        test_target=test_target,
        description=(
            f"temporal: train before {validation_cut}, validation targets in "
            f"[{validation_cut}, {test_cut}), test targets from {test_cut}; the first "
            f"{max_targets_per_user} target event(s) per user in each window"
        ),
    )


def _queries(log: EventLog, users: np.ndarray, target_rows: np.ndarray) -> Queries:
    """Queries whose history is everything the user did before each target row."""
    users = np.asarray(users, dtype=np.int64)
    return Queries(
        log=log,
        start=log.offsets[users],
        end=np.asarray(target_rows, dtype=np.int64),
        time=log.timestamp[target_rows],
        user=users,
    )
