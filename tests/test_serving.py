"""The online service and its HTTP API on the toy world (a tiny trained STARS).

Users walk item chains, so the right next item is known: the successor of the last one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starsrec.data.files import SERVING_DIR
from starsrec.data.interactions import Catalogue, EventLog, Queries
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import Filters, Slots, TrainingData
from starsrec.serving.catalogue import RequestError
from starsrec.serving.config import ServingConfig
from starsrec.serving.offline import write_serving_files
from starsrec.serving.request import FiltersIn
from starsrec.serving.service import Product, RecommendationService
from starsrec.serving.store import Event
from starsrec.stars.calibration import calibrated
from starsrec.stars.export import EagerUserEncoder, OnnxUserEncoder, encoder_inputs
from starsrec.stars.recommender import StarsRecommender, tag_vocabulary
from starsrec.stars.scoring import cached_scorer
from starsrec.stars.sequences import featurize, query_windows
from starsrec.web.app import create_app
from tiny import tiny

DAY = 86_400
# Later than the toy history (2024) yet in the past: the service refuses future times.
LATER = 1_750_000_000.0
KEY = "serving-test-key-16+"  # at least 16 characters, as create_app needs
CONFIG = tiny(
    model={"dim": 32, "max_length": 10, "attribute_dim": 8, "dropout": 0.1},
    train={"epochs": 40, "uniform_negatives": 32, "subclass_negatives": 32},
    derived_subclasses=8,
    derived_classes=4,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained tiny STARS, its artifact and serving files, over the whole toy log."""
    torch.set_num_threads(1)
    dataset = make_toy_world(n_users=120)
    catalogue = Catalogue.from_items(dataset.items)
    log = EventLog.from_dataset(dataset, catalogue)
    recommender = StarsRecommender(CONFIG).fit(TrainingData(log, catalogue, "GB"))
    # A non-identity own-item re-scoring (no validation here to calibrate one), so the
    # parity tests cover it; mild enough that own items still reach the top 10.
    recommender.model.own_item_taste.fill_(1.25)
    recommender.model.own_item_offset.fill_(-0.5)
    recommender.model.own_item_recent.fill_(0.75)
    # Live signals weighed in too (per half-life, new items), so the parity tests cover them.
    recommender.model.live_weights.copy_(torch.tensor([0.3, 0.2, 1.0]))
    # And co-occurrence with the latest purchases.
    recommender.model.cooccurrence_weight.fill_(0.5)
    recommender.model.cooccurrence_scale.fill_(0.1)
    artifact = recommender.save(tmp_path_factory.mktemp("artifact"))
    write_serving_files(recommender, log, artifact / SERVING_DIR, exclude_seen=True)
    return recommender, log, artifact


@pytest.fixture
def service(world):
    _, _, artifact = world
    service = RecommendationService.load(artifact)
    yield service
    service.store.close()


def fresh_service(world, tmp_path) -> RecommendationService:
    """A service on a private copy of the serving files (tests that write events)."""
    import shutil

    _, _, artifact = world
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    return RecommendationService.load(copy)


@pytest.mark.parametrize("days_later", [1, 60])
@pytest.mark.parametrize("use_onnx", [True, False])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_service_ranks_like_the_offline_scorer(world, days_later, use_onnx, exclude_seen) -> None:
    """Same top 10 as `StarsRecommender.recommend` on the whole history, through the
    encoder (a request a day later) and through the offline long-term memory (60 days);
    with the user's own items allowed, the service's repeat bonus is the scorer's."""
    recommender, log, artifact = world
    service = RecommendationService.load(artifact, ServingConfig(use_onnx=use_onnx))
    users = list(log.user_ids[:25])
    at = int(log.timestamp.max()) + days_later * DAY
    queries = Queries.for_users(log, users, time=at)
    expected, expected_scores = recommender.recommend(
        queries, 10, Filters(exclude_seen=exclude_seen)
    )
    if not exclude_seen:  # the check needs the user's own items among the top 10
        own = [
            np.isin([service.items.row_of[i] for i in expected[q]], log.item[queries.history(q)])
            for q in range(len(users))
        ]
        assert np.sum(own) >= 5
    filters = service.filters(FiltersIn(exclude_purchased=exclude_seen))
    for q, user in enumerate(users):
        results = service.recommend(user, k=10, at=at, filters=filters)
        assert [r.item_id for r in results] == list(expected[q]), user
        np.testing.assert_allclose(
            [r.score for r in results], expected_scores[q], rtol=1e-4, atol=1e-4
        )
    service.store.close()


