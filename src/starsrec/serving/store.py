"""The serving stage's event store: shopper events persisted for short-term session memory.

The online service appends each shopper event here, and the very next recommendation request
reads the user's recent events back. `EventStore` is the backend-neutral interface;
`SQLiteEventStore` is the single-host implementation and `redis_store.RedisEventStore` the one
several server replicas share.

Design of the SQLite backend:

- Acknowledged = persisted. WAL journal with `synchronous=FULL` fsyncs the log on every commit,
  and each `append` call is one transaction, so once `append` returns its events survive a
  process kill (and a power loss).
- Idempotent on `event_id` (the primary key) through `INSERT OR IGNORE`: a retried client
  request stores nothing twice, and the first write of an id wins, also within one call.
- "Arrival order" is the table's implicit rowid: a new row gets one more than the largest,
  so it grows with every insert (`forget` deletes rows, but a later insert still sorts after
  every row left). SQLite appends the rowid to every index entry, so the index on
  `(user_id, timestamp)` is really on `(user_id, timestamp, rowid)` and serves `recent`
  (a range of it, ending at the request time) without a sort.
- Thread safety: one connection opened with `check_same_thread=False` and a lock around every
  operation. Simple and correct beats a connection pool at this scale; other processes may
  open the same file (WAL allows concurrent readers, and writers wait up to `_BUSY_TIMEOUT_S`).
- `PRAGMA user_version` records the schema version, so a later schema change is detected and
  a file written by a newer version is refused instead of misread.
- Counters kept by triggers in the same transaction (`starsrec.serving.sqlite_counters`): the
  number of stored events (`count`, which /healthz reads), and the live counts
  (`starsrec.data.live`): every inserted event is folded into its item's counter per (event
  type, half-life), so a request reads every item's recent sales without scanning events, and
  a deleted event (`forget`) is taken out again. An ignored duplicate counts nothing.
"""

from __future__ import annotations

import logging
import math
import numbers
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from tqdm.auto import tqdm

from starsrec.data.live import counter_table
from starsrec.serving.sqlite_counters import (
    COUNT_READ,
    bulk_insert,
    open_counters,
    read_live_changes,
)

logger = logging.getLogger(__name__)
MAX_TIMESTAMP = 1e11  # about the year 5138: later "timestamps" are milliseconds by mistake

SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 10.0
_COLUMNS = "event_id, user_id, item_id, event_type, timestamp"
_INSERT = f"INSERT OR IGNORE INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
_RECENT = (
    f"SELECT {_COLUMNS} FROM events WHERE user_id = ? AND timestamp <= ? "
    "ORDER BY timestamp DESC, rowid DESC LIMIT ?"
)


@dataclass(frozen=True)
class Event:
    """One shopper event. `event_id` is chosen by the client and is the idempotency key."""

    event_id: str
    user_id: str
    item_id: str
    event_type: str  # e.g. "purchase", "view"
    timestamp: float  # unix seconds (UTC)


def is_timestamp(value: object) -> bool:
    """Unix seconds in [0, MAX_TIMESTAMP): finite, not a bool (True is always a bug), and not
    milliseconds by mistake."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and not value < 0  # numbers.Real promises < and <=, not the >= that 0 <= value needs
        and value < MAX_TIMESTAMP
    )


def validated_row(event: object) -> tuple[str, str, str, str, float]:
    """Validate one event and return its table row; raises ValueError naming the problem."""
    if not isinstance(event, Event):
        raise ValueError(f"expected an Event, got {type(event).__name__}: build Event(...) objects")
    for field in ("event_id", "user_id", "item_id", "event_type"):
        value = getattr(event, field)
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"event {event.event_id!r}: {field} must be a non-empty string, got {value!r}"
            )
    ts = event.timestamp
    # bool is an int subclass, and True as a timestamp is always a bug.
    if not is_timestamp(ts):
        raise ValueError(
            f"event {event.event_id!r}: timestamp must be unix seconds from 1970 on (not "
            f"milliseconds), got {ts!r}"
        )
    return event.event_id, event.user_id, event.item_id, event.event_type, float(ts)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolling back on any error.

    IMMEDIATE takes the write lock up front, so a writer never fails half-way on a lock
    upgrade; other writers wait for it up to the busy timeout.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def check_limit(limit: int) -> None:
    """A ValueError unless `limit` is an integer >= 1 (not a bool)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")


