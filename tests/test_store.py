"""Tests for the event stores: ordering, idempotency, durability, threads, validation.

The behaviour tests (those taking the `store` fixture) run on both backends, SQLite and Redis
(the Redis cases skip when redis-server is not installed); the rest are SQLite's own."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from starsrec.serving.live_items import StoreLive
from starsrec.serving.store import SCHEMA_VERSION, Event, EventStore, SQLiteEventStore


def ev(
    event_id: str, user: str = "u1", ts: float = 0.0, item: str = "i", kind: str = "view"
) -> Event:
    return Event(event_id=event_id, user_id=user, item_id=item, event_type=kind, timestamp=ts)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        with SQLiteEventStore(tmp_path / "events.db") as s:
            yield s
        return
    from starsrec.serving.redis_store import RedisEventStore

    url = request.getfixturevalue("redis_url")  # skips when redis-server is missing
    with RedisEventStore(url, prefix=f"test-{uuid.uuid4().hex}:") as s:
        yield s


def test_recent_orders_by_time_then_arrival_and_limits(store: EventStore) -> None:
    store.append([ev("c", ts=30), ev("a", ts=10), ev("b1", ts=20), ev("x", user="u2", ts=5)])
    store.append([ev("b2", ts=20), ev("d", ts=40)])
    assert [e.event_id for e in store.recent("u1", 10)] == ["a", "b1", "b2", "c", "d"]
    assert [e.event_id for e in store.recent("u1", 3)] == ["b2", "c", "d"]
    assert store.recent("u1", 1) == [ev("d", ts=40.0)]
    assert store.recent("nobody", 5) == []
    assert isinstance(store.recent("u1", 1)[0].timestamp, float)


def test_recent_many_latest_time_count_contains(store: EventStore) -> None:
    store.append([ev("a", "u1", 1), ev("b", "u1", 2), ev("c", "u2", 3), ev("d", "u1", 0.5)])
    got = store.recent_many(["u2", "u1", "ghost", "u1"], 2)
    assert list(got) == ["u2", "u1", "ghost"]
    assert [e.event_id for e in got["u1"]] == ["a", "b"]
    assert [e.event_id for e in got["u2"]] == ["c"]
    assert got["ghost"] == []
    assert store.recent_many([], 3) == {}
    assert store.latest_time("u1") == 2.0
    assert store.latest_time("ghost") is None
    assert store.count() == 4
    assert "a" in store and store.has("c")
    assert "zzz" not in store and 42 not in store


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_limit_must_be_positive_int(store: EventStore, limit: object) -> None:
    with pytest.raises(ValueError, match="limit must be an integer >= 1"):
        store.recent("u1", limit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        store.recent_many(["u1"], limit)  # type: ignore[arg-type]


def test_recent_many_rejects_a_bare_string(store: EventStore) -> None:
    with pytest.raises(ValueError, match="not one string"):
        store.recent_many("u1", 3)


def test_append_is_idempotent_first_write_wins(store: EventStore) -> None:
    assert store.append([ev("a", ts=1, item="first"), ev("a", ts=2, item="dup"), ev("b")]) == 2
    assert store.append([ev("a", ts=9, item="retry"), ev("c")]) == 1
    assert store.append([ev("a"), ev("b"), ev("c")]) == 0
    assert store.append([]) == 0
    assert store.count() == 3
    first = [e for e in store.recent("u1", 10) if e.event_id == "a"]
    assert first == [ev("a", ts=1.0, item="first")]


def test_durable_across_connections_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "events.db"  # parents are created
    with SQLiteEventStore(path) as writer:
        writer.append([ev("a", ts=1), ev("b", ts=2)])
        # A second connection sees committed events while the writer is still open.
        raw = sqlite3.connect(path)
        assert raw.execute("SELECT count(*) FROM events").fetchone()[0] == 2
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        raw.close()
        with SQLiteEventStore(path) as other:
            assert [e.event_id for e in other.recent("u1", 5)] == ["a", "b"]
            other.append([ev("c", ts=3)])
        assert "c" in writer
    with SQLiteEventStore(path) as reopened:
        assert reopened.count() == 3
        assert reopened.latest_time("u1") == 3.0


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from starsrec.serving.store import Event, SQLiteEventStore
        store = SQLiteEventStore({str(path)!r})
        for batch in range(5):
            events = [Event(f"e{{batch}}-{{i}}", "u", "item", "view", batch * 100 + i)
                      for i in range(20)]
            assert store.append(events) == 20
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    with SQLiteEventStore(path) as store:
        assert store.count() == 100
        assert [e.event_id for e in store.recent("u", 2)] == ["e4-18", "e4-19"]


def test_concurrent_appends_lose_nothing(store: EventStore) -> None:
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(0, 200, 10):
                batch = [ev(f"t{t}-{j}", user=f"u{t}", ts=j) for j in range(i, i + 10)]
                assert store.append(batch) == 10
                store.recent(f"u{t}", 5)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert store.count() == 800
    for t in range(4):
        assert [e.event_id for e in store.recent(f"u{t}", 200)] == [f"t{t}-{j}" for j in range(200)]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (ev("x", ts=math.nan), "event 'x': timestamp must be unix seconds from 1970 on"),
        (ev("x", ts=math.inf), "event 'x': timestamp must be unix seconds"),
        (ev("x", ts=-1.0), "timestamp must be unix seconds from 1970 on"),
        (ev("x", ts=1.7e12), r"\(not milliseconds\)"),
        (ev("x", ts="12"), "timestamp must be"),  # type: ignore[arg-type]
        (ev("x", ts=True), "timestamp must be"),
        (ev(""), "event_id must be a non-empty string"),
        (ev("x", user=""), "event 'x': user_id must be a non-empty string"),
        (ev("x", item=None), "item_id must be"),  # type: ignore[arg-type]
        (ev("x", kind=""), "event_type must be a non-empty string"),
        ({"event_id": "x"}, "expected an Event, got dict"),
    ],
)
def test_invalid_event_rejects_whole_batch(store: EventStore, bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.append([ev("ok1"), bad, ev("ok2")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=message):
        store.load([ev("ok1"), bad], progress=False)  # type: ignore[list-item]
    assert store.count() == 0


def test_non_sqlite_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just some text " * 50)
    with pytest.raises(ValueError, match=r"notes\.db is not a usable SQLite event store"):
        SQLiteEventStore(path)
    assert path.read_bytes().startswith(b"this is not a database")


def test_foreign_sqlite_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE stuff (x)")
    with pytest.raises(ValueError, match="not an event store"):
        SQLiteEventStore(path)


def test_newer_schema_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    SQLiteEventStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(ValueError, match="newer than the supported"):
        SQLiteEventStore(path)


def test_closed_store_raises(tmp_path: Path) -> None:
    s = SQLiteEventStore(tmp_path / "events.db")
    s.close()
    s.close()  # idempotent
    with pytest.raises(ValueError, match="is closed"):
        s.count()


def test_bulk_load_with_duplicates(store: EventStore) -> None:
    store.append([ev("e0", ts=0, item="live")])
    history = (ev(f"e{i % 500}", user=f"u{i % 7}", ts=float(i)) for i in range(1200))
    assert store.load(history, progress=False, batch_size=64) == 499
    assert store.count() == 500
    assert store.recent("u1", 1)[0].item_id == "i"
    assert store.recent("u0", 1)[0].event_id == "e497"  # first write of e497: i=497, u0
    assert store.load([ev("new")], progress=True) == 1
    with pytest.raises(ValueError, match="batch_size"):
        store.load([], batch_size=0)
    assert [e.item_id for e in store.recent("u1", 1000) if e.event_id == "e0"] == ["live"]


def test_ties_keep_arrival_order_across_many_events(store: EventStore) -> None:
    """Arrival numbers past 9, 99, 999 (and Redis's 1000-event script chunks) keep their order."""
    for i in range(120):
        store.append([ev(f"a{i}", ts=5.0)])
    assert [e.event_id for e in store.recent("u1", 200)] == [f"a{i}" for i in range(120)]
    assert store.load([ev(f"b{i}", ts=5.0) for i in range(2500)], progress=False) == 2500
    got = [e.event_id for e in store.recent("u1", 3000)]
    assert got == [f"a{i}" for i in range(120)] + [f"b{i}" for i in range(2500)]
    assert store.recent("u1", 2)[0].event_id == "b2498"


def test_forgets_are_journalled_for_every_process_sharing_the_store(store: EventStore) -> None:
    store.append([ev("a", "u1"), ev("b", "u2")])
    assert store.forgotten() == ([], 0)
    store.forget("u1")
    store.forget("nobody")  # journalled too: the user may have a memory but no events
    users, position = store.forgotten()
    assert users == ["u1", "nobody"]
    assert store.forgotten(position) == ([], position)
    store.forget("u2")
    assert store.forgotten(position)[0] == ["u2"]


def test_a_version_1_file_without_the_forget_journal_gains_it(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as store:
        store.append([ev("a")])
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE forgets")  # as an event store written before it existed
    with SQLiteEventStore(path) as store:
        assert store.forget("u1") == 1 and store.forgotten()[0] == ["u1"]


def test_live_counts_kept_on_insert_equal_the_replayed_counts(store: EventStore) -> None:
    """Every new event is folded into its item's counter, in any arrival order (appended or
    loaded), a duplicate id never; reads sum the asked event types and equal
    `starsrec.data.live` replayed over the same events."""
    from starsrec.data.calendar import DAY
    from starsrec.data.live import LIVE_HALF_LIVES_DAYS

    sales = [("a", 0.0, "buy"), ("a", 2 * DAY, "buy"), ("b", DAY, "buy"), ("a", DAY, "view")]
    sales += [("b", 0.5 * DAY, "buy"), ("c", 3 * DAY, "view")]
    events = [ev(f"e{n}", f"u{n % 2}", ts, item, kind) for n, (item, ts, kind) in enumerate(sales)]
    assert store.append(events[:3]) == 3
    assert store.load(events[2:], progress=False) == 3  # e2 already stored: not counted again
    assert store.append([ev("e0", ts=5 * DAY, item="a", kind="buy")]) == 0
    at = 4 * DAY

    def want(item: str, kinds: tuple[str, ...]) -> list[float]:
        return [
            sum(
                2 ** (-(at - ts) / (h * DAY))
                for i, ts, kind in sales
                if i == item and kind in kinds
            )
            for h in LIVE_HALF_LIVES_DAYS
        ]

    ids, counts = store.live_counts(["buy"], at)
    assert sorted(ids) == ["a", "b"]
    for item, row in zip(ids, counts, strict=True):
        assert row == pytest.approx(want(item, ("buy",)), rel=1e-9)
    ids, counts = store.live_counts(["buy", "view"], at)
    assert sorted(ids) == ["a", "b", "c"]
    for item, row in zip(ids, counts, strict=True):
        assert row == pytest.approx(want(item, ("buy", "view")), rel=1e-9)
    assert store.live_counts([], at)[0] == []


def test_forgetting_a_user_takes_their_events_out_of_the_live_counts(store: EventStore) -> None:
    """After `forget`, every counter equals the replayed counts of the events still stored,
    whether the user's events came before, between or after the others'."""
    from starsrec.data.calendar import DAY
    from starsrec.data.live import LIVE_HALF_LIVES_DAYS

    sales = [("a", 0.0, "u0"), ("a", DAY, "gone"), ("a", 2 * DAY, "u1"), ("b", 3 * DAY, "gone")]
    sales += [("b", 0.5 * DAY, "u0"), ("c", 1.5 * DAY, "gone")]
    store.append([ev(f"e{n}", user, ts, item, "buy") for n, (item, ts, user) in enumerate(sales)])
    assert store.forget("gone") == 3
    at = 4 * DAY
    ids, counts = store.live_counts(["buy"], at)
    for item, row in zip(ids, counts, strict=True):
        want = [
            sum(2 ** (-(at - ts) / (h * DAY)) for i, ts, u in sales if i == item and u != "gone")
            for h in LIVE_HALF_LIVES_DAYS
        ]
        assert row == pytest.approx(want, rel=1e-9, abs=1e-12), item
    assert dict(zip(ids, counts[:, 0], strict=True))["c"] == 0.0  # only the forgotten bought it
    store.append([ev("again", "u2", 3.5 * DAY, "c", "buy")])  # a new sale counts from zero
    ids, counts = store.live_counts(["buy"], at)
    assert dict(zip(ids, counts[:, 0], strict=True))["c"] == pytest.approx(2**-0.5)


def test_an_event_store_from_before_the_forget_trigger_recounts_once(tmp_path: Path) -> None:
    """A file whose counters still held a forgotten user's events (before the delete trigger)
    has them computed again from its events when opened."""
    path = tmp_path / "events.sqlite"
    store = SQLiteEventStore(path)
    store.append([ev("e0", "u0", 0.0, "a", "buy"), ev("e1", "gone", 0.0, "a", "buy")])
    store.close()
    with sqlite3.connect(path) as conn:  # as an older version left it
        conn.execute("DROP TRIGGER live_uncount")
        conn.execute("DELETE FROM events WHERE user_id = 'gone'")
        assert conn.execute("SELECT max(value) FROM live_counts").fetchone()[0] == 2.0
    conn.close()
    store = SQLiteEventStore(path)
    ids, counts = store.live_counts(["buy"], 0.0)
    assert ids == ["a"] and counts[0].tolist() == [1.0, 1.0]
    store.close()


def test_the_event_count_is_kept_through_appends_loads_duplicates_and_forgets(
    tmp_path: Path,
) -> None:
    """`count` reads a counter the triggers keep, never a scan: it equals the rows stored
    after every kind of write, and a file from before the counter gains it when opened."""
    path = tmp_path / "events.sqlite"
    store = SQLiteEventStore(path)

    def rows() -> int:
        return store._db().execute("SELECT count(*) FROM events").fetchone()[0]

    store.append([ev("e0", "u0"), ev("e1", "u1"), ev("e0", "u0")])  # one duplicate
    assert store.count() == rows() == 2
    store.load([ev(f"l{n}", f"u{n % 3}") for n in range(5)] + [ev("e1", "u1")], progress=False)
    assert store.count() == rows() == 7
    store.append([ev("after-load", "u2")])  # the insert trigger is back after a load
    assert store.count() == rows() == 8
    store.forget("u1")
    assert store.count() == rows() == 5
    store.close()
    with sqlite3.connect(path) as conn:  # as an older version left it
        conn.execute("DROP TRIGGER event_removed")
        conn.execute("DROP TRIGGER event_added")
        conn.execute("DROP TABLE event_count")
    conn.close()
    store = SQLiteEventStore(path)
    assert store.count() == rows() == 5
    store.close()


def test_live_changes_list_only_the_items_changed_since(store: EventStore) -> None:
    """A reader's second read takes only the items whose counters changed (every counter of
    such an item: all its event types); a forget lists its items; an SQLite bulk load
    (which recounts every counter) lists all."""
    store.append([ev("e0", "u0", 0.0, "a", "buy"), ev("e1", "u1", 0.0, "b", "buy")])
    store.append([ev("e2", "u1", 10.0, "b", "view")])
    seq, full, ids, _ = store.live_changes(["buy", "view"], 100.0)
    assert full and sorted(ids) == ["a", "b"]
    assert store.live_changes(["buy", "view"], 100.0, seq)[1:3] == (False, [])
    store.append([ev("e3", "u2", 50.0, "b", "buy")])
    seq2, full, ids, counts = store.live_changes(["buy", "view"], 100.0, seq)
    assert (full, ids) == (False, ["b"]) and seq2 > seq
    every = dict(zip(*store.live_counts(["buy", "view"], 100.0), strict=True))
    np.testing.assert_allclose(counts[0], every["b"])  # both of b's types, summed
    store.forget("u0")
    assert store.live_changes(["buy"], 100.0, seq2)[1:3] == (False, ["a"])
    store.load([ev("l0", "u3", 60.0, "c", "buy")], progress=False)
    full, ids = store.live_changes(["buy"], 100.0, seq2)[1:3]
    if isinstance(store, SQLiteEventStore):  # recounted: a, forgotten, has no counter left
        assert full and sorted(ids) == ["b", "c"]
    else:  # Redis folds each loaded event as `append` does
        assert not full and sorted(ids) == ["a", "c"]


def test_a_store_from_before_the_change_sequence_recounts_once(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    store = SQLiteEventStore(path)
    store.append([ev("e0", "u0", 0.0, "a", "buy")])
    store.close()
    with sqlite3.connect(path) as conn:  # as an older version left it: no sequence
        for statement in ("DROP TRIGGER live_count", "DROP TRIGGER live_uncount"):
            conn.execute(statement)
        conn.execute("DROP INDEX live_counts_seq")
        conn.execute("ALTER TABLE live_counts DROP COLUMN seq")
        conn.execute("DROP TABLE live_seq")
    conn.close()
    store = SQLiteEventStore(path)
    store.append([ev("e1", "u1", 0.0, "a", "buy")])  # the triggers are back
    assert store.live_counts(["buy"], 0.0)[1].tolist() == [[2.0, 2.0]]
    store.close()


def test_a_workers_copy_of_the_live_counts_equals_a_full_read(store: EventStore) -> None:
    """`StoreLive` reads only what changed; after any mix of writes its counts at each
    request equal a full read of every counter at that time."""
    read = store.live_changes
    fulls = []

    def spy(types, at, since=0):  # which reads were full (`live_counts` reads through it)
        answer = read(types, at, since)
        fulls.append((since, answer[1]))
        return answer

    store.live_changes = spy  # type: ignore[method-assign]
    row_of = {f"i{n}": n for n in range(20)}
    live = StoreLive(lambda: store, {"buy"}, row_of, refresh_s=0.0)
    rng = np.random.default_rng(0)
    at = 1_700_000_000.0
    for step in range(40):
        at += float(rng.integers(0, 3 * 86_400))
        if step == 10:  # a sale of a product this worker does not know yet
            store.append([Event("early", "u9", "new", "buy", at)])
        if step == 20:
            row_of["new"] = 20  # the product, put since the last read
        items = [*row_of]
        events = [
            Event(
                f"e{step}-{n}",
                f"u{rng.integers(0, 5)}",
                items[rng.integers(0, len(items))],
                ["buy", "view"][rng.integers(0, 2)],
                at - float(rng.integers(0, 86_400)),
            )
            for n in range(int(rng.integers(0, 6)))
        ]
        store.append(events)
        if step % 7 == 6:
            store.forget(f"u{rng.integers(0, 5)}")
        rows, counts = live(at)
        ids, want = store.live_counts(["buy"], at)
        expected = {i: c for i, c in zip(ids, want, strict=True) if i in row_of}  # served
        got = dict(zip((items[r] for r in rows), counts, strict=True))
        assert set(got) == {i for i, c in expected.items() if c.any()}
        for item, value in got.items():
            np.testing.assert_allclose(value, expected[item], rtol=1e-9, atol=1e-12)
    # StoreLive's reads after its first were of the changes only
    assert len(fulls) >= 40 and all(full == (since == 0) for since, full in fulls)
