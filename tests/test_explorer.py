"""The explorer's page and read-only endpoints, over the tiny toy-world artifact of
test_serving (users walk item chains "s{line}-n{step}", texts "product {step} of line {line}")."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from starsrec.serving.store import Event
from starsrec.web.app import create_app
from starsrec.web.browse import CatalogueBrowser
from test_serving import fresh_service, world  # noqa: F401  (world is a fixture)

DAY = 86_400
KEY = "explorer-test-key"


@pytest.fixture
def client(world, tmp_path):  # noqa: F811
    service = fresh_service(world, tmp_path)
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        yield client
    service.store.close()


def test_page_and_assets_are_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/explorer/app.js"' in page.text and 'aria-live="polite"' in page.text
    script = client.get("/explorer/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "/v1/recommend" in script.text
    assert client.get("/explorer/style.css").headers["content-type"].startswith("text/css")
    missing = client.get("/explorer/serve.py")
    assert missing.status_code == 404 and "name" in missing.json()["field"]


def test_catalogue_describes_the_forms(client) -> None:
    info = client.get("/v1/catalogue").json()
    assert info["items"] == 72 and info["users"] == 120
    assert info["classes"] == ["class-0", "class-1"]
    assert info["main_event_type"] in info["event_types"]
    assert info["allow_repeats"] is False


def test_users_are_searched_by_prefix(client) -> None:
    users = client.get("/v1/users", params={"query": "u001", "limit": 5}).json()["users"]
    assert users == ["u0010", "u0011", "u0012", "u0013", "u0014"]
    assert client.get("/v1/users", params={"query": "zz"}).json()["users"] == []
    response = client.get("/v1/users", params={"limit": 0})
    assert response.status_code == 422 and "limit" in response.text


def test_user_summary_has_history_classes_tags_and_session(client, world) -> None:  # noqa: F811
    _, log, _ = world
    user = "u0001"
    summary = client.get(f"/v1/users/{user}").json()
    assert summary["session"] == []  # no live session: the toy history is long past
    assert summary["events"] >= 4 and summary["has_long_term_memory"] is True
    (top_class,) = summary["top_classes"]  # a toy shopper walks one line, so one class
    assert top_class["name"] in {"class-0", "class-1"}
    assert top_class["count"] == summary["events"]
    # Two posted events a minute apart make a session of two, with their item texts.
    at = float(log.timestamp.max()) + 30 * DAY
    for n, item in enumerate(["s2-n3", "s2-n4"]):
        event = {"user_id": user, "item_id": item, "timestamp": at + 60 * n, "event_id": f"x{n}"}
        assert client.post("/v1/events", json=event).status_code == 200
    summary = client.get(f"/v1/users/{user}", params={"timestamp": at + 120}).json()
    assert [e["item_id"] for e in summary["session"]] == ["s2-n3", "s2-n4"]
    assert summary["session"][0]["text"] == "product 3 of line 2"
    assert all(e["live"] for e in summary["session"])
    # Asked as of before the posted events, they are not part of the history.
    earlier = client.get(f"/v1/users/{user}", params={"timestamp": at - 1}).json()
    assert earlier["events"] == summary["events"] - 2 and earlier["session"] == []


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/v1/users/nobody", 404, "user_id"),
        ("/v1/users/u0001?timestamp=1.7e12", 422, "timestamp"),
        ("/v1/users/u0001?top=0", 422, "top"),
        ("/v1/items?limit=100000", 422, "limit"),
        ("/v1/items/nope/audience", 404, "item_id"),
        ("/v1/items/s0-n1/audience?k=0", 422, "k"),
    ],
)
def test_explorer_endpoints_answer_4xx_naming_the_field(client, path, status, field) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert field in response.text


def test_explorer_reads_honour_protect_reads(world, tmp_path) -> None:  # noqa: F811
    service = fresh_service(world, tmp_path)
    app = create_app(service=service, api_key=KEY, protect_reads=True)
    with TestClient(app) as client:
        assert client.get("/").status_code == 200  # the page holds no data
        for path in ("/v1/catalogue", "/v1/users", "/v1/users/u0001", "/v1/items"):
            response = client.get(path)
            assert response.status_code == 401 and response.json()["field"] == "authorization"
        assert client.get("/v1/items/s0-n1/audience").status_code == 401
        key = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/v1/users", headers=key).json()["users"][:2] == ["u0000", "u0001"]
    service.store.close()


def test_items_are_searched_by_text_and_id(client) -> None:
    found = client.get("/v1/items", params={"query": "OF LINE 4", "limit": 3}).json()["items"]
    assert [i["item_id"] for i in found] == ["s4-n0", "s4-n1", "s4-n2"]
    assert found[0] == {
        "item_id": "s4-n0",
        "text": "product 0 of line 4",
        "item_class": "class-0",
        "subclass": "line-4",
        "in_stock": True,
        "tags": found[0]["tags"],
    }
    by_id = client.get("/v1/items", params={"query": "s5-n11"}).json()["items"]
    assert [i["item_id"] for i in by_id] == ["s5-n11"]


def line_shoppers(service, users: list[dict], line: str) -> int:
    """How many of `users` shopped only `line`."""
    lines = [
        {e.item_id.split("-")[0] for e in service.store.recent(u["user_id"], 100)} for u in users
    ]
    return sum(walked == {line} for walked in lines)


def test_audience_is_the_shoppers_of_the_item_line(world, tmp_path) -> None:  # noqa: F811
    """Toy shoppers walk one line each, so an item's audience is shoppers of its line."""
    service = fresh_service(world, tmp_path)
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        users = client.get("/v1/items/s3-n6/audience", params={"k": 5}).json()["users"]
        assert len(users) == 5
        scores = [u["score"] for u in users]
        assert scores == sorted(scores, reverse=True)
        # A learned model is not perfect (about 9 in 10 of an item's top 5 walk its line
        # on this world): most of the audience, not all of it.
        assert line_shoppers(service, users, "s3") >= 4, users
        # A product added a moment ago, described like line 3, reaches line 3 at once.
        product = {"item_id": "new", "text": "product 7 of line 3", "class": "class-1"}
        assert client.put("/v1/items", json=product).status_code == 200
        new = client.get("/v1/items/new/audience", params={"k": 3}).json()["users"]
        assert line_shoppers(service, new, "s3") >= 2, new
    service.store.close()


def test_browser_audience_matches_a_brute_force_ranking(world, tmp_path) -> None:  # noqa: F811
    service = fresh_service(world, tmp_path)
    browser = CatalogueBrowser(service)
    token = service.items.tokens[service.items.row_of["s1-n5"]]
    expected = sorted(service.memories, key=lambda u: (-float(service.memories[u] @ token), u))
    assert [m.user_id for m in browser.audience("s1-n5", 10)] == expected[:10]
    service.add_events([Event("live-1", "u0002", "s0-n1", service.main_event_type, 1.75e9)])
    (event,) = browser.summary("u0002", at=1.75e9).session
    assert event.live and event.item_id == "s0-n1"
    service.store.close()