def check_recent_many(user_ids: Sequence[str], limit: int) -> None:
    """The argument checks both backends' `recent_many` share."""
    if isinstance(user_ids, str):
        raise ValueError("user_ids must be a sequence of ids, not one string: use recent()")
    check_limit(limit)


class EventStore(ABC):
    """Backend-neutral interface of the event store (see the module docstring)."""

    @abstractmethod
    def append(self, events: Sequence[Event]) -> int:
        """Store events; return how many were new.

        Idempotent on event_id: an id already stored is ignored (first write wins), also within
        one call. The batch is validated first and rejected whole if any event is invalid. When
        this returns, the events are durable (acknowledged = persisted).
        """

    def recent(self, user_id: str, limit: int, at: float | None = None) -> list[Event]:
        """The user's last `limit` events at or before `at` (unix seconds; None: any time),
        oldest first, ordered by (timestamp, arrival order). A request passes its own time,
        so no number of later events can push the ones it may use out of the window."""
        return self.recent_many([user_id], limit, at)[user_id]

    @abstractmethod
    def recent_many(
        self, user_ids: Sequence[str], limit: int, at: float | None = None
    ) -> dict[str, list[Event]]:
        """`recent` for many users in one round trip; users without events map to []."""

    @abstractmethod
    def forget(self, user_id: str) -> int:
        """Delete every stored event of the user (the right to be forgotten); returns how
        many. Durable when it returns, like `append`. Their event ids are forgotten too: an
        event resent with one of them is stored again."""

    @abstractmethod
    def forgotten(self, after: int = 0) -> tuple[list[str], int]:
        """(the users `forget` deleted since position `after` of the store's journal of
        forgets, in order; the position to pass next time). Every server process sharing the
        store follows it, so a forget taken by one drops the user's long-term memory in all."""

    @abstractmethod
    def latest_time(self, user_id: str) -> float | None:
        """Timestamp of the user's latest event, or None if the user has none."""

    @abstractmethod
    def live_counts(self, event_types: Sequence[str], at: float) -> tuple[list[str], np.ndarray]:
        """(the ids of the items with stored events of `event_types`, (R, H) float64 their
        live counts at time `at`: `starsrec.data.live`, one column per LIVE_HALF_LIVES_DAYS),
        over every shopper's events of those types, kept on insert, never a scan of events."""

    def live_changes(
        self, event_types: Sequence[str], at: float, since: int = 0
    ) -> tuple[int, bool, list[str], np.ndarray]:
        """(a number to pass as `since` next time, whether every item with counts is listed,
        the ids and (R, H) live counts at `at` of the items whose counters changed after
        `since`), so a reader keeps its copy without reading every counter each time. Here:
        all of them, always."""
        return 0, True, *self.live_counts(event_types, at)

    @abstractmethod
    def count(self) -> int:
        """Number of stored events."""

    @abstractmethod
    def has(self, event_id: str) -> bool:
        """Whether an event with this id is stored."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend; idempotent. The store is unusable afterwards."""

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self.has(event_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SQLiteEventStore(EventStore):
    """Event store in one SQLite file (WAL, synchronous=FULL); safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the store at `path`, creating missing parent directories."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per call.
            self._conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._open_schema()
        except BaseException as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if isinstance(exc, sqlite3.DatabaseError):
                raise ValueError(
                    f"{self.path} is not a usable SQLite event store ({exc}); "
                    "pass the path of an event store database or of a new file"
                ) from exc
            raise

    def _open_schema(self) -> None:
        conn = self._db()
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            logger.warning(
                "%s: journal mode is %r, not 'wal'; durability may be weaker", self.path, mode
            )
        conn.execute("PRAGMA synchronous=FULL")
        # IMMEDIATE takes the write lock, so two processes creating one new file do not race.
        with _transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path} has event store schema version {version}, newer than the "
                    f"supported {SCHEMA_VERSION}: upgrade starsrec to open it"
                )
            # Added inside schema version 1 (older files gain them; older code ignores them).
            forgets = "CREATE TABLE IF NOT EXISTS forgets (seq INTEGER PRIMARY KEY, user_id TEXT)"
            if version == SCHEMA_VERSION:
                conn.execute(forgets)
                open_counters(conn)
                return
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise ValueError(
                    f"{self.path} is an SQLite database but not an event store "
                    "(it has tables and no schema version): pass a new or event store path"
                )
            conn.execute(
                "CREATE TABLE events (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
                "item_id TEXT NOT NULL, event_type TEXT NOT NULL, timestamp REAL NOT NULL)"
            )
            conn.execute("CREATE INDEX events_user_time ON events (user_id, timestamp)")
            conn.execute(forgets)
            open_counters(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            logger.info("created event store %s", self.path)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"event store {self.path} is closed: open a new SQLiteEventStore")
        return self._conn

    def append(self, events: Sequence[Event]) -> int:
        """See `EventStore.append`: one `INSERT OR IGNORE` transaction."""
        rows = [validated_row(e) for e in events]  # validate all before writing any
        if not rows:
            return 0
        with self._lock:
            conn = self._db()
            with _transaction(conn):
                # rowcount: the events inserted, not the counters their trigger changed
                return conn.executemany(_INSERT, rows).rowcount

    def load(self, events: Iterable[Event], progress: bool = True, batch_size: int = 50_000) -> int:
        """Bulk-seed history events in one transaction; returns how many were new.

        Same validation and idempotency as `append`; an invalid event anywhere rolls the whole
        load back. Holds the write lock for the whole load, so seed before serving traffic;
        the live counts are computed once at its end.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = len(events) if isinstance(events, Sequence) else None
        iterator: Iterator[Event] = iter(events)
        with self._lock:
            conn = self._db()
            added = 0
            with (
                tqdm(total=total, desc="load events", unit="ev", disable=not progress) as bar,
                _transaction(conn),
                bulk_insert(conn),
            ):
                while batch := list(islice(iterator, batch_size)):
                    added += conn.executemany(_INSERT, [validated_row(e) for e in batch]).rowcount
                    bar.update(len(batch))
        logger.info("loaded %d new events into %s", added, self.path)
        return added

    def recent_many(
        self, user_ids: Sequence[str], limit: int, at: float | None = None
    ) -> dict[str, list[Event]]:
        """See `EventStore.recent_many`: one read transaction, a LIMIT query per user."""
        check_recent_many(user_ids, limit)
        end = MAX_TIMESTAMP if at is None else float(at)  # every stored time is below it
        out: dict[str, list[Event]] = {}
        with self._lock:
            conn = self._db()
            # One read transaction gives every user the same snapshot. A LIMIT query per user
            # reads only `limit` index entries each, unlike a window function over all history.
            conn.execute("BEGIN")
            try:
                for user in dict.fromkeys(user_ids):
                    rows = conn.execute(_RECENT, (user, end, limit)).fetchall()
                    out[user] = [Event(*row) for row in reversed(rows)]
            finally:
                conn.execute("COMMIT")
        return out

    def forget(self, user_id: str) -> int:
        """See `EventStore.forget`: one transaction, the DELETE and its journal entry."""
        with self._lock:
            conn = self._db()
            with _transaction(conn):
                conn.execute("INSERT INTO forgets (user_id) VALUES (?)", (user_id,))
                return conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount

    def forgotten(self, after: int = 0) -> tuple[list[str], int]:
        """See `EventStore.forgotten`: positions are the journal's rowids."""
        with self._lock:
            sql = "SELECT seq, user_id FROM forgets WHERE seq > ? ORDER BY seq"
            rows = self._db().execute(sql, (after,)).fetchall()
        return [user for _, user in rows], (rows[-1][0] if rows else after)

    def latest_time(self, user_id: str) -> float | None:
        """See `EventStore.latest_time`."""
        with self._lock:
            sql = "SELECT max(timestamp) FROM events WHERE user_id = ?"
            return self._db().execute(sql, (user_id,)).fetchone()[0]

    def live_counts(self, event_types: Sequence[str], at: float) -> tuple[list[str], np.ndarray]:
        """See `EventStore.live_counts`: every counter read (`live_changes` since 0)."""
        _, _, ids, counts = self.live_changes(event_types, at)
        return ids, counts

    def live_changes(
        self, event_types: Sequence[str], at: float, since: int = 0
    ) -> tuple[int, bool, list[str], np.ndarray]:
        """See `EventStore.live_changes`: the counters stamped after `since`."""
        with self._lock:
            seq, full, rows = read_live_changes(self._db(), event_types, since)
        return seq, full, *counter_table(rows, at)

    def count(self) -> int:
        """See `EventStore.count`."""
        with self._lock:
            return self._db().execute(COUNT_READ).fetchone()[0]

    def has(self, event_id: str) -> bool:
        """See `EventStore.has`."""
        with self._lock:
            sql = "SELECT 1 FROM events WHERE event_id = ?"
            return self._db().execute(sql, (event_id,)).fetchone() is not None

    def close(self) -> None:
        """See `EventStore.close`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
