"""`starsrec recommend`: many users' recommendations into one Parquet file, in chunks.

The users go through `Model.recommend` a chunk at a time, so a served artifact answers each
one with the service's own request (index, encoder, event store, filters: the rows equal
`POST /v1/recommend`'s answers), and a baseline with its own `Recommender`. Each chunk's
rows are appended to the file by a pyarrow `ParquetWriter` and dropped: memory holds the
user ids and one chunk of results, however many users. The file is written under a
temporary name and renamed once complete, so a run cut short leaves no file that looks
finished.

Unknown users (named in a file, with no history the model can use) are skipped, counted and
logged with a few examples: answered, each would get the same context-only list, which a
campaign would send as if it were personal. `BatchConfig(unknown="fail")` (`--unknown-users
fail`) refuses the run instead; a file of only unknown users is always refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from starsrec.data.dataset import DataError
from starsrec.data.integrity import write_atomic
from starsrec.serving.api import RESULT_COLUMNS, Model
from starsrec.serving.request import FiltersIn, check_k, parse_timestamp

logger = logging.getLogger(__name__)

ALL_USERS = "all"
UNKNOWN_POLICIES = ("skip", "fail")
SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float64()),
        ("text", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("shared_tags", pa.list_(pa.string())),
        ("memory", pa.string()),
    ]
)
assert tuple(SCHEMA.names) == RESULT_COLUMNS  # the file is the API's frame


@dataclass(frozen=True)
class BatchConfig:
    """How a batch runs. chunk_size: users answered and written per step (the memory
    bound); unknown: "skip" (count and log them) or "fail" for users the model does not
    know; progress: a tqdm bar."""

    chunk_size: int = 1000
    unknown: str = "skip"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {self.unknown!r}")


@dataclass(frozen=True)
class BatchSummary:
    """What a batch wrote: users answered, unknown users skipped, rows, seconds."""

    users: int
    skipped: int
    rows: int
    seconds: float

    @property
    def users_per_s(self) -> float:
        """Users answered per second."""
        return self.users / self.seconds if self.seconds > 0 else float("inf")


def read_user_ids(path: str | Path) -> list[str]:
    """User ids from a file: a `user_id` column of a .parquet or .csv file (or its only
    column), else one id per line of text; blank lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such users file (give a file of user ids, or all)")
    if path.suffix in (".parquet", ".csv"):
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
        if "user_id" not in table.columns and len(table.columns) != 1:
            raise DataError(
                f"{path}: no user_id column (columns: {list(table.columns)[:10]}); name the "
                "column of user ids user_id"
            )
        column = table["user_id"] if "user_id" in table.columns else table.iloc[:, 0]
        ids = column.dropna().astype(str).str.strip()
        return [i for i in ids.tolist() if i]
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def select_users(model: Model, source: str | Path, unknown: str = "skip") -> tuple[list[str], int]:
    """(the users to answer, how many were skipped as unknown) for `source`: "all" (the
    model's known users) or a file (`read_user_ids`; repeats kept once, in file order)."""
    if str(source) == ALL_USERS:
        return model.users(), 0
    named = read_user_ids(source)
    ids = list(dict.fromkeys(named))
    if len(ids) < len(named):
        logger.info("%s: %d repeated user ids answered once", source, len(named) - len(ids))
    known = model.known_users(ids)
    missing = [user for user, ok in zip(ids, known.tolist(), strict=True) if not ok]
    if missing:
        examples = ", ".join(repr(u) for u in missing[:5])
        message = (
            f"{source}: {len(missing)} of {len(ids)} users are unknown to the model "
            f"(no events, not indexed), e.g. {examples}"
        )
        if unknown == "fail" or len(missing) == len(ids):
            raise DataError(f"{message}; check the ids match the dataset's user_id column")
        logger.warning("%s; skipped (--unknown-users fail refuses instead)", message)
    return [user for user, ok in zip(ids, known.tolist(), strict=True) if ok], len(missing)


def write_recommendations(
    model: Model,
    user_ids: list[str],
    out: str | Path,
    k: int = 10,
    filters: str | dict | FiltersIn | None = None,
    timestamp: str | float | datetime | None = None,
    config: BatchConfig = BatchConfig(),
    skipped: int = 0,
) -> BatchSummary:
    """Write the top k of every user in `user_ids` to Parquet file `out` (`SCHEMA`), in
    chunks of `config.chunk_size`, at one request time for all (`timestamp`; now when
    None) under `filters` (as the HTTP API's). `skipped`: unknown users left out before,
    for the summary."""
    k, request = check_k(k), model.check_filters(filters)  # bad input fails before any work
    parsed = parse_timestamp(timestamp)
    at = time.time() if parsed is None else parsed  # one time: chunks cannot disagree
    started, rows = time.perf_counter(), 0

    def write(temporary: Path) -> None:
        nonlocal rows
        with (
            pq.ParquetWriter(temporary, SCHEMA) as writer,
            tqdm(
                total=len(user_ids), unit="user", desc="recommend", disable=not config.progress
            ) as bar,
        ):
            for first in range(0, len(user_ids), config.chunk_size):
                chunk = user_ids[first : first + config.chunk_size]
                frame = model.recommend(chunk, k, request, at)
                writer.write_table(pa.Table.from_pandas(frame, SCHEMA, preserve_index=False))
                rows += len(frame)
                bar.update(len(chunk))

    write_atomic(out, write)
    summary = BatchSummary(len(user_ids), skipped, rows, time.perf_counter() - started)
    logger.info(
        "wrote %s: %d users, %d rows in %.1f s (%.0f users/s)",
        out,
        summary.users,
        summary.rows,
        summary.seconds,
        summary.users_per_s,
    )
    return summary
