"""The data model every loader produces and every model consumes (DESIGN section 2).

A `Dataset` is four tables and a little metadata:

- events: one row per interaction, sorted by (user_id, timestamp) with ties kept in the
  order the source gave them (add-to-cart order, invoice line order...). Columns:
  `user_id` (str), `item_id` (str), `timestamp` (datetime64[ns], naive UTC),
  `event_type` (str, one of `event_types`), plus optional `quantity`, `price`, a basket
  column (`BASKET_COLUMNS`, no missing values) and context columns.
- items: one row per catalogue item, `item_id` (str, unique), `text` (str), and optional
  `class`, `subclass` (str), `price` (float), `available` (bool).
- users (optional): `user_id` + static categorical features (str).
- promotions (optional): `name`, `start`, `end` (dates) for user-supplied calendar events.

Prepared datasets live in a directory: `events.parquet`, `items.parquet`, optional
`users.parquet` and `promotions.parquet`, and `dataset.json` with the metadata.

`starsrec.data.validation.validate` turns any Dataset into this form or raises one `DataError`
naming the file, the column and the first offending rows (CSV line numbers; otherwise the
table's row labels, which loaders keep as their source's row numbers).
`starsrec.data.userfiles.read_user_files` reads a directory of the user's own CSV/Parquet files the
same way; `summarize` and `format_summary` here report what was read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event_type")
ITEM_COLUMNS = ("item_id", "text")
# An optional events column naming each row's basket or session; without one, a user's events
# at one timestamp form a basket (see starsrec.data.baskets).
BASKET_COLUMNS = ("basket_id", "session_id")
# The tables of a dataset directory, in the order they are read and reported.
TABLE_NAMES = ("events", "items", "users", "promotions")


class DataError(ValueError):
    """Input data that cannot be used, with a message naming file, column and rows."""


@dataclass(frozen=True)
class EventType:
    """One kind of interaction.

    `weight` is the engagement weight of a positive of this type (purchase > add-to-cart >
    view); `target` says whether events of this type are things to recommend (a purchase is,
    a return is not).
    """

    name: str
    weight: float = 1.0
    target: bool = True


@dataclass(frozen=True)
class TemporalCuts:
    """Global temporal split: train before `validation`, validate until `test`, test after."""

    validation: str
    test: str


@dataclass(frozen=True)
class Dataset:
    """Events, items and optional users/promotions, validated and sorted (see module doc)."""

    name: str
    events: pd.DataFrame
    items: pd.DataFrame
    event_types: tuple[EventType, ...]
    users: pd.DataFrame | None = None
    promotions: pd.DataFrame | None = None
    country: str | None = None
    # Whether items the user already had are left out of their recommendations by default:
    # not in retail, where shoppers rebuy; yes for ratings, where a film is rated once.
    # dataset.json says it the other way round, `allow_repeats` (see `exclude_seen_of`).
    exclude_seen: bool = False
    temporal_cuts: TemporalCuts | None = None
    notes: dict[str, str] = field(default_factory=dict)
    # Events dropped because they name an item missing from the catalogue (never silent:
    # the count is reported by `summarize` and stored in dataset.json).
    unknown_item_events: int = 0


def exclude_seen_of(meta: Mapping) -> bool:
    """dataset.json's `allow_repeats` (true when absent) as `Dataset.exclude_seen`."""
    return not bool(meta.get("allow_repeats", True))


