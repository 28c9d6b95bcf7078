"""One `serve` (real model, embedded backends) and one browser for the whole module: starting
either costs seconds, and the tests follow one user's session through the page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.procs import Service, base_env, free_port
from tests.web.browser import launch


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("web")
    port = free_port()
    svc = Service(base_env(data_dir, API_PORT=port), data_dir, port)
    try:
        svc.start("serve")
        yield svc
    finally:
        svc.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser: Browser, web: Service) -> Iterator[Page]:
    """One tab for the module, as one user would keep it open; every request it makes is kept
    in `page.requested` (to check that nothing is fetched from anywhere else)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    requested: list[str] = []
    tab.on("request", lambda request: requested.append(request.url))
    tab.requested = requested  # type: ignore[attr-defined]
    tab.set_default_timeout(30_000)
    yield tab
    context.close()
