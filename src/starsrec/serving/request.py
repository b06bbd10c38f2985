"""What a recommendation request may say, checked in one place for every caller.

The HTTP API's bodies (`starsrec.web.app`), `starsrec recommend --filters/--timestamp` and
`Model.recommend(filters=...)` (`starsrec.serving.api`) all parse filters and times through
these pydantic models, so a filter means the same everywhere and a bad one is refused with
the same field name. They live here rather than in the web layer because the batch command
and the Python API sit beside the service, not above the HTTP app.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
)

from starsrec.serving.catalogue import RequestError
from starsrec.serving.store import is_timestamp

MAX_BATCH = 10_000
FILTERS_EXAMPLE = '{"exclude_purchased": true, "classes": ["Bags"], "exclude": ["SKU-1"]}'
FILTER_FIELDS = (
    "in_stock_only (true/false), classes and subclasses (lists of names), exclude (a list "
    "of item ids), exclude_purchased (true, false or null: the dataset's default)"
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