def save_prepared(dataset: Dataset, out_dir: str | Path) -> Path:
    """Write `dataset` as Parquet tables plus dataset.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset.events.to_parquet(out / "events.parquet", index=False)
    dataset.items.to_parquet(out / "items.parquet", index=False)
    for name in ("users", "promotions"):
        table = getattr(dataset, name)
        path = out / f"{name}.parquet"
        if table is not None:
            table.to_parquet(path, index=False)
        elif path.exists():
            path.unlink()
    meta = {
        "name": dataset.name,
        "event_types": [asdict(t) for t in dataset.event_types],
        "country": dataset.country,
        "allow_repeats": not dataset.exclude_seen,
        "temporal_cuts": asdict(dataset.temporal_cuts) if dataset.temporal_cuts else None,
        "notes": dataset.notes,
        "unknown_item_events": dataset.unknown_item_events,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_prepared(data_dir: str | Path) -> Dataset:
    """Read a directory written by `save_prepared`."""
    root = Path(data_dir)
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        raise DataError(
            f"{root} is not a prepared dataset: {meta_path.name} is missing. "
            "Run `starsrec data prepare NAME|PATH --out DIR` first."
        )
    meta = json.loads(meta_path.read_text())
    optional = {
        name: pd.read_parquet(root / f"{name}.parquet")
        if (root / f"{name}.parquet").exists()
        else None
        for name in ("users", "promotions")
    }
    cuts = meta.get("temporal_cuts")
    return Dataset(
        name=meta["name"],
        events=pd.read_parquet(root / "events.parquet"),
        items=pd.read_parquet(root / "items.parquet"),
        event_types=tuple(EventType(**t) for t in meta["event_types"]),
        users=optional["users"],
        promotions=optional["promotions"],
        country=meta.get("country"),
        exclude_seen=exclude_seen_of(meta),
        temporal_cuts=TemporalCuts(**cuts) if cuts else None,
        notes=meta.get("notes", {}),
        unknown_item_events=meta.get("unknown_item_events", 0),
    )


# --- labels -------------------------------------------------------------------------------
# Ids and categorical values are stripped str in a Dataset; validation, the user-file reader
# and the summary all read them through `as_labels`.


def _id_text(value: object) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def as_labels(values: pd.Series) -> pd.Series:
    """Values as stripped str (12.0 -> "12"), missing kept missing.

    The `where` matters on pandas 2, whose astype(str) writes missing values as 'nan'.
    """
    if not (pd.api.types.is_string_dtype(values) or pd.api.types.is_integer_dtype(values)):
        values = values.map(_id_text, na_action="ignore")  # floats and mixed object columns
    text = values.astype(str).where(values.notna())
    return text.str.strip() if len(text) else text


# --- summary --------------------------------------------------------------------------------


def summarize(dataset: Dataset) -> dict:
    """Counts that tell at a glance whether a dataset was read as intended."""
    events, items = dataset.events, dataset.items
    counts = events["event_type"].value_counts()
    text = as_labels(items["text"])
    first = events["timestamp"].min() if len(events) else None
    last = events["timestamp"].max() if len(events) else None
    return {
        "name": dataset.name,
        "users": int(events["user_id"].nunique()),
        "items": len(items),
        "events": len(events),
        "events_by_type": {t.name: int(counts.get(t.name, 0)) for t in dataset.event_types},
        "first_event": first.isoformat() if first is not None else None,
        "last_event": last.isoformat() if last is not None else None,
        "items_without_text": int((text.isna() | (text == "")).sum()),
        "items_never_interacted": int((~items["item_id"].isin(events["item_id"])).sum()),
        "unknown_item_events": dataset.unknown_item_events,
    }


def format_summary(summary: dict) -> str:
    """`summarize`'s dict as a small aligned two-column table."""
    rows: list[tuple[str, str]] = [("dataset", str(summary["name"]))]
    for key in ("users", "items", "events"):
        rows.append((key, f"{summary[key]:,}"))
    rows += [(f"  {name}", f"{n:,}") for name, n in summary["events_by_type"].items()]
    rows += [
        ("first event", str(summary["first_event"])),
        ("last event", str(summary["last_event"])),
        ("items without text", f"{summary['items_without_text']:,}"),
        ("items never interacted", f"{summary['items_never_interacted']:,}"),
        ("unknown-item events", f"{summary['unknown_item_events']:,}"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)
