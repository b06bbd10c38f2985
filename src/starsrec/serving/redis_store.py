"""A Redis event store, so several `starsrec serve` replicas share live sessions.

Same contract as `SQLiteEventStore` (see `starsrec.serving.store.EventStore`); one Redis holds the
events of every replica, so an event posted to one replica drives the next request answered by
any other. Select it with `starsrec serve --store-url redis://HOST:6379/0` (or
`ServingConfig(store_url=...)`); install the client with `pip install 'starsrec[scale]'`.

Keys, all under `prefix` (default "starsrec:", so several stores can share one database):

- `{prefix}ids`: set of every stored event id. `count` is its size and `has` a membership test.
- `{prefix}seq`: arrival counter, incremented once per new event.
- `{prefix}live:{event_type}`: hash of the live counters (`starsrec.data.live`) of that
  event type, field item id, value "updated count-per-half-life..." (decimal text), folded in
  by `append` for each new event.
- `{prefix}live-seq` and `{prefix}live-changed:{event_type}`: every change of a counter
  (a fold, or a forgotten event taken out) takes the next number of the first and stamps
  the item with it in the second, a sorted set, so `live_changes` reads what changed since
  a number.
- `{prefix}user:{user_id}`: sorted set of the user's events, scored by timestamp, each member
  the zero-padded arrival number followed by the event's JSON. Members of equal score sort
  byte-wise, so the set is ordered by (timestamp, arrival) exactly like SQLite's
  (timestamp, rowid), and `recent` is one ZREVRANGEBYSCORE of `limit` entries from the
  request time down, reversed.

Design:

- Idempotent and atomic: `append` is one Lua script (Redis runs scripts atomically) that does
  SADD of the id and, only when the id is new, INCR + ZADD and the fold of its live counter.
  A retried request stores nothing twice, the first write of an id wins also within one
  call, and concurrent appends from any number of replicas never interleave inside a
  batch. Batches are validated whole first, with the SQLite store's own validation, so an
  invalid event writes nothing.
- Acknowledged = persisted only as far as the server's persistence allows: the SQLite
  guarantee (an acknowledged event survives a crash or power loss) needs `appendonly yes` and
  `appendfsync always`, under which Redis fsyncs the script's effects before replying. The
  store warns at open when it can read a weaker setting (the tests' server runs with those
  settings). `append` does not call WAIT, so an event acknowledged by a primary may be lost if
  a replica is promoted before it received it.
- Reads for many users (`recent_many`) are one MULTI/EXEC pipeline: one round trip and one
  consistent snapshot, like SQLite's read transaction.
- Thread-safe: redis-py's client keeps a connection pool; no lock is needed.
- Nothing expires and nothing is trimmed, as in SQLite: memory grows with the event count.
  `forget` (one script: the user's ids out of the id set, their events out of the live
  counters, then their key) deletes a user and appends the user id to the list
  `{prefix}forgets`, the journal every server follows.
  One script touches several users' keys, so on Redis Cluster put the keys in one slot with a
  hash-tagged prefix such as "{starsrec}:".

Limitation: the offline stage (`starsrec index`) seeds the artifact's SQLite file with each
user's history, not Redis. A Redis store holds the live events only, unless it is seeded with
`RedisEventStore.load(events)` (e.g. `starsrec.serving.offline.history_events`); a user's
stored history is then whatever was loaded plus what was posted since.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from tqdm.auto import tqdm

from starsrec.data.live import LIVE_HALF_LIVES_DAYS, counter_table, decay_rates
from starsrec.serving.store import Event, EventStore, check_recent_many, validated_row

try:
    import redis
except ImportError:  # the optional "scale" extra
    _HAVE_REDIS = False
else:
    _HAVE_REDIS = True

logger = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix")
_SEQ_DIGITS = 15  # arrival numbers below 10**15: exact in Lua's doubles, sortable as text
_SCRIPT_EVENTS = 1000  # events per script call in `load`
_RATES = ", ".join(repr(float(rate)) for rate in decay_rates())
# Stamps an item's change of its type's counter (see the module doc).
_STAMP = """
local function stamp(seq_key, changed_key, item)
  redis.call('ZADD', changed_key, redis.call('INCR', seq_key), item)
