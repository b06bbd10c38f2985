"""The data contract: validation errors people can act on, normalisation, round trips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from starsrec.data.dataset import (
    DataError,
    Dataset,
    EventType,
    TemporalCuts,
    format_summary,
    load_prepared,
    save_prepared,
    summarize,
)
from starsrec.data.userfiles import read_user_files
from starsrec.data.validation import validate

EVENTS_CSV = """user_id,item_id,timestamp,event_type
u1,a,2024-01-01 10:00:00,view
u1,b,2024-01-01 10:05:00,purchase
u2,a,2024-01-02 09:00:00,view
u2,c,2024-01-03 09:00:00,purchase
"""

ITEMS_CSV = """item_id,text
a,Oat milk 1l
b,Almond milk 1l
c,Rye bread
d,Never bought
"""


def write_dir(
    root: Path, events: str = EVENTS_CSV, items: str = ITEMS_CSV, meta: dict | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "events.csv").write_text(events)
    (root / "items.csv").write_text(items)
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def read_error(tmp_path: Path, **files: str) -> str:
    with pytest.raises(DataError) as info:
        read_user_files(write_dir(tmp_path / "shop", **files))
    return str(info.value)


# --- errors name the file, the column and the offending rows --------------------------------


def test_missing_column_lists_present_columns(tmp_path: Path) -> None:
    message = read_error(tmp_path, events="user_id,item_id,event_type\nu1,a,view\n")
    assert "events.csv" in message
    assert "'timestamp'" in message
    assert "Columns present: user_id, item_id, event_type" in message


def test_unparsable_timestamp_shows_file_line(tmp_path: Path) -> None:
    events = EVENTS_CSV.replace("2024-01-02 09:00:00", "yesterday")
    message = read_error(tmp_path, events=events)
    assert "events.csv" in message
    assert "column 'timestamp'" in message
    # u2's first row is the 3rd data row: line 4 of the file (header = line 1).
    assert "line 4:" in message
    assert "'yesterday'" in message
    assert "Hint:" in message


def test_epoch_milliseconds_are_rejected_with_a_hint(tmp_path: Path) -> None:
    events = "user_id,item_id,timestamp,event_type\nu1,a,1704103200000,view\n"
    message = read_error(tmp_path, events=events)
    assert "column 'timestamp'" in message
    assert "line 2:" in message
    assert "milliseconds" in message


def test_duplicate_item_ids_show_every_copy(tmp_path: Path) -> None:
    message = read_error(tmp_path, items=ITEMS_CSV + "a,Oat milk again\n")
    assert "items.csv" in message
    assert "column 'item_id'" in message
    assert "line 2:" in message  # first copy
    assert "line 6:" in message  # the repeat
    assert "'Oat milk again'" in message


def test_empty_item_text(tmp_path: Path) -> None:
    message = read_error(tmp_path, items=ITEMS_CSV.replace("Rye bread", "   "))
    assert "items.csv" in message
    assert "column 'text'" in message
    assert "line 4:" in message
    assert "item_id='c'" in message


def test_unknown_event_type(tmp_path: Path) -> None:
    meta = {"event_types": [{"name": "view", "weight": 0.2}, {"name": "purchase"}]}
    events = EVENTS_CSV + "u3,b,2024-01-04 09:00:00,wishlist\n"
    with pytest.raises(DataError) as info:
        read_user_files(write_dir(tmp_path / "shop", events=events, meta=meta))
    message = str(info.value)
    assert "events.csv" in message
    assert "column 'event_type'" in message
    assert "line 6:" in message
    assert "'wishlist'" in message
    assert "view, purchase" in message  # the declared types, to compare against


def test_a_country_without_a_holiday_calendar_fails_at_reading(tmp_path: Path) -> None:
    message = read_error(tmp_path, meta={"country": "XX"})
    assert "no public holiday calendar for country 'XX'" in message
    assert "leave `country` out of dataset.json" in message
    assert read_user_files(write_dir(tmp_path / "gb", meta={"country": "GB"})).country == "GB"


def test_empty_events_table(tmp_path: Path) -> None:
    message = read_error(tmp_path, events="user_id,item_id,timestamp,event_type\n")
    assert "events.csv" in message
    assert "no rows" in message


def test_in_memory_errors_name_the_table_and_row() -> None:
    events = pd.DataFrame(
        {"user_id": ["u1", None], "item_id": ["a", "a"], "timestamp": [0, 1], "event_type": "v"}
    )
    items = pd.DataFrame({"item_id": ["a"], "text": ["A"]})
    with pytest.raises(DataError, match=r"the events table: column 'user_id'.*\n  row 1:"):
        validate(Dataset("t", events, items, (EventType("v"),)))
    # A loader that filtered its source keeps the source's row labels, and errors cite them.
    filtered = events.set_axis([10, 42])
    with pytest.raises(DataError, match=r"\n  row 42: user_id="):
        validate(Dataset("t", filtered, items, (EventType("v"),)))


def test_missing_files_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        read_user_files(tmp_path / "nowhere")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "events.csv").write_text(EVENTS_CSV)
    with pytest.raises(DataError, match=r"expected items\.csv or items\.parquet"):
        read_user_files(tmp_path / "shop")


# --- normalisation ----------------------------------------------------------------------------


def test_normalisation_of_ids_timestamps_text_and_defaults() -> None:
    events = pd.DataFrame(
        {
            "user_id": [7.0, 7.0, 8.0],
            "item_id": [12, 13, 12],
            # epoch seconds: 2024-01-01 00:00:00 and one hour / one day later
            "timestamp": [1704067200, 1704070800, 1704153600],
            "event_type": ["buy", "buy", "buy"],
        }
    )
    items = pd.DataFrame(
        {"item_id": [12.0, 13.0], "text": ["  Oat milk ", "Rye"], "class": [1, None]}
    )
    dataset = validate(Dataset("t", events, items, (EventType("buy"),)))
    assert dataset.events["user_id"].tolist() == ["7", "7", "8"]
    assert dataset.events["item_id"].tolist() == ["12", "13", "12"]
    assert dataset.events["timestamp"].dtype == "datetime64[ns]"
    assert dataset.events["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 00:00:00")
    assert dataset.items["item_id"].tolist() == ["12", "13"]
    assert dataset.items["text"].tolist() == ["Oat milk", "Rye"]
    assert dataset.items["available"].tolist() == [True, True]
    assert dataset.items["class"].iloc[0] == "1"
    assert pd.isna(dataset.items["class"].iloc[1])


def test_timestamps_iso_strings_with_offsets_and_datetimes_become_naive_utc() -> None:
    stamps = ["2024-01-01T10:00:00+01:00", "2024-01-01 10:00", "2024-01-02"]
    events = pd.DataFrame({"user_id": "u", "item_id": "a", "timestamp": stamps, "event_type": "v"})
    items = pd.DataFrame({"item_id": ["a"], "text": ["A"]})
    out = validate(Dataset("t", events, items, (EventType("v"),))).events["timestamp"]
    assert out.tolist() == [
        pd.Timestamp("2024-01-01 09:00"),
        pd.Timestamp("2024-01-01 10:00"),
        pd.Timestamp("2024-01-02"),
    ]
    aware = events.assign(timestamp=pd.to_datetime(stamps[1:2] * 3).tz_localize("Europe/Paris"))
    out = validate(Dataset("t", aware, items, (EventType("v"),))).events["timestamp"]
    assert out.dt.tz is None
    assert out.iloc[0] == pd.Timestamp("2024-01-01 09:00")


def test_unknown_items_are_counted_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["a", "ghost", "ghost", "phantom"],
            "timestamp": pd.to_datetime(["2024-01-01"] * 4),
            "event_type": "v",
        }
    )
    items = pd.DataFrame({"item_id": ["a"], "text": ["A"]})
    with caplog.at_level(logging.WARNING, logger="starsrec.data.validation"):
        dataset = validate(Dataset("t", events, items, (EventType("v"),)))
    assert dataset.unknown_item_events == 3
    assert dataset.events["item_id"].tolist() == ["a"]
    assert "dropped 3 events" in caplog.text
    assert "'ghost'" in caplog.text and "'phantom'" in caplog.text
    assert summarize(dataset)["unknown_item_events"] == 3


def test_stable_sort_keeps_source_order_of_ties() -> None:
    same = "2024-01-01 10:00"
    events = pd.DataFrame(
        {
            "user_id": ["u2", "u1", "u1", "u1", "u1"],
            "item_id": ["c", "b", "c", "a", "a"],
            "timestamp": ["2024-01-01 09:00", same, same, same, "2024-01-01 08:00"],
            "event_type": "v",
        }
    )
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "text": ["A", "B", "C"]})
    out = validate(Dataset("t", events, items, (EventType("v"),))).events
    assert out["user_id"].tolist() == ["u1", "u1", "u1", "u1", "u2"]
    # u1's 08:00 event first, then the three 10:00 ties in their source order b, c, a.
    assert out["item_id"].tolist() == ["a", "b", "c", "a", "c"]
    assert out.index.tolist() == [0, 1, 2, 3, 4]


# --- files in, files out ----------------------------------------------------------------------


def test_read_user_files_csv_without_metadata(tmp_path: Path) -> None:
    dataset = read_user_files(write_dir(tmp_path / "my-shop"))
    assert dataset.name == "my-shop"
    assert dataset.event_types == (EventType("purchase"), EventType("view"))
    assert len(dataset.events) == 4
    assert dataset.temporal_cuts is None


def test_read_user_files_parquet_with_metadata(tmp_path: Path) -> None:
    root = tmp_path / "pq"
    root.mkdir()
    events = pd.read_csv(pd.io.common.StringIO(EVENTS_CSV))
    events["timestamp"] = pd.to_datetime(events["timestamp"])
    events.to_parquet(root / "events.parquet")
    pd.read_csv(pd.io.common.StringIO(ITEMS_CSV)).to_parquet(root / "items.parquet")
    pd.DataFrame({"user_id": ["u1", "u2"], "age": [31, 45]}).to_parquet(root / "users.parquet")
    meta = {
        "name": "grocer",
        "event_types": [
            {"name": "view", "weight": 0.2, "target": False},
            {"name": "purchase", "weight": 1.0, "target": True},
        ],
        "country": "DE",
        "allow_repeats": False,
        "temporal_cuts": {"validation": "2024-01-02", "test": "2024-01-03"},
        "notes": {"source": "test"},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    dataset = read_user_files(root)
    assert dataset.name == "grocer"
    assert dataset.event_types[0] == EventType("view", 0.2, False)
    assert dataset.country == "DE" and dataset.exclude_seen is True
    assert dataset.temporal_cuts == TemporalCuts("2024-01-02", "2024-01-03")
    assert dataset.users is not None and dataset.users["age"].tolist() == ["31", "45"]
    assert dataset.notes == {"source": "test"}


def test_save_and_load_prepared_round_trip(tmp_path: Path) -> None:
    dataset = read_user_files(write_dir(tmp_path / "shop"))
    dataset = validate(
        Dataset(
            name=dataset.name,
            events=dataset.events.assign(quantity=[1.0, 2.0, 1.0, 3.0]),
            items=dataset.items.assign(**{"class": ["dairy", "dairy", "bakery", None]}),
            event_types=dataset.event_types,
            users=pd.DataFrame({"user_id": ["u1", "u2"], "gender": ["F", "M"]}),
            promotions=pd.DataFrame(
                {"name": ["sale"], "start": ["2024-01-01"], "end": ["2024-01-07"]}
            ),
            country="GB",
            temporal_cuts=TemporalCuts("2024-01-02", "2024-01-03"),
            notes={"why": "round trip"},
            unknown_item_events=2,
        )
    )
    loaded = load_prepared(save_prepared(dataset, tmp_path / "prepared"))
    pd.testing.assert_frame_equal(loaded.events, dataset.events)
    pd.testing.assert_frame_equal(loaded.items, dataset.items)
    assert loaded.users is not None and loaded.promotions is not None
    pd.testing.assert_frame_equal(loaded.users, dataset.users)
    pd.testing.assert_frame_equal(loaded.promotions, dataset.promotions)
    for field in ("name", "event_types", "country", "exclude_seen", "temporal_cuts", "notes"):
        assert getattr(loaded, field) == getattr(dataset, field)
    assert loaded.unknown_item_events == 2


# --- summary ----------------------------------------------------------------------------------


def test_summarize_counts_by_hand(tmp_path: Path) -> None:
    events = EVENTS_CSV + "u3,zzz,2024-01-05 12:00:00,view\n"
    dataset = read_user_files(write_dir(tmp_path / "shop", events=events))
    summary = summarize(dataset)
    assert summary == {
        "name": "shop",
        "users": 2,  # u3's only event names an unknown item and was dropped
        "items": 4,
        "events": 4,
        "events_by_type": {"purchase": 2, "view": 2},
        "first_event": "2024-01-01T10:00:00",
        "last_event": "2024-01-03T09:00:00",
        "items_without_text": 0,
        "items_never_interacted": 1,  # d
        "unknown_item_events": 1,
    }
    table = format_summary(summary)
    assert "items never interacted  1" in table
    assert "  purchase" in table
