"""Events, users and baskets per calendar week, for choosing a dataset's temporal cut dates.

`starsrec data summary` prints `format_weekly(weekly_summary(dataset))`. The temporal and
next-basket protocols train on everything before `temporal_cuts.validation`, validate on
[validation, test) and test from `test` on; a week's counts say how many events and
queries each window would get, so the dates can be chosen by looking rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from starsrec.data.baskets import basket_ids
from starsrec.data.dataset import Dataset, TemporalCuts
from starsrec.data.interactions import Catalogue, EventLog
from starsrec.data.splits import basket_key

# The suggested cuts leave about a tenth of the events to each of validation and test: most
# data trains the model, and each window still holds whole weeks of real traffic.
VALIDATION_SHARE = 0.8
TEST_SHARE = 0.9


@dataclass(frozen=True)
class WeeklySummary:
    """Per-week counts of a dataset, its own cut dates and a suggested pair.

    `weeks` has one row per week (Monday to Sunday) from the first event's week to the
    last's, empty weeks included so that gaps in an export show: `week` (the Monday),
    `events`, `users` (distinct users with an event that week), `baskets` (baskets opened
    that week), `returning` (of those, baskets holding a target event of a user with an
    earlier basket: the queries the next-basket protocol draws from that week) and
    `before` (share of all events before the week's Monday). `queries` counts the
    returning baskets opening in the validation and the test window of `cuts`.
    """

    name: str
    weeks: pd.DataFrame
    cuts: TemporalCuts | None
    queries: dict[str, int] | None
    suggested: TemporalCuts | None


def weekly_summary(dataset: Dataset) -> WeeklySummary:
    """Count `dataset`'s events, users and baskets per week (see `WeeklySummary`).

    Baskets are read the way the basket protocols read them: the events' `basket_id` or
    `session_id` column when there is one, else a user's events at one timestamp.
    """
    log = EventLog.from_dataset(dataset, Catalogue.from_items(dataset.items))
    basket = basket_ids(log, basket_key(dataset))
    frame = pd.DataFrame(
        {"time": pd.to_datetime(log.timestamp, unit="s"), "user": log.user, "basket": basket}
    )
    frame["week"] = frame["time"].dt.normalize() - pd.to_timedelta(
        frame["time"].dt.day_of_week, unit="D"
    )
    first = frame.drop_duplicates("basket")  # a basket counts in the week it opens
    # The next-basket protocol's rule (starsrec.data.baskets.next_basket): a query is a
    # basket with a target event whose user had a basket before it.
    targets = np.bincount(basket, weights=log.is_target.astype(np.float64), minlength=len(first))
    returning = first.loc[first["user"].duplicated().to_numpy() & (targets > 0)]
    weeks = pd.date_range(frame["week"].min(), frame["week"].max(), freq="7D")
    counts = pd.DataFrame(
        {
            "events": frame.groupby("week").size(),
            "users": frame.groupby("week")["user"].nunique(),
            "baskets": first.groupby("week").size(),
            "returning": returning.groupby("week").size(),
        }
    )
    counts = counts.reindex(weeks).fillna(0).astype(np.int64)
    counts["before"] = (counts["events"].cumsum() - counts["events"]) / max(log.size, 1)
    counts = counts.rename_axis("week").reset_index()
    cuts = dataset.temporal_cuts
    queries = None
    if cuts is not None:
        opened = returning["time"]
        validation, test = pd.Timestamp(cuts.validation), pd.Timestamp(cuts.test)
        queries = {
            "validation": int(((opened >= validation) & (opened < test)).sum()),
            "test": int((opened >= test).sum()),
        }
    return WeeklySummary(dataset.name, counts, cuts, queries, _suggest(counts))


def _suggest(weeks: pd.DataFrame) -> TemporalCuts | None:
    """Week starts with about VALIDATION_SHARE and TEST_SHARE of the events before them;
    None when the data spans too few weeks to leave a week to each window."""
    before = weeks["before"].to_numpy()
    validation = np.flatnonzero(before >= VALIDATION_SHARE)
    if validation.size == 0 or validation[0] == 0:
        return None
    test = np.flatnonzero((before >= TEST_SHARE) & (np.arange(len(before)) > validation[0]))
    if test.size == 0:
        return None
    monday = weeks["week"].dt.strftime("%Y-%m-%d")
    return TemporalCuts(monday.iloc[validation[0]], monday.iloc[test[0]])


def _window(monday: pd.Timestamp, cuts: TemporalCuts) -> str:
    """Which windows of `cuts` the week from `monday` overlaps: train, validation, test, or
    two of them joined by '+' when a cut falls inside the week."""
    bounds = [pd.Timestamp(cuts.validation), pd.Timestamp(cuts.test)]
    names = ["train", "validation", "test"]
    start, end = monday, monday + pd.Timedelta(days=7)
    first = sum(start >= b for b in bounds)
    last = sum(end > b for b in bounds)
    return "+".join(names[first : last + 1])


def format_weekly(summary: WeeklySummary) -> str:
    """The weekly table, the dataset's cuts with their query counts, and suggested cuts."""
    header = ["week of", "events", "users", "baskets", "returning", "before"]
    rows = [
        [monday.strftime("%Y-%m-%d"), *(f"{n:,}" for n in numbers), f"{before:.0%}"]
        for monday, *numbers, before in summary.weeks.itertuples(index=False)
    ]
    cuts = summary.cuts
    if cuts is not None:
        header.append("window")
        for row, monday in zip(rows, summary.weeks["week"], strict=True):
            row.append(_window(monday, cuts))
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"{summary.name}: events, users and baskets per week (Monday to Sunday)", ""]
    for row in table:  # words left-aligned, counts right-aligned
        cells = [
            cell.ljust(width) if column in (0, 6) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += [
        "",
        "returning: baskets with a target event from users with an earlier basket (the "
        "next-basket protocol's queries);",
        "before: the share of all events before that week.",
    ]
    if cuts is not None and summary.queries is not None:
        lines.append(
            f"temporal_cuts in dataset.json: validation {cuts.validation}, test {cuts.test}: "
            f"{summary.queries['validation']:,} returning baskets in validation, "
            f"{summary.queries['test']:,} in test"
        )
    if summary.suggested is None:
        lines.append("too few weeks of data to suggest cut dates")
    else:
        lines.append(
            f"cuts with about {VALIDATION_SHARE:.0%} and {TEST_SHARE:.0%} of the events "
            "before them, for dataset.json: "
            f'"temporal_cuts": {{"validation": "{summary.suggested.validation}", '
            f'"test": "{summary.suggested.test}"}}'
        )
    return "\n".join(lines)
