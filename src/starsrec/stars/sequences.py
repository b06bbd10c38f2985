"""From event-log rows to the model's padded tensors (`EventBatch`).

Training and serving use the same path: a window of log rows (left-padded with -1) and
the time of the request that follows the last row. Each event's "next time" is the time
of the following row in the window, or the request time for the last one: it sets the
event's recency bucket, the request context (hour, weekday, month, calendar events) the
model predicts under, and whether that request opens a new session.
"""

from __future__ import annotations

import numpy as np
import torch

from starsrec.data.calendar import DAY, CalendarEvents, time_parts
from starsrec.data.interactions import EventLog, Queries
from starsrec.stars.batch import PAD, EventBatch, recency_bucket, slot_of


def featurize(
    log: EventLog,
    rows: np.ndarray,  # (B, T) log rows, -1 = padding (left)
    request_time: np.ndarray,  # (B,) seconds: when the request after the last row is made
    calendar: CalendarEvents,
    session_gap_minutes: float,
) -> EventBatch:
    """The model inputs for windows of log rows (see module doc)."""
    valid = rows >= 0
    # Index -1 reads a padding value appended to each array, so an empty log works too.
    safe = np.where(valid, rows, -1)
    stamps, items, types = (np.append(a, 0) for a in (log.timestamp, log.item, log.event_type))
    return featurize_events(
        np.where(valid, items[safe], -1),
        types[safe],
        stamps[safe],
        request_time,
        calendar,
        session_gap_minutes,
    )


def featurize_events(
    items: np.ndarray,  # (B, T) item index, -1 = padding (left)
    event_types: np.ndarray,  # (B, T) event type codes
    times: np.ndarray,  # (B, T) event times, seconds
    request_time: np.ndarray,  # (B,) seconds
    calendar: CalendarEvents,
    session_gap_minutes: float,
) -> EventBatch:
    """`featurize` for events given as arrays (the online service's stored sessions)."""
    valid = items >= 0
    time = np.where(valid, times, 0)
    next_time = np.empty_like(time)
    next_time[:, :-1] = time[:, 1:]
    next_time[:, -1] = request_time
    # A padded slot's "next" is the first real event: keep its gap at zero. The last slot
    # always carries the request time, even in an empty window (the no-history fallback
    # reads the request's context there).
    next_time = np.where(valid, next_time, time)
    next_time[:, -1] = request_time
    gap = next_time - time
    hour, weekday, _ = time_parts(time)
    request_hour, request_weekday, request_month = time_parts(next_time)
    to_long = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    return EventBatch(
        items=to_long(np.where(valid, slot_of(items), PAD)),
        event_types=to_long(np.where(valid, event_types, 0)),
        hours=to_long(hour),
        weekdays=to_long(weekday),
        recency=recency_bucket(to_long(gap)),
        request_hour=to_long(request_hour),
        request_weekday=to_long(request_weekday),
        request_month=to_long(request_month),
        request_events=torch.from_numpy(
            calendar.active(next_time.ravel()).reshape(*items.shape, len(calendar.names) or 1)
            if calendar.names
            else np.zeros((*items.shape, 1), dtype=np.float32)
        ),
        new_session=torch.from_numpy(gap > session_gap_minutes * 60),
        event_days=torch.from_numpy((time / DAY).astype(np.float32)),
        request_days=torch.from_numpy((next_time / DAY).astype(np.float32)),
    )


def query_windows(queries: Queries, length: int) -> np.ndarray:
    """(Q, length) the last `length` history rows of each query, left-padded with -1."""
    ends = queries.end[:, None]
    rows = ends - length + np.arange(length)[None, :]
    return np.where(rows >= queries.start[:, None], rows, -1)


def training_windows(log: EventLog, length: int) -> np.ndarray:
    """(W, length + 1) windows of consecutive rows per user, covering every event once as
    a target: the newest window ends at the user's last event, older ones step back by
    `length`. Left-padded with -1."""
    windows = []
    for user in range(log.n_users):
        start, end = int(log.offsets[user]), int(log.offsets[user + 1])
        last = end
        while last - start >= 2:
            first = max(start, last - length - 1)
            window = np.full(length + 1, -1, dtype=np.int64)
            window[length + 1 - (last - first) :] = np.arange(first, last)
            windows.append(window)
            last = first + 1  # the first row of this window is the next one's last input
    return np.array(windows, dtype=np.int64).reshape(-1, length + 1)
