"""`make screenshots`: docs/screenshots/*.png for the README, from the real page.

Starts its own `serve` (embedded backends, a temporary data directory, a free port), gives it a
few jobs in every state (two finished, one running, one waiting, one cancelled), photographs the
jobs list and a transcript with the same browser the tests drive (Debian's chromium through
playwright), and stops the service. `make test` never writes these files.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402
from tests.procs import Service, base_env, free_port, upload, wait_final, wait_running  # noqa: E402
from tests.speech import cached_speech, cached_speech_paragraphs, paragraphs  # noqa: E402
from tests.web.browser import launch  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
MAX_BYTES = 300 * 1024
VIEWPORT = {"width": 1240, "height": 860}


def clips(work: Path) -> dict[str, Path]:
    """Speech made by espeak-ng, under names a user might give their files."""
    english = paragraphs("english")
    made = {
        "harbour-interview.wav": cached_speech_paragraphs(english[:2]),
        "weekly-standup.wav": cached_speech(english[2]),
        "lecture-part-1.wav": cached_speech_paragraphs([*english, *paragraphs("long")[:1]]),
        "voicemail.wav": cached_speech("Hi, it's Sam. Call me back when you get this."),
        "draft-notes.wav": cached_speech("These are the draft notes for Tuesday."),
    }
    named = {}
    for name, source in made.items():
        named[name] = work / name
        shutil.copyfile(source, named[name])
    return named


def shoot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
    size = path.stat().st_size
    print(f"wrote {path.relative_to(ROOT)} ({size // 1024} KB)")
    if size > MAX_BYTES:
        raise SystemExit(f"{path.name} is {size // 1024} KB; keep screenshots under 300 KB")


def settle(page: Page) -> None:
    """Two poll cycles: every row and bar shows the latest state."""
    page.wait_for_timeout(3500)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smap-stt-shots-") as tmp:
        work = Path(tmp)
        files = clips(work)
        port = free_port()
        svc = Service(base_env(work / "data", API_PORT=port), work / "data", port)
        try:
            svc.start("serve")
            with svc.client() as client:
                first = upload(client, files["harbour-interview.wav"], word_timestamps="true")
                second = upload(client, files["weekly-standup.wav"], language="auto")
                for job_id in (first, second):
                    assert wait_final(client, job_id, timeout=300)["status"] == "COMPLETED"
                cancelled = upload(client, files["draft-notes.wav"], priority=3)
                long = upload(client, files["lecture-part-1.wav"], priority=8)
                upload(client, files["voicemail.wav"])
                client.post(f"/api/v1/tasks/{cancelled}/cancel")
                wait_running(client, long, above=20, timeout=300)

            with sync_playwright() as playwright:
                browser = launch(playwright)
                for scheme, suffix in (("light", ""), ("dark", "-dark")):
                    context = browser.new_context(viewport=VIEWPORT, color_scheme=scheme)
                    page = context.new_page()
                    page.goto(svc.url)
                    settle(page)
                    if scheme == "light":
                        shoot(page, OUT / "jobs.png")
                    page.goto(f"{svc.url}/#/jobs/{first}")
                    page.locator(".segment").nth(1).wait_for()
                    page.locator(".segment").nth(1).locator(".segment-text").click()
                    page.wait_for_timeout(1200)
                    page.evaluate("() => document.getElementById('player').pause()")
                    page.fill("#t-search", "")
                    page.locator("#t-search").blur()
                    page.mouse.move(4, VIEWPORT["height"] - 4)  # no hover on a segment
                    time.sleep(0.3)
                    shoot(page, OUT / f"transcript{suffix}.png")
                    context.close()
                browser.close()
        finally:
            svc.stop_all()


if __name__ == "__main__":
    main()
