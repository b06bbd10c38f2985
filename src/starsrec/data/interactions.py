"""Integer-encoded views of a Dataset that models and the evaluator work on.

- `Catalogue`: the items in a fixed order; item index i is row i of the items table.
- `EventLog`: the events as parallel arrays, grouped by user and in time order, with CSR
  offsets so a user's history is one slice.
- `Queries`: a batch of recommendation requests. Query q's history is
  `log.item[start[q]:end[q]]` (a slice of an EventLog, never a copy), asked at time `time[q]`.

Timestamps are int64 seconds since the epoch throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from starsrec.data.dataset import Dataset, EventType

UNKNOWN_USER = -1


def to_seconds(timestamps: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    """datetime64 values -> int64 seconds since the epoch."""
    values = np.asarray(timestamps, dtype="datetime64[ns]")
    return values.astype("datetime64[s]").astype(np.int64)


@dataclass(frozen=True)
class Catalogue:
    """The item universe of a dataset, in a fixed index order."""

    item_ids: np.ndarray  # (N,) str
    texts: np.ndarray  # (N,) str
    item_class: np.ndarray  # (N,) int32 index into class_names, -1 when unknown
    class_names: tuple[str, ...]
    subclass: np.ndarray  # (N,) int32 index into subclass_names, -1 when unknown
    subclass_names: tuple[str, ...]

    @property
    def size(self) -> int:
        """N, the number of items."""
        return len(self.item_ids)

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> Catalogue:
        """Build from a validated items table (row order = item index)."""
        item_class, class_names = _codes(items, "class")
        subclass, subclass_names = _codes(items, "subclass")
        return cls(
            item_ids=items["item_id"].to_numpy(dtype=str),
            texts=items["text"].to_numpy(dtype=str),
            item_class=item_class,
            class_names=class_names,
            subclass=subclass,
            subclass_names=subclass_names,
        )

    def index_of(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Item ids -> indices; -1 for ids not in the catalogue."""
        lookup = pd.Index(self.item_ids)
        return lookup.get_indexer(pd.Index(np.asarray(item_ids, dtype=str))).astype(np.int64)


