"""The SQLite event store's counters, kept by triggers so that reading one never scans the
events: the number of stored events (`count`), and the live counters (`starsrec.data.live`),
a table with one row per (item, event type, half-life). Both follow every inserted event (an
ignored duplicate fires none) and every deleted one (a forgotten user's), and are set in one
aggregate after a bulk load or for a file from before them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from starsrec.data.calendar import DAY
from starsrec.data.live import LIVE_HALF_LIVES_DAYS

# The counters and the trigger that keeps them (`starsrec.data.live.fold`, in SQL): one row
# per (item, event type, half-life in days).
# Every change stamps the rows it touches with the next number of a sequence (`live_seq`:
# the last number given, and the one of the last recount of every row), so a reader can
# take only what changed since its last read (`read_live_changes`).
LIVE_TABLE = (
    "CREATE TABLE live_counts (item_id TEXT NOT NULL, event_type TEXT NOT NULL, "
    "half_life REAL NOT NULL, value REAL NOT NULL, updated REAL NOT NULL, seq INTEGER NOT NULL, "
    "PRIMARY KEY (item_id, event_type, half_life))"
)
LIVE_SEQ = (
    "CREATE INDEX live_counts_seq ON live_counts (seq)",
    "CREATE TABLE live_seq (n INTEGER NOT NULL, reset INTEGER NOT NULL)",
    "INSERT INTO live_seq VALUES (0, 0)",
)
_NEXT = "UPDATE live_seq SET n = n + 1; "
_SEQ = "(SELECT n FROM live_seq)"
_RATE = f"(0.6931471805599453 / (half_life * {DAY}))"  # ln 2 / h, per second
LIVE_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS live_count AFTER INSERT ON events BEGIN "
    + _NEXT
    + "INSERT INTO live_counts (item_id, event_type, half_life, value, updated, seq) VALUES "
    + ", ".join(
        f"(NEW.item_id, NEW.event_type, {h!r}, 1.0, NEW.timestamp, {_SEQ})"
        for h in LIVE_HALF_LIVES_DAYS
    )
    + " ON CONFLICT (item_id, event_type, half_life) DO UPDATE SET "
    f"value = CASE WHEN excluded.updated >= updated "
    f"THEN value * exp(-{_RATE} * (excluded.updated - updated)) + 1.0 "
    f"ELSE value + exp(-{_RATE} * (updated - excluded.updated)) END, "
    "updated = max(updated, excluded.updated), seq = excluded.seq; END"
)
# A deleted event (a forgotten user's) leaves the counts: its weight at the counter's update
# time is subtracted, the exact inverse of its fold (clipped at 0 against rounding).
LIVE_UNTRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS live_uncount AFTER DELETE ON events BEGIN "
    + _NEXT
    + f"UPDATE live_counts SET value = max(value - exp(-{_RATE} * (updated - OLD.timestamp)), "
    f"0.0), seq = {_SEQ} WHERE item_id = OLD.item_id AND event_type = OLD.event_type; END"
)
LIVE_READ = "SELECT item_id, half_life, value, updated FROM live_counts WHERE event_type IN ({})"
# Every counter of the items with a counter changed after a sequence number.
LIVE_CHANGED = LIVE_READ + (" AND item_id IN (SELECT item_id FROM live_counts WHERE seq > ?)")


# The number of stored events: one row, one more per insert and one fewer per delete.
COUNT_TABLE = "CREATE TABLE IF NOT EXISTS event_count (n INTEGER NOT NULL)"
COUNT_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS event_added AFTER INSERT ON events BEGIN "
    "UPDATE event_count SET n = n + 1; END",
    "CREATE TRIGGER IF NOT EXISTS event_removed AFTER DELETE ON events BEGIN "
    "UPDATE event_count SET n = n - 1; END",
)
COUNT_READ = "SELECT n FROM event_count"


def open_counters(conn: sqlite3.Connection) -> None:
    """Create the counters and their triggers where missing, inside the caller's write
    transaction; a file from before them gets its counts computed once from its events."""
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?"
    columns = {row[1] for row in conn.execute("PRAGMA table_info(live_counts)")}
    # New, or from before the counters, their forget trigger or their sequence: recounted.
    if "seq" not in columns or not conn.execute(exists, ("live_uncount",)).fetchone():
        for old in ("TRIGGER IF EXISTS live_count", "TRIGGER IF EXISTS live_uncount"):
            conn.execute(f"DROP {old}")
        conn.execute("DROP TABLE IF EXISTS live_counts")
        conn.execute("DROP TABLE IF EXISTS live_seq")
        for statement in (LIVE_TABLE, *LIVE_SEQ):
            conn.execute(statement)
        _set_live_counts(conn)
        conn.execute(LIVE_TRIGGER)
        conn.execute(LIVE_UNTRIGGER)
    if not conn.execute(exists, ("event_removed",)).fetchone():
        conn.execute(COUNT_TABLE)
        _set_event_count(conn)
        for trigger in COUNT_TRIGGERS:
            conn.execute(trigger)


@contextmanager
def bulk_insert(conn: sqlite3.Connection) -> Iterator[None]:
    """Inserts without the per-event triggers, inside the caller's write transaction; the
    counters are set in one aggregate each at the end (folding every event costs more)."""
    conn.execute("DROP TRIGGER live_count")
    conn.execute("DROP TRIGGER event_added")
    yield
    _set_live_counts(conn)
    _set_event_count(conn)
    conn.execute(LIVE_TRIGGER)
    conn.execute(COUNT_TRIGGERS[0])


def _set_event_count(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM event_count")
    conn.execute("INSERT INTO event_count SELECT count(*) FROM events")


def _set_live_counts(conn: sqlite3.Connection) -> None:
    """Set every live counter from the stored events, in one aggregate (what the trigger
    would have folded in, event by event; counts of forgotten users' events drop out)."""
    half_lives = ", ".join(f"({h!r})" for h in LIVE_HALF_LIVES_DAYS)
    conn.execute("DELETE FROM live_counts")
    conn.execute("UPDATE live_seq SET n = n + 1, reset = n + 1")  # readers read it all again
    conn.execute(
        f"WITH h(half_life) AS (VALUES {half_lives}) "
        "INSERT INTO live_counts SELECT item_id, event_type, h.half_life, "
        f"sum(exp(-{_RATE} * (t - timestamp))), t, {_SEQ} FROM (SELECT item_id, event_type, "
        "timestamp, max(timestamp) OVER (PARTITION BY item_id, event_type) AS t FROM events) "
        "CROSS JOIN h GROUP BY item_id, event_type, h.half_life"
    )


def read_live_changes(
    conn: sqlite3.Connection, event_types: Sequence[str], since: int
) -> tuple[int, bool, list[tuple[str, float, float, float]]]:
    """(the last sequence number, whether every counter is listed, the counter rows (item id,
    half-life, value, updated) of `event_types` of every item with a counter changed after
    `since`, or of every item when they were all recounted since). Changes stamped after the
    number read may be listed too, and listed again next time: an overwrite, never a loss."""
    seq, reset = conn.execute("SELECT n, reset FROM live_seq").fetchone()
    full = reset > since
    types = ", ".join("?" * len(event_types))
    if full:
        rows = conn.execute(LIVE_READ.format(types), tuple(event_types)).fetchall()
    else:
        rows = conn.execute(LIVE_CHANGED.format(types), (*event_types, since)).fetchall()
    return seq, full, rows