end
"""
# KEYS: the id set, the arrival counter, the live sequence, then per event its user key, its
# type's live hash and its type's changed set. ARGV: per event its id, score (timestamp),
# JSON payload and item id. The fold is `starsrec.data.live.fold`.
_APPEND = (
    _STAMP
    + f"""
local rates = {{{_RATES}}}
local function fold(key, item, at)
  local old = redis.call('HGET', key, item)
  local updated, values = at, {{}}
  for h = 1, #rates do values[h] = 1 end
  if old then
    local parts = {{}}
    for word in string.gmatch(old, '%S+') do parts[#parts + 1] = tonumber(word) end
    updated = math.max(parts[1], at)
    for h = 1, #rates do
      if at >= parts[1] then
        values[h] = parts[h + 1] * math.exp(-rates[h] * (at - parts[1])) + 1
      else
        values[h] = parts[h + 1] + math.exp(-rates[h] * (parts[1] - at))
      end
    end
  end
  local text = string.format('%.17g', updated)
  for h = 1, #rates do text = text .. ' ' .. string.format('%.17g', values[h]) end
  redis.call('HSET', key, item, text)
end
local added = 0
for n = 1, (#KEYS - 3) / 3 do
  if redis.call('SADD', KEYS[1], ARGV[4 * n - 3]) == 1 then
    local seq = redis.call('INCR', KEYS[2])
    local member = string.format('%0{_SEQ_DIGITS}d', seq) .. ARGV[4 * n - 1]
    redis.call('ZADD', KEYS[1 + 3 * n], ARGV[4 * n - 2], member)
    fold(KEYS[2 + 3 * n], ARGV[4 * n], tonumber(ARGV[4 * n - 2]))
    stamp(KEYS[3], KEYS[3 + 3 * n], ARGV[4 * n])
    added = added + 1
  end
end
return added
"""
)
# KEYS: the id set, the user's key, the journal of forgets, the live sequence; ARGV: the
# user id, the prefix of the live hashes and that of the changed sets. Each member's JSON
# (after the arrival number) is the event's row (id, user, item, type, timestamp). Each
# event leaves its type's live counter: its weight at the counter's update time is
# subtracted, the exact inverse of its fold (clipped at 0 against rounding), and stamps it.
# The live hashes and changed sets are named in the script, not in KEYS (a user's event
# types are known only inside it); under a hash-tagged prefix they share the slot of
# the declared keys.
_FORGET = (
    _STAMP
    + f"""
local rates = {{{_RATES}}}
local function unfold(key, item, at)
  local old = redis.call('HGET', key, item)
  if not old then return end
  local parts = {{}}
  for word in string.gmatch(old, '%S+') do parts[#parts + 1] = tonumber(word) end
  local text = string.format('%.17g', parts[1])
  for h = 1, #rates do
    local value = math.max(parts[h + 1] - math.exp(-rates[h] * (parts[1] - at)), 0)
    text = text .. ' ' .. string.format('%.17g', value)
  end
  redis.call('HSET', key, item, text)
end
local members = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, member in ipairs(members) do
  local row = cjson.decode(string.sub(member, {_SEQ_DIGITS + 1}))
  redis.call('SREM', KEYS[1], row[1])
  unfold(ARGV[2] .. row[4], row[3], tonumber(row[5]))
  stamp(KEYS[4], ARGV[3] .. row[4], row[3])
end
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[3], ARGV[1])
return #members
"""
)


def _redacted(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    if not isinstance(url, str):
        return repr(url)
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:" if parts.username else ":"
        return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))
    except ValueError:
        return "<unparsable URL>"


class RedisEventStore(EventStore):
    """Event store in a Redis server, shared by every process that opens the same URL and
    prefix; safe to share between threads (see the module docstring)."""

    def __init__(self, url: str = DEFAULT_URL, prefix: str = "starsrec:") -> None:
        """Connect to `url` (redis://, rediss:// or unix://) and check that the server answers;
        raises ValueError for a bad URL or an unreachable server."""
        self.url = _redacted(url)
        self.prefix = prefix
        if not _HAVE_REDIS:
            raise ValueError(
                "the Redis event store needs the redis package: pip install 'starsrec[scale]'"
            )
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(
                f"store URL {self.url!r} is not a Redis URL: use redis://HOST:PORT/DB "
                "(rediss:// for TLS, unix:///path/to/redis.sock)"
            )
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {prefix!r}")
        try:
            client = redis.Redis.from_url(url, decode_responses=True)
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {self.url!r}: {exc}") from exc
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            unreachable = isinstance(exc, redis.ConnectionError | redis.TimeoutError)
            if unreachable and not isinstance(exc, redis.AuthenticationError):
                raise ValueError(
                    f"cannot reach a Redis server at {self.url} ({exc}): start one, e.g. "
                    "`redis-server --appendonly yes --appendfsync always` "
                    "(scripts/redis-server.sh installs it on Debian), or pass another URL"
                ) from exc
            raise ValueError(
                f"the Redis server at {self.url} refused the store ({exc}): check the URL's "
                "credentials and database number"
            ) from exc
        self._client: redis.Redis | None = client
        self._script = client.register_script(_APPEND)
        self._forget = client.register_script(_FORGET)
        self._ids = f"{prefix}ids"
        self._forgets = f"{prefix}forgets"
        self._seq = f"{prefix}seq"
        self._live_seq = f"{prefix}live-seq"
        self._check_persistence()

    def _check_persistence(self) -> None:
        try:
            config = self._db().config_get("append*")
        except redis.RedisError:  # CONFIG is often disabled on managed servers
            logger.debug("%s: cannot read the persistence settings", self.url)
            return
        if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
            logger.warning(
                "%s: appendonly=%s appendfsync=%s; acknowledged events may be lost in a crash "
                "(set appendonly yes, appendfsync always for the SQLite store's guarantee)",
                self.url,
                config.get("appendonly"),
                config.get("appendfsync"),
            )

    def _db(self) -> redis.Redis:
        if self._client is None:
            raise ValueError(f"event store {self.url} is closed: open a new RedisEventStore")
        return self._client

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    def _call(self, rows: Sequence[tuple[str, str, str, str, float]], client=None) -> Any:
        """Run the append script for validated rows (through `client`, e.g. a pipeline): the
        number of new events, or, queued on a pipeline, the pipeline."""
        keys = [self._ids, self._seq, self._live_seq]
        args: list[str | float] = []
        for row in rows:
            keys += [self._user_key(row[1]), self._live_key(row[3]), self._changed_key(row[3])]
            args += [row[0], row[4], json.dumps(row, separators=(",", ":")), row[2]]
        return self._script(keys=keys, args=args, client=self._db() if client is None else client)

    def append(self, events: Sequence[Event]) -> int:
        """See `EventStore.append`: one atomic script call for the whole batch."""
        rows = [validated_row(e) for e in events]  # validate all before writing any
        if not rows:
            return 0
        return int(self._call(rows))

    def load(self, events: Iterable[Event], progress: bool = True, batch_size: int = 50_000) -> int:
        """Bulk-seed history events; returns how many were new.

        Same validation and idempotency as `append`. Every event is validated before any is
        written, then each `batch_size` events go in one pipeline (atomic per script call of
        up to 1000 events, not for the whole load: a load cut short leaves a prefix stored,
        and running it again completes it)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = [validated_row(e) for e in events]
        added = 0
        with tqdm(total=len(rows), desc="load events", unit="ev", disable=not progress) as bar:
            for lo in range(0, len(rows), batch_size):
                batch = rows[lo : lo + batch_size]
                pipe = self._db().pipeline(transaction=False)
                for start in range(0, len(batch), _SCRIPT_EVENTS):
                    self._call(batch[start : start + _SCRIPT_EVENTS], pipe)
                added += sum(int(n) for n in pipe.execute())
                bar.update(len(batch))
        logger.info("loaded %d new events into %s (prefix %r)", added, self.url, self.prefix)
        return added

    def recent_many(
        self, user_ids: Sequence[str], limit: int, at: float | None = None
    ) -> dict[str, list[Event]]:
        """See `EventStore.recent_many`: one MULTI/EXEC pipeline of reverse score ranges."""
        check_recent_many(user_ids, limit)
        client = self._db()
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        pipe = client.pipeline(transaction=True)  # one snapshot for every user
        for user in users:
            end = "+inf" if at is None else float(at)
            pipe.zrevrangebyscore(self._user_key(user), end, "-inf", start=0, num=limit)
        return {
            user: [Event(*json.loads(m[_SEQ_DIGITS:])) for m in reversed(members)]
            for user, members in zip(users, pipe.execute(), strict=True)
        }

    def forget(self, user_id: str) -> int:
        """See `EventStore.forget`: one atomic script (durable as far as `append` is)."""
        keys = [self._ids, self._user_key(user_id), self._forgets, self._live_seq]
        args = [user_id, self._live_key(""), self._changed_key("")]
        return int(self._forget(keys=keys, args=args, client=self._db()))

    def forgotten(self, after: int = 0) -> tuple[list[str], int]:
        """See `EventStore.forgotten`: positions count the entries of a Redis list."""
        users = self._db().lrange(self._forgets, after, -1)
        return [u.decode() if isinstance(u, bytes) else u for u in users], after + len(users)

    def latest_time(self, user_id: str) -> float | None:
        """See `EventStore.latest_time`: the top score of the user's sorted set."""
        last = self._db().zrange(self._user_key(user_id), 0, 0, desc=True, withscores=True)
        return float(last[0][1]) if last else None

    def _live_key(self, event_type: str) -> str:
        return f"{self.prefix}live:{event_type}"

    def _changed_key(self, event_type: str) -> str:
        return f"{self.prefix}live-changed:{event_type}"

    def live_counts(self, event_types: Sequence[str], at: float) -> tuple[list[str], np.ndarray]:
        """See `EventStore.live_counts`: the types' hashes in one pipeline."""
        pipe = self._db().pipeline(transaction=True)
        for event_type in dict.fromkeys(event_types):
            pipe.hgetall(self._live_key(event_type))
        return counter_table(_counter_rows(pipe.execute()), at)

    def live_changes(
        self, event_types: Sequence[str], at: float, since: int = 0
    ) -> tuple[int, bool, list[str], np.ndarray]:
        """See `EventStore.live_changes`: the items stamped after `since` in the changed
        sets, then their counters of every type (since 0: every counter)."""
        types = list(dict.fromkeys(event_types))
        pipe = self._db().pipeline(transaction=True)  # the number and the changes at once
        pipe.get(self._live_seq)
        for event_type in types:
            pipe.zrangebyscore(self._changed_key(event_type), f"({since}", "+inf")
        seq, *changed = pipe.execute()
        if since == 0:
            return int(seq or 0), True, *self.live_counts(types, at)
        items = sorted({item for members in changed for item in members})
        counters = []
        if items:
            pipe = self._db().pipeline(transaction=True)
            for event_type in types:
                pipe.hmget(self._live_key(event_type), items)
            counters = [dict(zip(items, texts, strict=True)) for texts in pipe.execute()]
        return int(seq or 0), False, *counter_table(_counter_rows(counters), at)

    def count(self) -> int:
        """See `EventStore.count`: the size of the id set."""
        return int(self._db().scard(self._ids))

    def has(self, event_id: str) -> bool:
        """See `EventStore.has`: membership in the id set."""
        return bool(self._db().sismember(self._ids, event_id))

    def close(self) -> None:
        """See `EventStore.close`."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _counter_rows(counters: Iterable[dict]) -> list[tuple[str, float, float, float]]:
    """`counter_table`'s rows (item, half-life, value, updated) of live hashes' fields
    ({item: "updated value..."}, a missing field None)."""
    rows = []
    for fields in counters:
        for item, text in fields.items():
            if text is None:
                continue
            updated, *values = map(float, text.split())
            rows += [
                (item, h, v, updated) for h, v in zip(LIVE_HALF_LIVES_DAYS, values, strict=True)
            ]
    return rows