def _codes(table: pd.DataFrame, column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if column not in table.columns:
        return np.full(len(table), -1, dtype=np.int32), ()
    codes, names = pd.factorize(table[column], sort=True)
    return codes.astype(np.int32), tuple(str(n) for n in names)


@dataclass(frozen=True)
class EventLog:
    """Events grouped by user in time order; user u owns rows offsets[u]:offsets[u+1]."""

    user: np.ndarray  # (E,) int64
    item: np.ndarray  # (E,) int64
    timestamp: np.ndarray  # (E,) int64 seconds
    event_type: np.ndarray  # (E,) int16 index into event_types
    offsets: np.ndarray  # (U+1,) int64
    user_ids: np.ndarray  # (U,) str
    event_types: tuple[EventType, ...]

    @property
    def size(self) -> int:
        """E, the number of events."""
        return len(self.item)

    @property
    def n_users(self) -> int:
        """U, the number of users (also those without events)."""
        return len(self.user_ids)

    @property
    def is_target(self) -> np.ndarray:
        """(E,) bool: events whose type is a recommendation target."""
        targets = np.array([t.target for t in self.event_types], dtype=bool)
        return targets[self.event_type]

    @property
    def weight(self) -> np.ndarray:
        """(E,) float32 engagement weight of each event."""
        weights = np.array([t.weight for t in self.event_types], dtype=np.float32)
        return weights[self.event_type]

    @classmethod
    def from_dataset(cls, dataset: Dataset, catalogue: Catalogue) -> EventLog:
        """Encode the (already sorted by user, time) events of a validated dataset."""
        events = dataset.events
        user_codes, user_ids = pd.factorize(events["user_id"], sort=True)
        type_names = [t.name for t in dataset.event_types]
        type_codes = pd.Index(type_names).get_indexer(events["event_type"])
        item = catalogue.index_of(events["item_id"].to_numpy())
        if (item < 0).any() or (type_codes < 0).any():
            raise ValueError("events reference unknown items or event types; validate() first")
        # Stable sort: events arrive sorted by user id string; factorize(sort=True) keeps it.
        order = np.argsort(user_codes, kind="stable")
        counts = np.bincount(user_codes, minlength=len(user_ids))
        return cls(
            user=user_codes[order].astype(np.int64),
            item=item[order],
            timestamp=to_seconds(events["timestamp"])[order],
            event_type=type_codes[order].astype(np.int16),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            user_ids=np.asarray(user_ids, dtype=str),
            event_types=tuple(dataset.event_types),
        )

    def select(self, mask: np.ndarray) -> EventLog:
        """The events where `mask` is true, keeping every user (possibly with no events)."""
        user = self.user[mask]
        counts = np.bincount(user, minlength=self.n_users)
        return EventLog(
            user=user,
            item=self.item[mask],
            timestamp=self.timestamp[mask],
            event_type=self.event_type[mask],
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            user_ids=self.user_ids,
            event_types=self.event_types,
        )


def session_opens(
    timestamps: np.ndarray, rows: np.ndarray, first: np.ndarray | int, gap_minutes: float
) -> np.ndarray:
    """Whether each row (>= 0; any shape) of the time-ordered `timestamps` opens a session:
    it is the first row of its history (`first`) or comes more than the session gap after
    the row before it."""
    stamps = np.append(timestamps, 0)  # padded: an empty log still indexes
    gap = stamps[rows] - stamps[np.maximum(rows - 1, 0)]
    return (rows == first) | (gap > gap_minutes * 60)


@dataclass(frozen=True)
class Queries:
    """A batch of requests: history slices of `log`, request times and known users."""

    log: EventLog
    start: np.ndarray  # (Q,) int64
    end: np.ndarray  # (Q,) int64, exclusive
    time: np.ndarray  # (Q,) int64 seconds
    user: np.ndarray  # (Q,) int64, UNKNOWN_USER for anonymous histories

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, index: slice | np.ndarray) -> Queries:
        return Queries(
            self.log, self.start[index], self.end[index], self.time[index], self.user[index]
        )

    def history(self, q: int) -> slice:
        """The slice of `log` arrays that is query q's history."""
        return slice(int(self.start[q]), int(self.end[q]))

    @property
    def lengths(self) -> np.ndarray:
        """(Q,) int64 number of history events of each query."""
        return self.end - self.start

    def flat_history(self) -> tuple[np.ndarray, np.ndarray]:
        """(query index, log row) for every history event of every query, in order."""
        lengths = self.lengths
        query = np.repeat(np.arange(len(self)), lengths)
        first = np.repeat(self.start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        rows = first + np.arange(lengths.sum())
        return query, rows

    @classmethod
    def for_users(cls, log: EventLog, user_ids: Sequence[str], time: int | None = None) -> Queries:
        """Whole-history queries for known users (unknown ids get an empty history)."""
        user = pd.Index(log.user_ids).get_indexer(pd.Index(np.asarray(user_ids, dtype=str)))
        known = user >= 0
        start = np.where(known, log.offsets[np.maximum(user, 0)], 0)
        end = np.where(known, log.offsets[np.maximum(user, 0) + 1], 0)
        if time is None:
            last = log.timestamp[np.maximum(end - 1, 0)] if log.size else np.zeros(len(user))
            request = np.where(end > start, last, 0)
        else:
            request = np.full(len(user), time)
        return cls(log, start, end, request.astype(np.int64), user.astype(np.int64))

    @classmethod
    def from_histories(
        cls,
        histories: Sequence[Sequence[int]],
        event_types: tuple[EventType, ...],
        time: int = 0,
    ) -> Queries:
        """Anonymous queries from lists of item indices (oldest first), all of type 0."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=offsets[-1])
        log = EventLog(
            user=np.repeat(np.arange(len(histories)), lengths),
            item=items,
            timestamp=np.full(len(items), time, dtype=np.int64),
            event_type=np.zeros(len(items), dtype=np.int16),
            offsets=offsets,
            user_ids=np.array([f"anonymous-{q}" for q in range(len(histories))]),
            event_types=event_types,
        )
        n = len(histories)
        return cls(
            log,
            offsets[:-1],
            offsets[1:],
            np.full(n, time, dtype=np.int64),
            np.full(n, UNKNOWN_USER, dtype=np.int64),
        )
