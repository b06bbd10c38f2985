"""Calendar context: weekday, month, hour and distance to public holidays.

Public holidays come from the `holidays` package for the dataset's country (ISO code,
e.g. "GB", "US"). Distances are in days, capped at `MAX_DAYS` so far-away holidays all
look alike.

`CalendarEvents` turns holidays and user-supplied promotions into named events that are
active in date windows ("Christmas Day" on the day, "before Christmas Day" the week
before, a promotion from its start to its end date): the k in STARS's per-(event, class)
offsets o[k, class] (DESIGN 1.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import holidays
import numpy as np
import pandas as pd

from starsrec.data.dataset import DataError

DAY = 86_400
MAX_DAYS = 60.0


def country_calendar(country: str, years: range) -> holidays.HolidayBase:
    """The public holidays of `country` in `years`; a DataError when `holidays` has no
    calendar for that code (it raises NotImplementedError, which would be a traceback)."""
    try:
        return holidays.country_holidays(country, years=years)
    except NotImplementedError as error:
        raise DataError(
            f"no public holiday calendar for country {country!r}; use an ISO 3166 code "
            "such as 'GB' or 'US'"
        ) from error


@lru_cache(maxsize=32)
def holiday_days(country: str, first_year: int, last_year: int) -> np.ndarray:
    """Sorted int64 day numbers (days since the epoch) of the country's public holidays."""
    calendar = country_calendar(country, range(first_year, last_year + 1))
    dates = np.array(sorted(calendar.keys()), dtype="datetime64[D]")
    return dates.astype(np.int64)


def time_parts(times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 seconds -> (hour 0-23, weekday 0 = Monday, month 0-11), all int64."""
    times = np.asarray(times, dtype=np.int64)
    weekday = (times // DAY + 3) % 7  # 1970-01-01 was a Thursday
    month = times.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12
    return (times % DAY) // 3600, weekday, month


def calendar_features(times: np.ndarray, country: str | None) -> dict[str, np.ndarray]:
    """Per timestamp (int64 seconds): weekday (0 = Monday), month (1-12), hour, and days
    to the next / since the last / to the nearest public holiday (NaN with no country)."""
    times = np.asarray(times, dtype=np.int64)
    moments = times.astype("datetime64[s]")
    days = times // DAY
    hour, weekday, month = time_parts(times)
    features = {
        "weekday": weekday.astype(np.float32),
        "month": (month + 1).astype(np.float32),
        "hour": hour.astype(np.float32),
    }
    if country is None or times.size == 0:
        nan = np.full(times.shape, np.nan, dtype=np.float32)
        return {
            **features,
            "days_to_holiday": nan,
            "days_since_holiday": nan,
            "holiday_distance": nan,
        }
    years = moments.astype("datetime64[Y]").astype(np.int64) + 1970
    table = holiday_days(country, int(years.min()) - 1, int(years.max()) + 1)
    after = np.searchsorted(table, days, side="left")
    next_day = table[np.minimum(after, len(table) - 1)]
    previous_day = table[np.maximum(np.searchsorted(table, days, side="right") - 1, 0)]
    to_next = np.clip(next_day - days, 0, MAX_DAYS).astype(np.float32)
    since_last = np.clip(days - previous_day, 0, MAX_DAYS).astype(np.float32)
    return {
        **features,
        "days_to_holiday": to_next,
        "days_since_holiday": since_last,
        "holiday_distance": np.minimum(to_next, since_last),
    }


BEFORE_DAYS = 7


@dataclass(frozen=True)
class CalendarEvents:
    """Named events with the day windows (inclusive, days since the epoch) they are active."""

    names: tuple[str, ...]
    event: np.ndarray  # (W,) index into names, one row per window
    first_day: np.ndarray  # (W,) int64
    last_day: np.ndarray  # (W,) int64

    @classmethod
    def build(
        cls,
        country: str | None,
        first_year: int,
        last_year: int,
        promotions: pd.DataFrame | None = None,
    ) -> CalendarEvents:
        """Holidays of `country` in the years (each on its day and the week before) and
        promotions (`name`, `start`, `end`)."""
        windows: list[tuple[str, int, int]] = []
        if country:
            calendar = country_calendar(country, range(first_year, last_year + 1))
            for date, label in sorted(calendar.items()):
                day = int(np.datetime64(date, "D").astype(np.int64))
                for name in label.split("; "):
                    name = re.sub(r"\s*\(observed\)$", "", name).strip()
                    windows.append((name, day, day))
                    windows.append((f"before {name}", day - BEFORE_DAYS, day - 1))
        if promotions is not None:
            for row in promotions.itertuples(index=False):
                start, end = (
                    int(np.datetime64(pd.Timestamp(v), "D").astype(np.int64))
                    for v in (row.start, row.end)
                )
                windows.append((f"promotion {row.name}", start, end))
        names = tuple(sorted({name for name, _, _ in windows}))
        index = {name: k for k, name in enumerate(names)}
        return cls(
            names=names,
            event=np.array([index[n] for n, _, _ in windows], dtype=np.int64),
            first_day=np.array([a for _, a, _ in windows], dtype=np.int64),
            last_day=np.array([b for _, _, b in windows], dtype=np.int64),
        )

    def active(self, times: np.ndarray) -> np.ndarray:
        """(Q, K) float32: 1 where event k is active at each time (int64 seconds)."""
        days = np.asarray(times, dtype=np.int64) // DAY
        inside = (days[:, None] >= self.first_day) & (days[:, None] <= self.last_day)  # (Q, W)
        result = np.zeros((len(days), len(self.names)), dtype=np.float32)
        query, window = np.nonzero(inside)
        result[query, self.event[window]] = 1.0
        return result
