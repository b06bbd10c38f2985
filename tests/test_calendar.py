"""Calendar features, checked against dates looked up by hand."""

import numpy as np
import pandas as pd
import pytest

from starsrec.data.calendar import MAX_DAYS, calendar_features


def seconds(*stamps: str) -> np.ndarray:
    return pd.DatetimeIndex(list(stamps)).values.astype("datetime64[s]").astype(np.int64)


def test_weekday_month_hour() -> None:
    # 2011-12-20 was a Tuesday; 2011-12-25 a Sunday.
    features = calendar_features(seconds("2011-12-20 10:30", "2011-12-25 00:00"), None)
    assert features["weekday"].tolist() == [1, 6]
    assert features["month"].tolist() == [12, 12]
    assert features["hour"].tolist() == [10, 0]
    assert np.isnan(features["days_to_holiday"]).all()


def test_distance_to_uk_bank_holidays() -> None:
    # UK 2011: Spring Bank Holiday 30 May, Christmas Day 25 Dec, Boxing Day 26 Dec.
    features = calendar_features(
        seconds("2011-12-20 10:30", "2011-12-25 09:00", "2011-06-02 00:00", "2011-09-01 00:00"),
        "GB",
    )
    assert features["days_to_holiday"].tolist() == [5, 0, MAX_DAYS, MAX_DAYS]
    assert features["days_since_holiday"].tolist() == [MAX_DAYS, 0, 3, MAX_DAYS]
    assert features["holiday_distance"].tolist() == [5, 0, 3, MAX_DAYS]


def test_unknown_country_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no public holiday calendar for country 'XX'"):
        calendar_features(seconds("2011-12-20 10:30"), "XX")
