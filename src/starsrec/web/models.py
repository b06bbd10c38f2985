"""The request bodies of the HTTP API (pydantic models): strict types, bounded sizes, ids
and texts UTF-8 can carry (see starsrec.web.app for the endpoints)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool

from starsrec.serving.request import MAX_BATCH, MAX_K, FiltersIn, Id, Strict, Timestamp, encodable

T = TypeVar("T")


def _within_the_cap(value: object) -> object:
    # pydantic's max_length answers only after validating MAX_BATCH items (10,000 errors
    # for a megabyte of `[{},...]`, tens of ms on the event loop): the length comes first.
    if isinstance(value, list) and len(value) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} items per request, got {len(value)}")
    return value


Batch = Annotated[list[T], BeforeValidator(_within_the_cap), Field(max_length=MAX_BATCH)]


class EventIn(Strict):
    """One shopper event, as POST /v1/events takes it."""

    user_id: Id
    item_id: Id
    event_type: Id | None = Field(None, description="default: the dataset's main event type")
    timestamp: Timestamp | None = Field(None, description="unix seconds or ISO 8601; now")
    event_id: Id | None = Field(None, description="idempotency key; a new one when omitted")


class SessionEventIn(Strict):
    """An event a recommendation request carries (no user id: the request's)."""

    item_id: Id
    event_type: Id | None = None
    timestamp: Timestamp | None = None


class RecommendIn(Strict):
    """The body of POST /v1/recommend."""

    user_id: Id | None = None
    events: list[SessionEventIn] = Field(default_factory=list, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K, strict=True)  # check_k's bounds; not "5", 5.0 or true
    timestamp: Timestamp | None = Field(None, description="request time; now when omitted")
    filters: FiltersIn = Field(default_factory=FiltersIn)


class ProductIn(Strict):
    """A product to add or change, as PUT /v1/items takes it."""

    item_id: Id
    text: Annotated[str, AfterValidator(encodable)] = Field(min_length=1, max_length=10_000)
    item_class: Id | None = Field(None, alias="class")
    subclass: Id | None = None
    in_stock: StrictBool = True
