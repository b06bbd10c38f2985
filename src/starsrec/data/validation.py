"""Checking and normalising a `Dataset` into the form `starsrec.data.dataset` describes.

`validate` is the one entry point: every loader and the user-file reader pass their tables
through it.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from starsrec.data.calendar import country_calendar
from starsrec.data.dataset import (
    BASKET_COLUMNS,
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    TABLE_NAMES,
    DataError,
    Dataset,
    EventType,
    TemporalCuts,
    as_labels,
)

logger = logging.getLogger(__name__)

# Every check raises one DataError that names the file, the column, the first offending rows
# (with their position in the source file) and a hint, because the person reading it is
# looking at their own CSV and needs to find the line.

_MAX_SHOWN = 5
# Epoch seconds beyond this (year 2255) are almost surely milliseconds; datetime64[ns]
# cannot go past 2262 anyway.
_MAX_EPOCH_SECONDS = 9e9


def validate(dataset: Dataset, *, source: dict[str, str] | None = None) -> Dataset:
    """Check and normalise `dataset`; return a new, sorted Dataset (see module docstring).

    `source` maps a table name ("events", "items", "users", "promotions") to the file it was
    read from, so that errors name the file (and CSV line numbers) instead of the table.
    Events naming items missing from the catalogue are dropped with a WARNING and counted in
    `unknown_item_events` (added to any count already there).
    """
    where = {name: (source or {}).get(name, f"the {name} table") for name in TABLE_NAMES}
    _check_cuts(dataset.temporal_cuts)
    _check_country(dataset.country)
    items = _validate_items(dataset.items, where["items"])
    events = _validate_events(dataset.events, dataset.event_types, where["events"])
    users = None if dataset.users is None else _validate_users(dataset.users, where["users"])
    promotions = (
        None
        if dataset.promotions is None
        else _validate_promotions(dataset.promotions, where["promotions"])
    )
    events, unknown = _drop_unknown_items(events, items, where["events"], where["items"])
    return replace(
        dataset,
        events=_stable_sort(events),
        items=items,
        users=users,
        promotions=promotions,
        unknown_item_events=dataset.unknown_item_events + unknown,
    )


def _validate_events(frame: pd.DataFrame, types: tuple[EventType, ...], where: str) -> pd.DataFrame:
    df = _with_row_labels(frame)
    if df.empty:
        raise DataError(
            f"{where}: the events table has no rows. Hint: it needs one row per interaction "
            f"with columns {', '.join(EVENT_COLUMNS)}."
        )
    _require_columns(df, EVENT_COLUMNS, where)
    _check_event_types(types)
    out = df.copy()
    for column in ("user_id", "item_id"):
        out[column] = _ids(df, column, where)
    out["timestamp"] = _timestamps(df, "timestamp", where)
    kinds = as_labels(df["event_type"])
    known = [t.name for t in types]
    _fail_rows(
        df,
        ~kinds.isin(known),
        where,
        "event_type",
        "values that are not a declared event type",
        f"declared types are {', '.join(known) or '(none)'}; add the missing ones to "
        "`event_types` in dataset.json (name, weight, target) or fix the values.",
    )
    out["event_type"] = kinds
    for column in ("quantity", "price"):
        if column in df.columns:
            out[column] = _floats(df, column, where)
    for column in BASKET_COLUMNS:
        if column in df.columns:
            # Caught here, with the rows, rather than by the basket protocols much later.
            keys = as_labels(df[column])
            _fail_rows(
                df,
                keys.isna() | (keys == ""),
                where,
                column,
                "rows without a basket or session",
                "every row needs one (views and carts too: give them their session); fill "
                "them in, or drop the column to make a user's events at one timestamp a basket.",
            )
    return out


def _validate_items(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    df = _with_row_labels(frame)
    if df.empty:
        raise DataError(f"{where}: the items table has no rows. Hint: list every catalogue item.")
    _require_columns(df, ITEM_COLUMNS, where)
    out = df.copy()
    out["item_id"] = _ids(df, "item_id", where)
    _fail_rows(
        df,
        out["item_id"].duplicated(keep=False),
        where,
        "item_id",
        "rows that repeat an item id",
        "each item must appear once; merge or drop the duplicate rows.",
    )
    text = as_labels(df["text"])
    _fail_rows(
        df,
        text.isna() | (text == ""),
        where,
        "text",
        "items with empty or missing text",
        "every item needs a title or description (it is what the text encoder reads).",
    )
    out["text"] = text
    for column in ("class", "subclass"):
        if column in df.columns:
            out[column] = as_labels(df[column])
    if "price" in df.columns:
        out["price"] = _floats(df, "price", where)
    out["available"] = _availability(df, where)
    return out.reset_index(drop=True)


def _validate_users(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    df = _with_row_labels(frame)
    _require_columns(df, ("user_id",), where)
    out = df.copy()
    out["user_id"] = _ids(df, "user_id", where)
    _fail_rows(
        df,
        out["user_id"].duplicated(keep=False),
        where,
        "user_id",
        "rows that repeat a user id",
        "the users table holds one row of static features per user.",
    )
    for column in df.columns.drop("user_id"):
        out[column] = as_labels(df[column])
    return out.reset_index(drop=True)


def _validate_promotions(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    df = _with_row_labels(frame)
    _require_columns(df, ("name", "start", "end"), where)
    out = df.copy()
    out["name"] = as_labels(df["name"])
    out["start"] = _timestamps(df, "start", where)
    out["end"] = _timestamps(df, "end", where)
    _fail_rows(
        df,
        out["end"] < out["start"],
        where,
        "end",
        "promotions that end before they start",
        "swap start and end, or fix the dates.",
    )
    return out.reset_index(drop=True)


def _check_event_types(types: tuple[EventType, ...]) -> None:
    names = [t.name for t in types]
    if not names:
        raise DataError("no event types declared. Hint: list them in dataset.json `event_types`.")
    if len(set(names)) != len(names):
        raise DataError(f"event type names must be unique, got {names}.")


def _check_cuts(cuts: TemporalCuts | None) -> None:
    if cuts is None:
        return
    try:
        validation, test = pd.Timestamp(cuts.validation), pd.Timestamp(cuts.test)
    except ValueError as err:
        raise DataError(f"temporal_cuts must be ISO dates, got {cuts}: {err}") from None
    if validation > test:
        raise DataError(f"temporal_cuts.validation ({validation}) is after test ({test}).")


def _check_country(country: str | None) -> None:
    # Checked here so that a typo fails `data prepare`, not training minutes later.
    if not country:  # no country: no holidays (CalendarEvents reads "" the same way)
        return
    try:
        country_calendar(country, range(2000, 2001))
    except DataError as error:
        raise DataError(
            f"country: {error}, or leave `country` out of dataset.json (no holidays)"
        ) from None


def _drop_unknown_items(
    events: pd.DataFrame, items: pd.DataFrame, where: str, items_where: str
) -> tuple[pd.DataFrame, int]:
    unknown = ~events["item_id"].isin(items["item_id"])
    count = int(unknown.sum())
    if count:
        examples = events.loc[unknown, "item_id"].drop_duplicates().head(_MAX_SHOWN).tolist()
        logger.warning(
            "%s: dropped %d events whose item_id is not in %s (e.g. %s)",
            where,
            count,
            items_where,
            ", ".join(repr(e) for e in examples),
        )
    return events.loc[~unknown], count


def _stable_sort(events: pd.DataFrame) -> pd.DataFrame:
    # np.lexsort is stable, so events at the same (user, time) keep source order (basket
    # add-to-cart order, invoice lines); the last key is the primary one.
    users = pd.factorize(events["user_id"], sort=True)[0]
    times = events["timestamp"].to_numpy().view("i8")
    return events.iloc[np.lexsort((times, users))].reset_index(drop=True)


def _with_row_labels(frame: pd.DataFrame) -> pd.DataFrame:
    # Errors cite the frame's own row labels: a loader that filtered its source keeps the
    # source's row numbers there. Duplicate labels cannot point at a row, so they are reset.
    return frame if frame.index.is_unique else frame.reset_index(drop=True)


# --- column normalisers (each returns a new Series aligned with the frame) ------------------


def _ids(df: pd.DataFrame, column: str, where: str) -> pd.Series:
    """Ids as str: 12, 12.0 and " 12" all become "12", so CSV and Parquet ids agree."""
    ids = as_labels(df[column])
    _fail_rows(
        df,
        ids.isna() | (ids == ""),
        where,
        column,
        "missing ids",
        f"every row needs a {column}; drop the incomplete rows.",
    )
    return ids


def _timestamps(df: pd.DataFrame, column: str, where: str) -> pd.Series:
    """datetime64[ns], naive UTC, from datetimes, ISO 8601 strings or integer epoch seconds."""
    values = df[column]
    hint = "use ISO 8601 (2011-12-09 or 2011-12-09 12:50:00), a datetime column, or epoch seconds."
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values if values.dt.tz is None else values.dt.tz_convert(None)
    elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        parsed = _from_epoch(df, column, values, where)
    else:
        text = as_labels(values)
        if text.notna().any() and text.dropna().str.fullmatch(r"-?\d+").all():
            parsed = _from_epoch(df, column, pd.to_numeric(text), where)
        else:
            parsed = pd.to_datetime(
                values, format="ISO8601", errors="coerce", utc=True
            ).dt.tz_convert(None)
    # datetime64[ns] spans 1677..2262; a date outside is a typo, not a timestamp.
    bad = parsed.isna() | (parsed < pd.Timestamp.min) | (parsed > pd.Timestamp.max)
    _fail_rows(df, bad, where, column, "values that are not timestamps", hint)
    return parsed.astype("datetime64[ns]")


def _from_epoch(df: pd.DataFrame, column: str, seconds: pd.Series, where: str) -> pd.Series:
    _fail_rows(
        df,
        seconds.abs() > _MAX_EPOCH_SECONDS,
        where,
        column,
        "epoch values too large to be seconds",
        "epoch timestamps must be in seconds; divide milliseconds by 1000.",
    )
    return pd.to_datetime(seconds.astype(float), unit="s")


def _floats(df: pd.DataFrame, column: str, where: str) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce").astype(float)
    _fail_rows(
        df,
        values.isna() & df[column].notna(),
        where,
        column,
        "values that are not numbers",
        "use plain numbers (a dot as decimal separator, no currency signs).",
    )
    return values


_TRUE = {"true", "1", "yes", "y", "t", "1.0"}
_FALSE = {"false", "0", "no", "n", "f", "0.0"}


def _availability(df: pd.DataFrame, where: str) -> pd.Series:
    """`available` as bool, True where absent or missing (an item is in stock unless told)."""
    if "available" not in df.columns:
        return pd.Series(True, index=df.index)
    values = df["available"]
    if pd.api.types.is_bool_dtype(values) and not values.hasnans:
        return values.astype(bool)
    text = as_labels(values).str.lower()
    truth = text.map(lambda v: v in _TRUE, na_action="ignore")
    unknown = text.notna() & ~text.isin(_TRUE | _FALSE)
    _fail_rows(
        df, unknown, where, "available", "values that are not true/false", "use true or false."
    )
    return truth.fillna(True).astype(bool)


# --- error reporting ------------------------------------------------------------------------


def _require_columns(df: pd.DataFrame, required: tuple[str, ...], where: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: required column(s) {', '.join(repr(c) for c in missing)} missing. "
            f"Columns present: {', '.join(map(str, df.columns)) or '(none)'}. "
            f"Hint: the table needs {', '.join(required)}; rename the matching columns."
        )


def _fail_rows(
    df: pd.DataFrame, bad: pd.Series, where: str, column: str, problem: str, hint: str
) -> None:
    """Raise one DataError listing the first offending rows of `df` by their row labels."""
    positions = np.flatnonzero(np.asarray(bad, dtype=bool))
    if positions.size == 0:
        return
    csv = where.lower().endswith(".csv")
    convention = "line numbers in the file, header = line 1" if csv else "0-based row numbers"
    shown = [
        f"  {_row_name(df.index[p], csv)}: {_describe_row(df.iloc[p])}"
        for p in positions[:_MAX_SHOWN]
    ]
    raise DataError(
        f"{where}: column '{column}' has {positions.size} {problem}. "
        f"First offending rows ({convention}):\n" + "\n".join(shown) + f"\nHint: {hint}"
    )


def _row_name(label: object, csv: bool) -> str:
    if isinstance(label, int | np.integer):
        return f"line {label + 2}" if csv else f"row {label}"
    return f"row {label!r}"


def _describe_row(row: pd.Series) -> str:
    def short(value: object) -> str:
        # repr for text shows stray spaces and quotes; str keeps numbers/dates readable.
        text = repr(value) if isinstance(value, str) else str(value)
        return text if len(text) <= 40 else text[:37] + "..."

    return ", ".join(f"{name}={short(value)}" for name, value in row.items())
