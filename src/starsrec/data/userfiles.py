"""Reading a directory of the user's own CSV/Parquet files into a validated `Dataset`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from starsrec.data.dataset import (
    TABLE_NAMES,
    DataError,
    Dataset,
    EventType,
    TemporalCuts,
    as_labels,
    exclude_seen_of,
)
from starsrec.data.validation import validate

logger = logging.getLogger(__name__)

_REQUIRED_TABLES = ("events", "items")
_META_KEYS = {"name", "event_types", "country", "allow_repeats", "temporal_cuts", "notes"}


def read_user_files(path: str | Path) -> Dataset:
    """Read a directory of the user's own files and return it validated.

    Expects `events.csv|events.parquet` and `items.csv|items.parquet`, optionally
    `users.*`, `promotions.*` and `dataset.json` (name, event_types [{name, weight, target}],
    country, allow_repeats, temporal_cuts {validation, test}, notes). Without dataset.json
    the name is the directory's and every event type found counts as weight 1, target True.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"{root}: no such directory. Expected a directory holding events.csv (or "
            ".parquet), items.csv (or .parquet) and optionally users, promotions, dataset.json."
        )
    tables: dict[str, pd.DataFrame] = {}
    source: dict[str, str] = {}
    for name in TABLE_NAMES:
        file = _table_file(root, name, required=name in _REQUIRED_TABLES)
        if file is not None:
            tables[name] = _read_table(file)
            source[name] = str(file)
    meta = _read_meta(root)
    types = meta.get("event_types")
    if types is None:
        types = _types_found(tables["events"])
    cuts = meta.get("temporal_cuts")
    dataset = Dataset(
        name=meta.get("name", root.resolve().name),
        events=tables["events"],
        items=tables["items"],
        event_types=_parse_event_types(types, root / "dataset.json"),
        users=tables.get("users"),
        promotions=tables.get("promotions"),
        country=meta.get("country"),
        exclude_seen=exclude_seen_of(meta),
        temporal_cuts=_parse_cuts(cuts, root / "dataset.json") if cuts else None,
        notes={str(k): str(v) for k, v in meta.get("notes", {}).items()},
    )
    return validate(dataset, source=source)


def _table_file(root: Path, name: str, *, required: bool) -> Path | None:
    found = [
        root / f"{name}.{ext}" for ext in ("csv", "parquet") if (root / f"{name}.{ext}").exists()
    ]
    if len(found) > 1:
        raise DataError(
            f"{root}: both {found[0].name} and {found[1].name} exist; keep one of them."
        )
    if not found and required:
        raise DataError(f"{root}: expected {name}.csv or {name}.parquet, found neither.")
    return found[0] if found else None


def _read_table(file: Path) -> pd.DataFrame:
    try:
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
        # Ids are read as text so "007" keeps its zeros; only empty cells are missing, so an
        # item titled "NA" or "None" stays a title.
        return pd.read_csv(
            file,
            dtype={"user_id": str, "item_id": str},
            keep_default_na=False,
            na_values=[""],
        )
    except (OSError, ValueError) as err:  # pandas and pyarrow parse errors are ValueErrors
        raise DataError(f"{file}: cannot be read as {file.suffix[1:]}: {err}") from err


def _read_meta(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object with keys {sorted(_META_KEYS)}.")
    unknown = set(meta) - _META_KEYS
    if unknown:
        logger.warning("%s: ignoring unknown keys %s", path, sorted(unknown))
    return meta


def _types_found(events: pd.DataFrame) -> list[str]:
    if "event_type" not in events.columns:
        return []  # validate() reports the missing column with the file name
    kinds = as_labels(events["event_type"]).dropna()
    return sorted(k for k in kinds.unique() if k)


def _parse_event_types(types: list, path: Path) -> tuple[EventType, ...]:
    parsed = []
    for entry in types:
        try:
            parsed.append(EventType(entry) if isinstance(entry, str) else EventType(**entry))
        except TypeError as err:
            raise DataError(
                f"{path}: event_types entry {entry!r} is invalid ({err}). "
                'Hint: use {"name": "purchase", "weight": 1.0, "target": true}.'
            ) from None
    return tuple(parsed)


def _parse_cuts(cuts: dict, path: Path) -> TemporalCuts:
    try:
        return TemporalCuts(validation=str(cuts["validation"]), test=str(cuts["test"]))
    except (KeyError, TypeError):
        raise DataError(
            f'{path}: temporal_cuts must be {{"validation": DATE, "test": DATE}}, got {cuts!r}.'
        ) from None