def test_explore_places_are_served_as_the_offline_scorer_places_them(world) -> None:
    """Places for items new to the shopper (`new_to="shopper"`): the service's top 12 is
    the offline scorer's under the same rule, and places 11-12 hold items the user never
    had where the plain ranking held the user's own items there."""
    recommender, log, artifact = world
    service = RecommendationService.load(artifact)
    users = list(log.user_ids[:25])
    at = int(log.timestamp.max()) + DAY
    queries = Queries.for_users(log, users, time=at)
    slots = Slots(np.ones(service.index.size, bool), count=2, after=10, new_to_shopper=True)
    plain, _ = recommender.recommend(queries, 12)
    expected, expected_scores = recommender.recommend(queries, 12, Filters(slots=slots))
    request = FiltersIn(exclude_purchased=False, new_item_slots=2, new_to="shopper")
    filters = service.filters(request)
    moved = 0
    for q, user in enumerate(users):
        had = set(recommender.catalogue.item_ids[log.item[queries.history(q)]])
        results = service.recommend(user, k=12, at=at, filters=filters)
        assert [r.item_id for r in results] == list(expected[q]), user
        np.testing.assert_allclose(
            [r.score for r in results], expected_scores[q], rtol=1e-4, atol=1e-4
        )
        assert list(expected[q][:10]) == list(plain[q][:10])  # the first places stay
        assert not had & set(expected[q][10:])
        moved += bool(had & set(plain[q][10:]))
    assert moved  # the rule changed some list
    service.store.close()


def test_the_served_cooccurrence_term_moves_lists(world) -> None:
    """The co-occurrence term the parity tests serve is no no-op: without its weight the
    offline scorer's top 10 differ for some of the users those tests check."""
    recommender, log, _ = world
    at = int(log.timestamp.max()) + DAY
    queries = Queries.for_users(log, list(log.user_ids[:25]), time=at)
    model = recommender.model
    with_term, _ = recommender.recommend(queries, 10)
    weight = float(model.cooccurrence_weight)
    model.cooccurrence_weight.fill_(0.0)
    try:
        without, _ = recommender.recommend(queries, 10)
    finally:
        model.cooccurrence_weight.fill_(weight)
    assert (with_term != without).any()


