"""`starsrec data summary`: events, users and baskets per week on logs counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from starsrec.cli import main
from starsrec.data.dataset import Dataset, EventType, TemporalCuts
from starsrec.data.userfiles import read_user_files
from starsrec.data.validation import validate
from starsrec.data.weekly import weekly_summary

# Four weeks from Monday 2024-01-01; the third has no event. s2 is a view-only session: an
# earlier basket for u2, but no query itself.
EVENTS = """user_id,item_id,timestamp,event_type,session_id
u1,A,2024-01-02 10:00,purchase,s1
u1,B,2024-01-02 10:05,purchase,s1
u2,A,2024-01-03 09:00,view,s2
u1,A,2024-01-09 12:00,purchase,s3
u2,B,2024-01-10 08:00,purchase,s4
u1,B,2024-01-23 18:00,view,s5
"""
TYPES = [
    {"name": "purchase", "weight": 1.0, "target": True},
    {"name": "view", "weight": 0.2, "target": False},
]


def write_shop(folder: Path, cuts: dict | None = None) -> Path:
    folder.mkdir()
    (folder / "events.csv").write_text(EVENTS)
    (folder / "items.csv").write_text("item_id,text\nA,red mug\nB,blue mug\n")
    meta: dict = {"name": "mugs", "event_types": TYPES}
    if cuts is not None:
        meta["temporal_cuts"] = cuts
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_counts_per_week(tmp_path: Path) -> None:
    summary = weekly_summary(read_user_files(write_shop(tmp_path / "shop")))
    weeks = summary.weeks
    assert weeks["week"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-01-01",
        "2024-01-08",
        "2024-01-15",  # empty weeks are rows too: a gap in an export shows
        "2024-01-22",
    ]
    assert weeks["events"].tolist() == [3, 2, 0, 1]
    assert weeks["users"].tolist() == [2, 2, 0, 1]
    assert weeks["baskets"].tolist() == [2, 2, 0, 1]  # sessions, not timestamps
    # s3 and s4 follow earlier baskets; s5 holds no target event, s1 and s2 are first ones.
    assert weeks["returning"].tolist() == [0, 2, 0, 0]
    assert weeks["before"].tolist() == pytest.approx([0, 3 / 6, 5 / 6, 5 / 6])
    assert summary.cuts is None and summary.queries is None


def test_without_a_session_column_a_timestamp_is_a_basket(tmp_path: Path) -> None:
    folder = write_shop(tmp_path / "shop")
    events = pd.read_csv(folder / "events.csv").drop(columns="session_id")
    events.to_csv(folder / "events.csv", index=False)
    weeks = weekly_summary(read_user_files(folder)).weeks
    assert weeks["baskets"].tolist() == [3, 2, 0, 1]  # s1's two lines are 5 minutes apart


def test_suggested_cuts_leave_a_tenth_to_each_window() -> None:
    days = pd.date_range("2024-01-01", periods=70, freq="D")  # ten weeks, one event a day
    events = pd.DataFrame(
        {"user_id": "u1", "item_id": "A", "timestamp": days, "event_type": "purchase"}
    )
    items = pd.DataFrame({"item_id": ["A"], "text": ["red mug"]})
    dataset = validate(Dataset("daily", events, items, (EventType("purchase"),)))
    summary = weekly_summary(dataset)
    assert summary.weeks["before"].tolist() == pytest.approx([k / 10 for k in range(10)])
    assert summary.suggested == TemporalCuts(validation="2024-02-26", test="2024-03-04")


def test_the_command_prints_the_table_and_the_windows_of_the_cuts(tmp_path: Path, capsys) -> None:
    folder = write_shop(tmp_path / "shop", {"validation": "2024-01-08", "test": "2024-01-10"})
    assert main(["data", "summary", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("week of"))
    assert header.split()[2:] == ["events", "users", "baskets", "returning", "before", "window"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line[:4] == "2024"}
    assert rows["2024-01-01"] == ["3", "2", "2", "0", "0%", "train"]
    assert rows["2024-01-08"] == ["2", "2", "2", "2", "50%", "validation+test"]
    assert rows["2024-01-15"] == ["0", "0", "0", "0", "83%", "test"]
    # one returning basket on each side of the test cut (s3 on the 9th, s4 on the 10th)
    assert "1 returning baskets in validation, 1 in test" in out
    assert "too few weeks of data to suggest cut dates" in out
    assert not (tmp_path / "out").exists()  # a summary writes nothing


def test_a_session_column_with_blanks_is_refused_with_the_rows(tmp_path: Path, capsys) -> None:
    folder = write_shop(tmp_path / "shop")
    (folder / "events.csv").write_text(EVENTS.replace(",s5\n", ",\n"))
    assert main(["data", "summary", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "events.csv: column 'session_id' has 1 rows without a basket or session" in error
    assert "line 7: user_id='u1', item_id='B'" in error
