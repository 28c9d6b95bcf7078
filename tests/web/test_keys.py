"""The page with API keys on (AUTH=on, issue 12): it asks for a key once, says when one is
wrong, keeps it in the browser, and plays and downloads through the signed links (an `<audio>`
element cannot send a key header)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import Clip
from tests.procs import ROOT, SMAP_STT, Service, base_env, free_port
from tests.web.browser import wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def locked(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[tuple[Service, str]]:
    data_dir = tmp_path_factory.mktemp("web-keys")
    port = free_port()
    svc = Service(base_env(data_dir, API_PORT=port, AUTH="on"), data_dir, port)
    made = subprocess.run(
        [*SMAP_STT, "keys", "create", "browser"],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = made.stdout.strip()
    try:
        svc.start("serve")
        yield svc, key
    finally:
        svc.stop_all()


def test_the_page_asks_for_a_key_once_and_plays_through_signed_links(
    browser: Browser, locked: tuple[Service, str], tiny_clip: Clip
) -> None:
    svc, key = locked
    context = browser.new_context(accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(svc.url)
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-error")).to_be_hidden()  # asked, not yet refused

        page.fill("#key-input", "not-a-key")
        page.locator('#key-form button[type="submit"]').click()
        expect(dialog).to_be_visible()
        expect(page.locator("#key-error")).to_contain_text("That key was not accepted")

        page.fill("#key-input", key)
        page.locator('#key-form button[type="submit"]').click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#jobs-empty")).to_be_visible()
        assert page.evaluate("() => localStorage.getItem('smap-stt.api-key')") == key

        page.reload()  # kept: no second question
        expect(page.locator("#jobs-empty")).to_be_visible()
        expect(dialog).to_be_hidden()

        page.set_input_files("#file-input", str(tiny_clip.path))
        row = page.locator(".job", has=page.locator(".job-name", has_text=tiny_clip.path.name))
        expect(row.locator(".badge")).to_have_text("Completed", timeout=150_000)
        row.locator("a.job-name").click()
        expect(page.locator(".segment").first).to_be_visible()

        src = page.locator("#player").get_attribute("src") or ""
        assert "signature=" in src, src
        wait_until(page, "() => document.getElementById('player').readyState >= 1")  # loaded
        href = page.locator('#t-downloads a[data-format="txt"]').get_attribute("href") or ""
        assert "signature=" in href, href
        with httpx.Client(base_url=svc.url) as anonymous:  # no key header: the signature is it
            assert anonymous.get(src, headers={"Range": "bytes=0-99"}).status_code == 206
            assert anonymous.get(href).status_code == 200
            assert anonymous.get("/api/v1/tasks").status_code == 401
    finally:
        context.close()
