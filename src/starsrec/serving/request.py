"""What a request may say, checked in one place for every caller.

The HTTP API (`starsrec.web.app`), `starsrec recommend` (`starsrec.serving.batch`), the
Python API (`starsrec.serving.api`) and the service's own entry points
(`RecommendationService.recommend`, `add_events`, `similar`, which every one of them
reaches) check what they are given with these functions and pydantic types, so each bad
input has one outcome: a RequestError naming the field (HTTP 422; the HTTP bodies use the
same bounds and validators, answered in pydantic's 422 format). They live here rather than
in the web layer because the batch command and the Python API sit beside the service, not
above the HTTP app.

- Filters (`FiltersIn`, `parse_filters`): the HTTP API's names; the service turns them into
  `starsrec.recommender.Filters` (`starsrec.serving.filters`), refusing unknown names.
- `check_k`: from 1 to MAX_K results.
- `check_events`: an event naming an item or an event type the service does not know is
  refused, whether it is posted or carried by a recommendation request (never dropped).
- Times (issue 20, finding 5): unix seconds from 1970 on, not milliseconds, and no later
  than the server's clock plus `ServingConfig.max_future_s` (a day by default: clients'
  clocks drift and time zones get mixed up, but an event a year ahead is a bug or an
  attack). Earlier times are all accepted: history is replayed. Refusing the future is half
  of the defence against time poisoning; the other half is the store, which reads a
  request's window of events at or before the request time (see `EventStore.recent`), so
  even events stored under a generous bound cannot hide a user's real history.
"""

from __future__ import annotations

import json
import numbers
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

from starsrec.serving.catalogue import ItemTable, RequestError
from starsrec.serving.store import Event, is_timestamp

MAX_BATCH = 10_000
MAX_K = 1000  # the most results one request may ask for
FILTERS_EXAMPLE = '{"exclude_purchased": true, "classes": ["Bags"], "exclude": ["SKU-1"]}'
FILTER_FIELDS = (
    "in_stock_only (true/false), classes and subclasses (lists of names), exclude (a list "
    "of item ids), exclude_purchased (true, false or null: the dataset's default), "
    "new_item_slots (places kept for new products; null: the service's default)"
)


def encodable(value: str) -> str:
    """A pydantic validator: `value` unless it holds a lone surrogate (JSON's "\\ud800"
    escape decodes to one), which UTF-8, SQLite and every log file refuse."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("must be valid unicode text (no lone surrogate escapes)") from error
    return value


Id = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(encodable)]


def _not_a_bool(value: object) -> object:
    # pydantic would take JSON true/false as 1 and 0: `"timestamp": true` was stored as 1970.
    if isinstance(value, bool):
        raise ValueError("timestamp must be unix seconds or ISO 8601, not true or false")
    return value


def _check_time(value: datetime | float) -> datetime | float:
    seconds = value.timestamp() if isinstance(value, datetime) else value
    if not is_timestamp(seconds):
        raise ValueError("timestamp must be unix seconds (or ISO 8601) from 1970 on, not ms")
    return value


Timestamp = Annotated[datetime | float, BeforeValidator(_not_a_bool), AfterValidator(_check_time)]


def seconds(value: datetime | float | None) -> float:
    """A parsed `Timestamp` as unix seconds; now when None."""
    if value is None:
        return time.time()
    return value.timestamp() if isinstance(value, datetime) else float(value)


class Strict(BaseModel):
    """A request body that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")


class FiltersIn(Strict):
    """What a recommendation may return, in the request's words (the HTTP API's field
    names); the service turns them into `starsrec.recommender.Filters` over its rows
    (`RecommendationService.filters`). exclude_purchased None: the dataset's rule."""

    in_stock_only: StrictBool = True
    classes: list[Id] = Field(default_factory=list, max_length=1000)
    subclasses: list[Id] = Field(default_factory=list, max_length=1000)
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_BATCH)
    exclude_purchased: StrictBool | None = None
    # Places kept for new items after the first ones (`Slots`), new to the catalogue
    # (products without training events) or to the shopper (explore places); None: the
    # service's `new_item_slots` and `new_to`.
    new_item_slots: StrictInt | None = Field(default=None, ge=0, le=MAX_K)  # true is no 1
    new_to: Literal["catalogue", "shopper"] | None = None


