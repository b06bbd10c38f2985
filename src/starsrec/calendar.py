"""Calendar context: weekday, month, hour and distance to public holidays.

Public holidays come from the `holidays` package for the dataset's country (ISO code,
e.g. "GB", "US"). Distances are in days, capped at `MAX_DAYS` so far-away holidays all
look alike. Later issues add user-supplied promotions and the learned calendar offsets.
"""

from __future__ import annotations

from functools import lru_cache

import holidays
import numpy as np

DAY = 86_400
MAX_DAYS = 60.0


@lru_cache(maxsize=32)
def holiday_days(country: str, first_year: int, last_year: int) -> np.ndarray:
    """Sorted int64 day numbers (days since the epoch) of the country's public holidays."""
    try:
        calendar = holidays.country_holidays(country, years=range(first_year, last_year + 1))
    except NotImplementedError as error:
        raise ValueError(
            f"no public holiday calendar for country {country!r}; use an ISO 3166 code "
            "such as 'GB' or 'US'"
        ) from error
    dates = np.array(sorted(calendar.keys()), dtype="datetime64[D]")
    return dates.astype(np.int64)


def calendar_features(times: np.ndarray, country: str | None) -> dict[str, np.ndarray]:
    """Per timestamp (int64 seconds): weekday (0 = Monday), month (1-12), hour, and days
    to the next / since the last / to the nearest public holiday (NaN with no country)."""
    times = np.asarray(times, dtype=np.int64)
    moments = times.astype("datetime64[s]")
    days = times // DAY
    features = {
        "weekday": ((days + 3) % 7).astype(np.float32),  # 1970-01-01 was a Thursday
        "month": (moments.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.float32),
        "hour": ((times % DAY) // 3600).astype(np.float32),
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