def test_calibration_combines_cached_parts_into_the_plain_scores(world) -> None:
    """Calibration computes each chunk's score parts once and combines them with every
    setting it tries, reusing the live and co-occurrence terms while their values stay: at
    each setting (the fixture's, others, one value moved at a time, every added term off)
    those scores equal `score`, cached or not (a cache of 0 floats computes again each time)."""
    recommender, log, _ = world
    model, n_items = recommender.model, recommender._fitted_catalogue().size
    queries = Queries.for_users(log, list(log.user_ids[:40]), time=int(log.timestamp.max()) + DAY)
    calls = []

    def parts_of(lo: int, hi: int):
        calls.append((lo, hi))
        return recommender.score_parts(queries[lo:hi], live=True, cooccurrence=True)

    cached = cached_scorer(model, n_items, parts_of)
    uncached = cached_scorer(model, n_items, parts_of, max_floats=0)
    values = calibrated(model)
    fixture = {name: float(value) for name, value in values.items()}
    moved = fixture | {"own_item_taste": 0.5, "own_item_recent": 3.0, "live_1d": 0.0}
    moved |= {"cooccurrence_weight": 2.0, "cooccurrence_scale": 1.0}
    own_only = moved | {"own_item_offset": 1.5}  # the kept live and co-occurrence terms
    scale_only = own_only | {"cooccurrence_scale": 0.01}
    off = {name: 0.0 for name in fixture} | {"own_item_taste": 1.0, "cooccurrence_scale": 1.0}
    settings = (fixture, moved, own_only, scale_only, off)
    try:
        for setting in settings:
            for name, value in setting.items():
                values[name].fill_(value)
            want = recommender.score(queries)
            for scorer in (cached, uncached):
                np.testing.assert_allclose(scorer(0, 25), want[:25], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(scorer(25, 40), want[25:], rtol=1e-5, atol=1e-5)
    finally:
        for name, value in fixture.items():
            values[name].fill_(value)
    assert len(calls) == 2 + 2 * len(
        settings
    )  # the cached scorer's chunks once, the other's each time


def test_onnx_encoder_matches_eager(world) -> None:
    recommender, log, artifact = world
    queries = Queries.for_users(log, list(log.user_ids[:16]))
    rows = query_windows(queries, CONFIG.model.max_length)
    batch = featurize(log, rows, queries.time + 3600, recommender.calendar, 30.0)
    tokens = (
        recommender.model.item_vectors().detach().numpy()[np.maximum(batch.items.numpy() - 1, 0)]
    )
    inputs = encoder_inputs(batch, tokens)
    onnx = OnnxUserEncoder(artifact / SERVING_DIR / "encoder.onnx")(inputs)
    eager = EagerUserEncoder(recommender.model)(inputs)
    for name, value in eager.items():
        np.testing.assert_allclose(onnx[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_posted_events_shift_the_next_recommendation(world, tmp_path) -> None:
    """A shopper's events posted a moment ago drive the very next request. (Toy shoppers buy
    once a day, so the posted events keep that rhythm: the toy model never saw minutes.)"""
    service = fresh_service(world, tmp_path)
    at = LATER
    before = service.recommend("newcomer", k=5, at=at)
    assert {r.memory for r in before} == {"context"}  # no history: context and popularity
    for n in (2, 3, 4):
        event = Event(f"live-{n}", "newcomer", f"s3-n{n}", "purchase", at + n * DAY)
        assert service.add_events([event]) == 1
        after = service.recommend("newcomer", k=5, at=at + (n + 1) * DAY)
        assert f"s3-n{n + 1}" in [r.item_id for r in after[:3]]  # the successor leads
    assert after[0].item_id == "s3-n5"
    assert after[0].memory in {"session", "long-term"}
    assert service.add_events([event]) == 0  # idempotent: the same event id again
    service.store.close()


def test_a_new_product_reaches_matching_shoppers_at_once(world, tmp_path) -> None:
    service = fresh_service(world, tmp_path)
    at = LATER
    session = [Event(f"e{n}", "", f"s2-n{n}", "purchase", at - (5 - n) * DAY) for n in (2, 3, 4)]
    # A new product described like the next item of line 2 (and unlike any other line).
    status = service.upsert_items(
        [Product("brand-new", "product 5 of line 2", "class-0", "line-2")]
    )
    assert status == ["added"]
    results = service.recommend(events=session, k=5, at=at)
    assert "brand-new" in [r.item_id for r in results]
    # Its nearest items are line 2's, the trained product it was described like among them
    # (not always first: that product's learned residual moves it from its text twin).
    nearest = [r.item_id for r in service.similar("brand-new", k=5)]
    assert nearest[0].startswith("s2-") and "s2-n5" in nearest
    # Out of stock: never returned again, at once.
    service.upsert_items([Product("brand-new", "product 5 of line 2", "class-0", "line-2", False)])
    assert "brand-new" not in [r.item_id for r in service.recommend(events=session, k=20, at=at)]
    service.store.close()


def test_tags_keep_the_domains_fit_detected(world, tmp_path) -> None:
    """Fit records the tag domains it detected; the artifact, the service and a product put
    live tag with the same vocabulary, reading the places the product names."""
    recommender, _, artifact = world
    domains = recommender.config.tag_domains
    # Detected at fit and recorded; the toy names match no tag, so no domain is ruled out.
    assert domains == ("film", "gifts", "grocery")
    assert StarsRecommender.load(artifact).config.tag_domains == domains
    vocabulary = tag_vocabulary(recommender.config)
    assert recommender.features["tags"].shape[1] == len(vocabulary)
    service = fresh_service(world, tmp_path)
    assert list(service.tag_names) == list(vocabulary)
    service.upsert_items([Product("gift", "product 1 of line 0", "class-0", "christmas cards")])
    tags = service.items.tags[service.items.row_of["gift"]]
    assert {vocabulary[c] for c in np.flatnonzero(tags)} == {"christmas", "stationery"}
    service.store.close()


def test_a_product_launched_and_bought_a_moment_ago_rises_for_everyone(world, tmp_path) -> None:
    """Live signals: a new product bought by other shoppers in the last minutes climbs the
    very next recommendation of a shopper who never saw it (the store's counters, read
    through its write, not the next refresh)."""
    service = fresh_service(world, tmp_path)
    at = LATER
    shopper = "u0"

    def rank() -> int:
        found = [r.item_id for r in service.recommend(shopper, k=len(service.items), at=at)]
        return found.index("launch")

    # Where new products seldom sell, calibration leaves the new-item bias low: the launch
    # starts near the bottom.
    service.model.new_item_bias.data.fill_(-3.0)
    service.upsert_items([Product("launch", "a brand new gadget", "class-1", "line-5")])
    before = rank()
    buyers = [Event(f"buy-{n}", f"buyer-{n}", "launch", "purchase", at - 60 * n) for n in range(20)]
    assert service.add_events(buyers) == 20
    after = rank()
    assert after < 10 <= before, (before, after)  # into the top 10 from far below
    service.store.close()


def test_new_item_slots_keep_places_for_new_products(world, tmp_path) -> None:
    """A product put a moment ago that the model ranks far down is shown right after the
    first places when the request keeps places for new products (and only then)."""
    service = fresh_service(world, tmp_path)
    service.model.new_item_bias.data.fill_(-3.0)  # new products start near the bottom
    service.upsert_items([Product("launch", "a brand new gadget", "class-1", "line-5")])
    plain = [r.item_id for r in service.recommend("u0", k=len(service.items), at=LATER)]
    assert plain.index("launch") > 10
    assert service.filters(FiltersIn(new_item_slots=0)).slots is None
    filters = service.filters(FiltersIn(new_item_slots=1))
    assert filters.slots is not None and filters.slots.after == 10  # the service's default
    new = {service.items.item_ids[r] for r in np.flatnonzero(filters.slots.items)}
    assert "launch" in new and len(new) < len(plain) // 2  # and the toy items nobody bought

    def best_new_after(first: int) -> str:
        return next(i for i in plain[first:] if i in new)

    five = dataclasses.replace(filters, slots=dataclasses.replace(filters.slots, after=5))
    found = [r.item_id for r in service.recommend("u0", k=6, at=LATER, filters=five)]
    assert plain.index(best_new_after(5)) > 5  # placing moves it up
    assert found == [*plain[:5], best_new_after(5)]
    # Over HTTP, the request's filters name the count.
    client = TestClient(create_app(service=service, insecure_open_writes=True))
    body = {"user_id": "u0", "k": 11, "timestamp": LATER, "filters": {"new_item_slots": 1}}
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == 200, response.text
    assert [i["item_id"] for i in response.json()["items"]] == [*plain[:10], best_new_after(10)]
    service.store.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user=st.integers(0, 40),
    classes=st.sets(st.sampled_from(["class-0", "class-1"]), max_size=1),
    subclasses=st.sets(st.sampled_from([f"line-{s}" for s in range(6)]), max_size=3),
    exclude=st.sets(
        st.sampled_from([f"s{s}-n{n}" for s in range(6) for n in range(12)]), max_size=10
    ),
    exclude_purchased=st.booleans(),
    k=st.integers(1, 80),
)
def test_filters_are_never_violated(
    service, world, user, classes, subclasses, exclude, exclude_purchased, k
) -> None:
    _, log, _ = world
    user_id = str(log.user_ids[user])
    filters = service.filters(
        FiltersIn(
            classes=list(classes),
            subclasses=list(subclasses),
            exclude=list(exclude),
            exclude_purchased=exclude_purchased,
        )
    )
    results = service.recommend(user_id, k=k, at=float(log.timestamp.max()) + DAY, filters=filters)
    purchased = {e.item_id for e in service.store.recent(user_id, 1000)}
    ids = [r.item_id for r in results]
    assert len(ids) == len(set(ids)) <= k
    for item in ids:
        line, _ = item[1:].split("-n")
        assert not subclasses or f"line-{line}" in subclasses
        assert not classes or f"class-{int(line) % 2}" in classes
        assert item not in exclude
        assert not (exclude_purchased and item in purchased)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


def test_bad_service_input_names_the_field(service) -> None:
    with pytest.raises(RequestError, match=r"filters\.classes"):
        service.recommend("u0000", filters=service.filters(FiltersIn(classes=["no-such-class"])))
    with pytest.raises(RequestError, match=r"events\[0\]\.item_id"):
        service.add_events([Event("x", "u0000", "no-such-item", "purchase", 1.0)])
    with pytest.raises(RequestError, match=r"events\[0\]\.event_type"):
        service.add_events([Event("x", "u0000", "s0-n0", "teleport", 1.0)])


# -- HTTP ------------------------------------------------------------------------------
@pytest.fixture
def client(world, tmp_path):
    service = fresh_service(world, tmp_path)
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        yield client
    service.store.close()


def test_http_round_trip(client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    event = {"user_id": "u0001", "item_id": "s1-n3", "timestamp": LATER, "event_id": "a"}
    assert client.post("/v1/events", json=event).json() == {"received": 1, "stored": 1}
    assert client.post("/v1/events", json=[event]).json() == {"received": 1, "stored": 0}
    body = {"user_id": "u0001", "k": 3, "timestamp": LATER + 60}
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 3 and items[0]["item_id"] == "s1-n4"
    assert {"item_id", "score", "text", "tags", "shared_tags", "memory"} <= set(items[0])
    anonymous = {"events": [{"item_id": "s0-n2", "timestamp": LATER}], "k": 2}
    assert client.post("/v1/recommend", json=anonymous).status_code == 200
    stranger = client.post("/v1/recommend", json={"user_id": "nobody", "k": 4}).json()
    assert [i["memory"] for i in stranger["items"]] == ["context"] * 4
    put = client.put("/v1/items", json={"item_id": "new", "text": "product 4 of line 1"})
    assert put.json()["items"] == [{"item_id": "new", "status": "added"}]
    assert client.get("/v1/items/new/similar?k=3").status_code == 200
    metrics = client.get("/metrics").text
    assert 'starsrec_requests_total{route="/v1/recommend",status="200"}' in metrics
    assert "starsrec_index_items" in metrics


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/v1/recommend", {"k": 0}, "k"),
        ("post", "/v1/recommend", {"k": 10**6}, "k"),
        ("post", "/v1/recommend", {"k": "ten"}, "k"),
        ("post", "/v1/recommend", {"user_id": ""}, "user_id"),
        ("post", "/v1/recommend", {"colour": "red"}, "colour"),
        ("post", "/v1/recommend", {"filters": {"classes": ["nope"]}}, "filters.classes"),
        ("post", "/v1/recommend", {"filters": {"exclude": ["nope"]}}, "filters.exclude"),
        ("post", "/v1/recommend", {"filters": {"new_item_slots": -1}}, "new_item_slots"),
        ("post", "/v1/recommend", {"filters": {"new_item_slots": True}}, "new_item_slots"),
        ("post", "/v1/recommend", {"filters": {"new_to": "everyone"}}, "new_to"),
        ("post", "/v1/recommend", {"events": [{"item_id": "nope"}]}, "events"),
        (
            "post",
            "/v1/recommend",
            {"events": [{"item_id": "s0-n1", "event_type": "teleport"}]},
            "events[0].event_type",
        ),
        ("post", "/v1/events", {"user_id": "u", "item_id": "nope"}, "item_id"),
        (
            "post",
            "/v1/events",
            {"user_id": "u", "item_id": "s0-n1", "timestamp": "soon"},
            "timestamp",
        ),
        (
            "post",
            "/v1/events",
            {"user_id": "u", "item_id": "s0-n1", "timestamp": -5.0},
            "timestamp",
        ),
        ("post", "/v1/events", {"item_id": "s0-n1"}, "user_id"),
        ("post", "/v1/recommend", {"timestamp": 1.7e12}, "timestamp"),
        ("post", "/v1/recommend", '{"timestamp": NaN}', "timestamp"),  # Python's json reads it
        ("post", "/v1/recommend", '{"timestamp": Infinity}', "timestamp"),
        ("post", "/v1/recommend", '{"k": 3', "body"),  # truncated
        ("post", "/v1/recommend", {"events": [{"item_id": "s0-n1", "timestamp": -1}]}, "timestamp"),
        ("put", "/v1/items", {"item_id": "x"}, "text"),
        ("get", "/v1/items/nope/similar", None, "item_id"),
        ("get", "/v1/items/s0-n1/similar?k=-1", None, "k"),
    ],
)
def test_invalid_requests_get_4xx_naming_the_field(client, method, path, body, field) -> None:
    kwargs = {} if body is None else {"content": body} if isinstance(body, str) else {"json": body}
    response = getattr(client, method)(path, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text


def test_writes_need_the_api_key_when_one_is_set(world, tmp_path) -> None:
    service = fresh_service(world, tmp_path)
    event = {"user_id": "u0001", "item_id": "s1-n3", "event_id": "k1"}
    with TestClient(create_app(service=service, api_key=KEY)) as client:
        assert client.post("/v1/events", json=event).status_code == 401
        wrong = {"Authorization": "Bearer guess"}
        response = client.post("/v1/events", json=event, headers=wrong)
        assert response.status_code == 401 and "Bearer" in response.json()["detail"]
        right = {"Authorization": f"Bearer {KEY}"}
        assert client.post("/v1/events", json=event, headers=right).status_code == 200
        product = {"item_id": "n", "text": "product 1 of line 1"}
        assert client.put("/v1/items", json=product).status_code == 401
        assert client.post("/v1/recommend", json={"k": 2}).status_code == 200  # reads open
    with TestClient(create_app(service=service, api_key=KEY, protect_reads=True)) as client:
        assert client.post("/v1/recommend", json={"k": 2}).status_code == 401
        assert client.get("/healthz").status_code == 200  # liveness stays open
    service.store.close()


def test_oversized_bodies_are_refused(world, tmp_path) -> None:
    service = fresh_service(world, tmp_path)
    stored = service.store.count()
    with TestClient(
        create_app(service=service, max_body_bytes=1000, insecure_open_writes=True)
    ) as client:
        events = [{"user_id": "u", "item_id": "s0-n1", "event_id": str(n)} for n in range(100)]
        response = client.post("/v1/events", json=events)
        assert response.status_code == 413 and "bytes" in response.json()["detail"]
        assert service.store.count() == stored  # nothing half-written
    service.store.close()
