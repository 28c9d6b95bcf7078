"""Debian's chromium, driven by playwright: the one way the page's tests and `make screenshots`
start a browser (nothing may download one, so never `playwright install`)."""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def wait_until(page: Page, predicate: str, arg: Any = None, timeout: float = 30) -> None:
    """Poll a JavaScript function in the page until it returns true. (Playwright's own
    wait_for_function evaluates strings, which the page's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        time.sleep(0.05)
