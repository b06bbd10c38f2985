"""The real-data loaders produce sane, validated datasets (skipped where the data is absent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from starsrec.data.dataset import DataError, Dataset, summarize
from starsrec.data.loaders import (
    DATASETS,
    RETAIL_NON_PRODUCTS,
    load_instacart,
    load_movielens_100k,
    load_online_retail,
    prepare,
    shared_file,
)

pytestmark = pytest.mark.realdata


def require_shared(*relative: str) -> None:
    for path in relative:
        try:
            shared_file(path)
        except DataError as err:
            pytest.skip(f"real dataset not available: {err}")


@pytest.fixture(scope="module")
def retail() -> Dataset:
    require_shared("online_retail/online_retail_2010_2011_raw.parquet")
    return load_online_retail()


@pytest.fixture(scope="module")
def instacart() -> Dataset:
    require_shared(
        "instacart/products.csv",
        "instacart/aisles.csv",
        "instacart/departments.csv",
        "instacart/order_lines_sample.csv",
    )
    return load_instacart()


@pytest.fixture(scope="module")
def movielens() -> Dataset:
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole not installed: pip install --no-deps recbole==1.2.1")
    return load_movielens_100k()


def assert_contract(dataset: Dataset) -> None:
    events, items = dataset.events, dataset.items
    assert events["timestamp"].dtype == "datetime64[ns]"
    assert items["item_id"].is_unique
    assert events["item_id"].isin(items["item_id"]).all()
    assert set(events["event_type"]) <= {t.name for t in dataset.event_types}
    # Sorted by (user_id, timestamp): user ids never decrease, times never decrease per user.
    user = events["user_id"]
    same_user = user.eq(user.shift())
    assert (user.iloc[1:].to_numpy() >= user.iloc[:-1].to_numpy()).all()
    assert (events["timestamp"].diff()[same_user] >= pd.Timedelta(0)).all()
    assert events.index.equals(pd.RangeIndex(len(events)))
    assert dataset.temporal_cuts is not None


def test_online_retail(retail: Dataset) -> None:
    assert_contract(retail)
    summary = summarize(retail)
    # Every line of an identified customer (4,372 customers, 406,829 lines) except 2,015
    # non-product lines, which were the only lines of 9 customers.
    assert summary["users"] == 4363
    assert summary["events"] == 406_829 - 2_015
    assert summary["events_by_type"] == {"purchase": 396_278, "return": 8_536}
    assert 3_500 < summary["items"] < 4_000
    assert summary["first_event"] == "2010-12-01T08:26:00"
    assert summary["last_event"] == "2011-12-09T12:50:00"
    events = retail.events
    assert events["user_id"].str.fullmatch(r"\d+").all()  # no guests, no "12346.0"
    assert (events["quantity"] > 0).all()
    assert {"price", "country"} <= set(events.columns)
    assert retail.country == "GB" and not retail.exclude_seen
    # Normalised descriptions: no doubled or edge whitespace, upper case.
    assert not retail.items["item_id"].str.contains(r"\s\s|^\s|\s$|[a-z]").any()


def test_online_retail_drops_non_products(retail: Dataset) -> None:
    # Postage, carriage, fees, charges, discounts and manual adjustments are not products.
    named = {
        "POSTAGE", "DOTCOM POSTAGE", "CARRIAGE", "NEXT DAY CARRIAGE", "PACKING CHARGE",
        "MANUAL", "DISCOUNT", "BANK CHARGES", "CRUK COMMISSION", "AMAZON FEE",
        "ADJUST BAD DEBT", "SAMPLES", "HIGH RESOLUTION IMAGE",
    }  # fmt: skip
    assert named <= set(RETAIL_NON_PRODUCTS)
    assert not retail.items["item_id"].isin(RETAIL_NON_PRODUCTS).any()
    assert not retail.events["item_id"].isin(RETAIL_NON_PRODUCTS).any()
    assert "Dropped 2,015 customer lines" in retail.notes["non_products"]


def test_online_retail_keeps_invoice_line_order(retail: Dataset) -> None:
    # Rows of one invoice share a minute: ties must keep the source order (stable sort).
    raw = pd.read_parquet(shared_file("online_retail/online_retail_2010_2011_raw.parquet"))
    raw = raw[raw["CustomerID"] == 12347.0]
    first_minute = raw[raw["InvoiceDate"] == raw["InvoiceDate"].min()]
    ours = retail.events[retail.events["user_id"] == "12347"].head(len(first_minute))
    expected = first_minute["Description"].str.split().str.join(" ").str.upper()
    assert ours["item_id"].tolist() == expected.tolist()


def test_instacart(instacart: Dataset) -> None:
    assert_contract(instacart)
    summary = summarize(instacart)
    assert summary["users"] == 593
    assert summary["items"] == 49_688
    assert summary["events"] == 150_000
    assert summary["events_by_type"] == {"purchase": 150_000}
    items = instacart.items
    assert items["class"].notna().all() and items["subclass"].notna().all()
    assert items["class"].nunique() == 21 and items["subclass"].nunique() == 134
    assert "timeline" in instacart.notes


def test_instacart_last_orders_in_anchor_week(instacart: Dataset) -> None:
    last = instacart.events.groupby("user_id").tail(1)
    assert last["timestamp"].between("2017-06-25", "2017-07-01 23:59").all()
    # Python weekday: Monday = 0; Instacart order_dow read as Sunday = 0.
    assert ((last["timestamp"].dt.day_of_week + 1) % 7 == last["order_dow"]).all()
    assert (last["timestamp"].dt.hour == last["order_hour_of_day"]).all()


def test_instacart_keeps_add_to_cart_order(instacart: Dataset) -> None:
    lines = pd.read_csv(shared_file("instacart/order_lines_sample.csv"), index_col=0)
    first = lines[(lines["user_id"] == 1) & (lines["order_number"] == 1)]
    expected = first.sort_values("add_to_cart_order")["product_id"].astype(str).tolist()
    assert (
        instacart.events[instacart.events["user_id"] == "1"]["item_id"].head(len(expected)).tolist()
        == expected
    )


def test_movielens(movielens: Dataset) -> None:
    assert_contract(movielens)
    summary = summarize(movielens)
    assert (summary["users"], summary["items"], summary["events"]) == (943, 1_682, 100_000)
    by_type = summary["events_by_type"]
    assert by_type["strong"] > 0 and by_type["weak"] > 0
    assert by_type["strong"] == int((movielens.events["rating"] >= 4).sum())
    assert movielens.users is not None and len(movielens.users) == 943
    assert movielens.items.loc[movielens.items["item_id"] == "1", "text"].item() == (
        "Toy Story (1995)"
    )
    assert movielens.exclude_seen


def test_prepare_dispatches_and_rejects_unknown_names(tmp_path: Path) -> None:
    assert set(DATASETS) == {"online-retail", "instacart", "movielens-100k"}
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp,event_type\nu,007,0,v\n")
    (tmp_path / "items.csv").write_text("item_id,text\n007,Bond\n")
    assert prepare(str(tmp_path)).events["item_id"].tolist() == ["007"]  # ids read as text
    with pytest.raises(DataError, match="online-retail, instacart, movielens-100k"):
        prepare("no-such-dataset")
