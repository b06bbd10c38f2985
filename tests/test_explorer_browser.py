"""The explorer page in a real browser: headless Debian chromium, driven by Playwright for
Python, against the real app served by uvicorn on loopback over the tiny toy-world artifact.

Playwright's own browser downloads are never used: it launches the system chromium
(`scripts/chromium.sh` installs it; `STARSREC_CHROMIUM` points elsewhere). Screenshots at a
desktop and a phone width go to test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from starsrec.web.app import create_app
from test_serving import fresh_service, world  # noqa: F401  (world is a fixture)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 10_000


def chromium() -> str:
    """The chromium executable, or a skip saying how to install it."""
    path = os.environ.get("STARSREC_CHROMIUM") or shutil.which("chromium")
    if not path or not Path(path).exists():
        pytest.skip(
            "chromium is not installed: run `make test-setup` (scripts/chromium.sh installs the "
            "Debian package) or set STARSREC_CHROMIUM to a Chromium executable"
        )
    return path


@pytest.fixture
def server(world, tmp_path) -> Iterator[str]:  # noqa: F811
    """The app on a free loopback port, served by uvicorn in a background thread."""
    service = fresh_service(world, tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(service=service, insecure_open_writes=True),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)
    service.store.close()


def card_ids(page) -> list[str]:
    return page.locator("#recommendations li.card").evaluate_all(
        "cards => cards.map(card => card.dataset.itemId)"
    )


def test_pick_a_shopper_add_an_item_and_add_a_product(server) -> None:
    executable = chromium()
    expect.set_options(timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server)
        expect(page.locator("#catalogue-info")).to_contain_text("72 items")

        # Pick a shopper by typing the start of the id and choosing from the matches.
        page.get_by_label("Shopper id").fill("u000")
        page.get_by_role("button", name="u0001", exact=True).click()
        status = page.get_by_role("status")
        expect(status).to_contain_text("for u0001")
        expect(page.locator("#shopper-summary")).to_contain_text("Top classes")

        # A week before Christmas (of the shopper's last year): the request time moves there
        # and the calendar offsets act on it.
        page.get_by_role("button", name="A week before Christmas").click()
        expect(status).to_contain_text("-12-18")
        assert (
            page.get_by_label("Date (calendar offsets act on it)").input_value().endswith("-12-18")
        )
        before = card_ids(page)
        assert len(before) == 10

        # Add the top recommendation to the session: the list refreshes without it (bought
        # items are hidden) and the current session shows it.
        first = page.locator("#recommendations li.card").first
        title = first.locator(".title").inner_text()
        first.get_by_role("button", name=f"Add to session: {title}").click()
        expect(status).to_contain_text("Added")
        after = card_ids(page)
        assert after != before and before[0] not in after
        expect(page.locator("#shopper-summary .session")).to_contain_text(title)
        expect(page.locator("#recommendations .badge.new").first).to_be_visible()

        # Find an item by its words and add it with the keyboard alone.
        page.get_by_label("Find an item to add to the session").fill("product 2 of line 4")
        page.keyboard.press("Enter")
        found = page.get_by_role("button", name="product 2 of line 4", exact=True)
        found.focus()
        page.keyboard.press("Enter")
        expect(status).to_contain_text("Added “product 2 of line 4”")
        expect(page.locator("#shopper-summary .session")).to_contain_text("product 2 of line 4")

        # Add a product by its title and see which shoppers it reaches.
        page.get_by_label("Title").fill("product 7 of line 3")
        page.get_by_role("button", name="Add product", exact=True).click()
        expect(page.locator("#product-result")).to_contain_text("reaches")
        expect(page.locator("#product-result button").first).to_be_visible()
        page.screenshot(path=ARTIFACTS / "explorer-desktop.png", full_page=True)

        page.set_viewport_size({"width": 375, "height": 800})
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways at 375 px ({width} px wide)"
        page.screenshot(path=ARTIFACTS / "explorer-narrow.png", full_page=True)
        browser.close()
    assert errors == []
