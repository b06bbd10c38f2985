"""The times the online service accepts (issue 20, finding 5): unix seconds from 1970 on,
not milliseconds, and no later than the server's clock plus `ServingConfig.max_future_s`
(a day by default: clients' clocks drift and time zones get mixed up, but an event a year
ahead is a bug or an attack). Earlier times are all accepted: history is replayed.

Refusing the future is half of the defence against time poisoning; the other half is the
store, which reads a request's window of events at or before the request time (see
`EventStore.recent`), so even events stored under a generous bound cannot hide a user's
real history.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

from starsrec.serving.catalogue import RequestError
from starsrec.serving.store import Event, is_timestamp


def latest_accepted(max_future_s: float | None) -> float:
    """The latest time accepted now (infinity when `max_future_s` is None: no bound)."""
    return float("inf") if max_future_s is None else time.time() + max_future_s


def _too_late(field: str, value: float, max_future_s: float, latest: float) -> RequestError:
    clock = datetime.fromtimestamp(latest - max_future_s, UTC).isoformat(timespec="seconds")
    return RequestError(
        field,
        f"{field}: {value:.0f} is later than the server's clock ({clock}) plus "
        f"{max_future_s:g} s: send the unix seconds of when it happened",
    )


def check_event_times(events: Sequence[Event], max_future_s: float | None) -> None:
    """Raise RequestError naming `events[i].timestamp` for the first event later than the
    clock allows (other problems with a timestamp are the store's to name)."""
    latest = latest_accepted(max_future_s)
    for position, event in enumerate(events):
        if is_timestamp(event.timestamp) and event.timestamp > latest:
            assert max_future_s is not None  # latest is finite
            raise _too_late(f"events[{position}].timestamp", event.timestamp, max_future_s, latest)


def request_time(at: object, events: Sequence[Event], max_future_s: float | None) -> float:
    """A recommendation request's time (now when `at` is None) as float seconds, after
    checking it and its events' times; raises RequestError naming `timestamp` or
    `events`."""
    at = time.time() if at is None else at
    if not is_timestamp(at):
        raise RequestError("timestamp", f"timestamp: must be unix seconds from 1970 on, got {at!r}")
    seconds = float(cast(float, at))  # is_timestamp admits real numbers only
    bad = [e.timestamp for e in events if not is_timestamp(e.timestamp)]
    if bad:
        raise RequestError("events", f"events: timestamps must be unix seconds, got {bad[:3]}")
    latest = latest_accepted(max_future_s)
    if seconds > latest:
        assert max_future_s is not None
        raise _too_late("timestamp", seconds, max_future_s, latest)
    check_event_times(events, max_future_s)
    return seconds