def parse_filters(value: str | Mapping | FiltersIn | None) -> FiltersIn:
    """Filters from JSON text or a mapping, checked as the HTTP API checks a request's
    `filters` (a `FiltersIn` passes as is; None = the defaults). A RequestError naming
    the field, saying what is wrong and how to write it, otherwise."""
    if isinstance(value, FiltersIn):
        return value
    if value is None:
        return FiltersIn()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise RequestError(
                "filters",
                f"filters: not valid JSON ({error}); write one object, e.g. {FILTERS_EXAMPLE}",
            ) from error
    if not isinstance(value, Mapping):
        raise RequestError(
            "filters",
            f"filters: must be a JSON object, got {type(value).__name__}; e.g. {FILTERS_EXAMPLE}",
        )
    try:
        return FiltersIn.model_validate(dict(value))
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(["filters", *(str(part) for part in first["loc"])])
        raise RequestError(
            field, f"{field}: {first['msg']}; the fields are {FILTER_FIELDS}"
        ) from error


_TIMESTAMP = TypeAdapter(Timestamp)


def parse_timestamp(value: str | float | datetime | None) -> float | None:
    """A request time as the HTTP API reads `timestamp` (unix seconds or ISO 8601, from
    1970 on), in unix seconds; None stays None (now, for the caller to fix). A RequestError
    naming `timestamp` otherwise."""
    if value is None:
        return None
    try:
        return seconds(_TIMESTAMP.validate_python(value))
    except ValidationError as error:
        raise RequestError(
            "timestamp",
            f"timestamp: {value!r} is neither unix seconds nor ISO 8601 "
            "(e.g. 1734480000 or 2024-12-18T10:00:00Z)",
        ) from error


def check_k(k: object) -> int:
    """`k` as an int from 1 to MAX_K (the bounds of the HTTP API's `k` too); a RequestError
    naming `k` otherwise."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= MAX_K:
        raise RequestError("k", f"k: must be an integer >= 1 and <= {MAX_K}, got {k!r}")
    return int(k)


def check_events(events: Sequence[Event], items: ItemTable, event_types: Collection[str]) -> None:
    """A RequestError naming `events[i].item_id` or `events[i].event_type` for the first
    event whose item or type the service does not know."""
    for position, event in enumerate(events):
        if event.item_id not in items.row_of:
            raise RequestError(
                f"events[{position}].item_id",
                f"events[{position}].item_id: unknown item {event.item_id!r}; "
                "add it with PUT /v1/items first",
            )
        if event.event_type not in event_types:
            raise RequestError(
                f"events[{position}].event_type",
                f"events[{position}].event_type: unknown type {event.event_type!r}; "
                f"use one of {sorted(event_types)}",
            )


# -- times: no later than the server's clock plus a skew (see the module doc) -------------
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


def request_time(
    at: str | float | datetime | None, events: Sequence[Event], max_future_s: float | None
) -> float:
    """A recommendation request's time (as `parse_timestamp` reads it; now when None) as
    float seconds, after checking it and its events' times; raises RequestError naming
    `timestamp` or `events`."""
    parsed = parse_timestamp(at)
    when = time.time() if parsed is None else parsed
    bad = [e.timestamp for e in events if not is_timestamp(e.timestamp)]
    if bad:
        raise RequestError("events", f"events: timestamps must be unix seconds, got {bad[:3]}")
    latest = latest_accepted(max_future_s)
    if when > latest:
        assert max_future_s is not None
        raise _too_late("timestamp", when, max_future_s, latest)
    check_event_times(events, max_future_s)
    return when
