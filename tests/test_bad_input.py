"""Bad input never crashes anything (property tests): odd and unicode ids, NaN/inf and far
past/future timestamps, huge and negative k, duplicated events, unknown users and items go
through ingestion, the service and the HTTP API as data or as a clear 4xx / ValueError,
never as another exception or a 5xx."""

from __future__ import annotations

import json
import math
import shutil
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starsrec.data.dataset import DataError, Dataset, EventType
from starsrec.data.validation import validate
from starsrec.serving.catalogue import RequestError
from starsrec.serving.service import RecommendationService
from starsrec.serving.store import Event
from starsrec.web.app import create_app

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
odd_text = st.text(min_size=0, max_size=40)  # unicode of every category, empty included
odd_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([0, -1, 1e11, 1e18, -1e18, 253402300800]),  # year 10000 and beyond
)
odd_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def service(served_artifact, tmp_path_factory):
    _, _, artifact = served_artifact
    copy = shutil.copytree(artifact, tmp_path_factory.mktemp("bad-input") / "artifact")
    service = RecommendationService.load(copy)
    yield service
    service.store.close()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        yield client


# --- the service -----------------------------------------------------------------------------
@SETTINGS
@given(
    events=st.lists(
        st.builds(Event, odd_text, odd_text, odd_text, odd_text, odd_number), max_size=5
    )
)
def test_odd_events_are_stored_or_refused_clearly(service, events: list[Event]) -> None:
    before = service.store.count()
    try:
        stored = service.add_events(events)
    except RequestError as error:
        assert error.field and str(error)
        assert service.store.count() == before  # a refused batch stores nothing
        return
    assert 0 <= stored <= len(events)
    assert service.add_events(events) == 0  # the same ids again: stored once


@SETTINGS
@given(
    user=st.one_of(st.none(), odd_text),
    k=st.integers(min_value=-5, max_value=10**9),
    at=st.one_of(st.none(), odd_number),
    recent=st.lists(st.tuples(odd_text, odd_number), max_size=3),
)
def test_odd_recommend_requests_answer_or_refuse_clearly(service, user, k, at, recent) -> None:
    items = list(service.items.item_ids[:3])
    events = [
        Event(f"request:{n}", "", items[n % len(items)] if i == "" else i, "purchase", t)
        for n, (i, t) in enumerate(recent)
    ]
    try:
        results = service.recommend(user, events, k, at)
    except RequestError as error:
        assert error.field and str(error)
        return
    assert len(results) <= min(k, service.index.size)
    assert all(math.isfinite(r.score) for r in results)
    assert len({r.item_id for r in results}) == len(results)


# --- the HTTP API ----------------------------------------------------------------------------
@SETTINGS
@given(body=odd_json)
def test_any_json_body_gets_an_answer_below_500(client, body) -> None:
    for method, path in [
        ("POST", "/v1/events"),
        ("POST", "/v1/recommend"),
        ("PUT", "/v1/items"),
    ]:
        # json.dumps writes NaN / Infinity tokens, which strict JSON lacks: the server
        # must refuse them too.
        content = json.dumps(body)
        headers = {"content-type": "application/json"}
        answer = client.request(method, path, content=content, headers=headers)
        assert answer.status_code < 500, (path, body, answer.text)
        if answer.status_code >= 400:
            assert answer.json()["detail"]  # says what is wrong


@SETTINGS
@given(item_id=odd_text, k=st.integers(min_value=-(10**6), max_value=10**12))
def test_odd_similar_requests_answer_below_500(client, item_id: str, k: int) -> None:
    answer = client.get(f"/v1/items/{quote(item_id, safe='')}/similar", params={"k": k})
    assert answer.status_code < 500, answer.text


def test_huge_and_negative_k_are_refused_with_the_cap(client) -> None:
    for k in (0, -3, 1001, 10**12):
        answer = client.post("/v1/recommend", json={"user_id": "u0000", "k": k})
        assert answer.status_code == 422 and "k" in answer.text


# --- ingestion -------------------------------------------------------------------------------
@SETTINGS
@given(
    rows=st.lists(
        st.tuples(odd_text, odd_text, st.one_of(odd_number, odd_text)), min_size=1, max_size=6
    )
)
def test_odd_event_tables_are_validated_or_refused_clearly(rows) -> None:
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    ids = sorted({r[1] for r in rows})
    items = pd.DataFrame({"item_id": ids, "text": [f"product {i}" for i in range(len(ids))]})
    try:
        dataset = validate(Dataset("fuzz", events, items, (EventType("purchase"),)))
    except DataError as error:
        assert str(error)
        return
    assert len(dataset.events) <= len(events)
    assert dataset.events["timestamp"].notna().all()
    assert np.isin(dataset.events["item_id"], dataset.items["item_id"]).all()
