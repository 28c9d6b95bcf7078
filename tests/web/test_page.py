"""The web page at `/` in a real browser against a real `serve` (the real model), following
one user: upload, watch the job to COMPLETED without a reload, read and play the transcript,
download subtitles, cancel a long job, see why a file was refused. Also the audio route's HTTP
Range support, byte for byte. The tests run in order and share the page and the service."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import srt
from playwright.sync_api import Browser, Page, expect

from tests.conftest import Clip
from tests.procs import Service, wait_running
from tests.web.browser import wait_until

pytestmark = pytest.mark.timeout(300)

# Kept by the page itself from the moment it is installed: every status a job's row showed and
# every value its progress bar took, and the upload bars' values. A reload would lose them.
RECORDER = """() => {
  window.__seen = {statuses: {}, progress: {}, uploads: []};
  const note = (map, id, value) => {
    const list = map[id] || (map[id] = []);
    if (list[list.length - 1] !== value) list.push(value);
  };
  const look = () => {
    for (const row of document.querySelectorAll(".job")) {
      note(window.__seen.statuses, row.dataset.id, row.dataset.status);
      const now = row.querySelector(".bar")?.getAttribute("aria-valuenow");
      if (now != null) note(window.__seen.progress, row.dataset.id, Number(now));
    }
    for (const bar of document.querySelectorAll(".upload .bar")) {
      window.__seen.uploads.push(Number(bar.getAttribute("aria-valuenow")));
    }
  };
  const all = {subtree: true, childList: true, attributes: true};
  new MutationObserver(look).observe(document.body, all);
  look();
}"""


def job_row(page: Page, filename: str) -> Any:
    return page.locator(".job", has=page.locator(".job-name", has_text=filename))


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What one test leaves for the next (the job the user uploaded)."""
    return {}


def test_upload_by_the_file_input_and_watch_it_complete_without_a_reload(
    page: Page, web: Service, short_clip: Clip, state: dict[str, Any]
) -> None:
    page.goto(web.url)
    expect(page.locator("#jobs-empty")).to_be_visible()
    page.evaluate(RECORDER)

    page.set_input_files("#file-input", str(short_clip.path))

    row = job_row(page, short_clip.path.name)
    expect(row).to_have_count(1, timeout=30_000)
    job_id = row.get_attribute("data-id")
    assert job_id
    expect(row.locator(".badge")).to_have_text("Completed", timeout=150_000)

    seen = page.evaluate("window.__seen")  # still there: the page was never reloaded
    assert max(seen["uploads"]) == 100, seen["uploads"]
    statuses = seen["statuses"][job_id]
    assert statuses[-1] == "COMPLETED"
    assert set(statuses[:-1]) & {"PENDING", "PROCESSING"}, statuses  # it moved, live
    with web.client() as client:
        status = client.get(f"/api/v1/tasks/{job_id}/status").json()
    assert status["status"] == "COMPLETED"
    expect(row.locator(".job-meta")).to_contain_text("English")
    state["job_id"] = job_id


def test_clicking_the_third_segment_plays_from_its_start(
    page: Page, web: Service, state: dict[str, Any]
) -> None:
    with web.client() as client:
        segments = client.get(f"/api/v1/tasks/{state['job_id']}/result").json()["segments"]
    assert len(segments) >= 3, segments

    page.locator(f'.job[data-id="{state["job_id"]}"] a.job-name').click()
    expect(page.locator("#view-transcript")).to_be_visible()
    expect(page.locator(".segment")).to_have_count(len(segments))
    expect(page.locator(".segment").nth(2)).to_contain_text(segments[2]["text"].strip())
    wait_until(page, "() => document.getElementById('player').readyState >= 1")  # metadata
    assert page.evaluate("document.getElementById('player').currentTime") == 0

    page.locator(".segment").nth(2).locator(".segment-text").click()

    current = page.evaluate("document.getElementById('player').currentTime")
    assert abs(current - segments[2]["start"]) < 0.5, (current, segments[2])
    expect(page.locator(".segment").nth(2)).to_have_class(re.compile(r"\bcurrent\b"))
    expect(page.locator(".segment.current")).to_have_count(1)


def test_a_segment_plays_from_the_keyboard(page: Page, web: Service, state: dict[str, Any]) -> None:
    with web.client() as client:
        segments = client.get(f"/api/v1/tasks/{state['job_id']}/result").json()["segments"]
    page.evaluate("() => { const a = document.getElementById('player'); a.pause(); }")
    page.evaluate("() => { document.getElementById('player').currentTime = 0; }")

    page.locator(".segment").nth(1).locator(".segment-time").focus()
    page.keyboard.press("Enter")

    current = page.evaluate("document.getElementById('player').currentTime")
    assert abs(current - segments[1]["start"]) < 0.5, (current, segments[1])
    expect(page.locator(".segment").nth(1)).to_have_attribute("aria-current", "true")


def test_search_marks_matches_in_the_transcript(page: Page) -> None:
    third = page.locator(".segment").nth(2).locator(".segment-text").inner_text()
    word = max(re.findall(r"[A-Za-z]{4,}", third), key=len)

    page.fill("#t-search", word.upper())

    expect(page.locator(".segment").nth(2).locator("mark").first).to_have_text(
        re.compile(word, re.IGNORECASE)
    )
    expect(page.locator("#t-search-count")).to_contain_text("found")
    page.fill("#t-search", "")
    expect(page.locator("mark")).to_have_count(0)


def test_the_srt_download_parses(page: Page, state: dict[str, Any], web: Service) -> None:
    with page.expect_download() as info:
        page.locator('#t-downloads a[data-format="srt"]').click()
    text = Path(info.value.path()).read_text(encoding="utf-8")

    subtitles = list(srt.parse(text))

    with web.client() as client:
        segments = client.get(f"/api/v1/tasks/{state['job_id']}/result").json()["segments"]
    assert subtitles, text
    assert (
        " ".join(s.content for s in subtitles).split()
        == " ".join(segment["text"] for segment in segments).split()
    )
    assert subtitles[0].start.total_seconds() == pytest.approx(segments[0]["start"], abs=0.01)


def test_with_word_timestamps_the_current_word_is_marked(
    page: Page, web: Service, tiny_clip: Clip
) -> None:
    page.goto(f"{web.url}/#/")
    page.check("#opt-words")
    page.set_input_files("#file-input", str(tiny_clip.path))
    row = job_row(page, tiny_clip.path.name)
    expect(row.locator(".badge")).to_have_text("Completed", timeout=150_000)
    job_id = row.get_attribute("data-id")
    page.uncheck("#opt-words")  # remembered by the page: back to the default for what follows
    with web.client() as client:
        document = client.get(f"/api/v1/tasks/{job_id}/download?format=json").json()
    words = [word for segment in document["segments"] for word in segment["words"]]
    assert len(words) >= 5, document

    row.locator("a.job-name").click()
    expect(page.locator(".segment .word")).to_have_count(len(words))
    wait_until(page, "() => document.getElementById('player').readyState >= 1")
    target = words[3]
    page.evaluate(
        "(t) => { document.getElementById('player').currentTime = t; }",
        (target["start"] + target["end"]) / 2,
    )

    expect(page.locator(".word.now")).to_have_count(1)
    expect(page.locator(".word.now")).to_have_text(target["word"])
    page.locator(".segment .word").nth(1).click()  # a word plays from that word
    current = page.evaluate("document.getElementById('player').currentTime")
    assert abs(current - words[1]["start"]) < 0.5, (current, words[1])


def test_cancel_a_long_job_from_the_list(page: Page, web: Service, long_clip: Clip) -> None:
    page.goto(f"{web.url}/#/")
    page.evaluate(RECORDER)
    page.set_input_files("#file-input", str(long_clip.path))
    row = job_row(page, long_clip.path.name)
    expect(row).to_have_count(1, timeout=30_000)
    job_id = row.get_attribute("data-id")
    with web.client() as client:
        wait_running(client, job_id, above=0)
    # The row's bar moved off zero, live, before we cancel.
    wait_until(
        page, "(id) => (window.__seen.progress[id] || []).some(v => v > 0 && v < 100)", job_id
    )

    row.get_by_role("button", name=f"Cancel {long_clip.path.name}").click()

    expect(row.locator(".badge")).to_have_text("Cancelled", timeout=30_000)
    with web.client() as client:
        assert client.get(f"/api/v1/tasks/{job_id}/status").json()["status"] == "CANCELLED"
    expect(row.get_by_role("button", name=f"Cancel {long_clip.path.name}")).to_be_hidden()


def test_filter_by_status_then_delete_in_two_steps(
    page: Page, web: Service, long_clip: Clip, short_clip: Clip
) -> None:
    """After the cancel above: the Cancelled filter shows that job only; Delete asks once
    more ("Delete?") before the job and its files are gone."""
    page.goto(f"{web.url}/#/")
    page.locator("#status-filter button", has_text="Cancelled").click()
    row = job_row(page, long_clip.path.name)
    expect(row).to_have_count(1)
    expect(job_row(page, short_clip.path.name)).to_have_count(0)
    job_id = row.get_attribute("data-id")
    row.get_by_role("button", name=f"Delete {long_clip.path.name}").click()
    confirm = row.get_by_role("button", name=f"Really delete {long_clip.path.name}")
    expect(confirm).to_have_text("Delete?")
    with web.client() as client:  # one click deletes nothing
        assert client.get(f"/api/v1/tasks/{job_id}/status").status_code == 200
    confirm.click()
    expect(row).to_have_count(0)
    with web.client() as client:
        assert client.get(f"/api/v1/tasks/{job_id}/status").status_code == 404
    page.locator("#status-filter button", has_text="All").click()
    expect(job_row(page, short_clip.path.name).first).to_be_visible()


def test_a_refused_file_shows_the_servers_reason(page: Page, web: Service, tmp_path: Path) -> None:
    bad = tmp_path / "minutes.wav"
    bad.write_bytes(b"These are meeting minutes, typed, not recorded.\n" * 50)
    with web.client() as client, bad.open("rb") as file:
        refused = client.post("/api/v1/tasks/upload", files={"file": (bad.name, file)})
    assert refused.status_code in (415, 422), refused.text
    reason = refused.json()["detail"]

    page.set_input_files("#file-input", str(bad))

    item = page.locator(".upload", has_text="minutes.wav")
    expect(item.locator(".upload-error")).to_have_text(reason)
    expect(item).to_have_attribute("data-state", "refused")

    # The same through the drop zone: a file dropped on it is uploaded like a picked one.
    page.evaluate(
        """(text) => {
          const files = new DataTransfer();
          files.items.add(new File([text], "dropped.wav", {type: "audio/wav"}));
          const zone = document.getElementById("dropzone");
          zone.dispatchEvent(new DragEvent("dragenter", {dataTransfer: files, bubbles: true}));
          zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
        }""",
        bad.read_text(),
    )
    dropped = page.locator(".upload", has_text="dropped.wav")
    expect(dropped.locator(".upload-error")).to_have_text(reason)
    expect(page.locator("#dropzone")).not_to_have_class(re.compile("dragging"))


def test_the_page_fetched_nothing_from_elsewhere(page: Page, web: Service) -> None:
    outside = [url for url in page.requested if not url.startswith((web.url, "data:", "blob:"))]  # type: ignore[attr-defined]
    assert page.requested  # type: ignore[attr-defined]
    assert outside == []


def test_both_views_fit_a_phone_screen(
    browser: Browser, web: Service, state: dict[str, Any]
) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, color_scheme="dark")
    try:
        phone = context.new_page()
        views = {f"{web.url}/": ".job", f"{web.url}/#/jobs/{state['job_id']}": ".segment"}
        for url, content in views.items():
            phone.goto(url)
            expect(phone.locator(content).first).to_be_visible()
            width = phone.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 360, f"{url}: the page is {width} px wide on a 360 px screen"
    finally:
        context.close()


# --- the audio route at the HTTP level -------------------------------------------------------


def test_audio_is_served_with_range_support(
    web: Service, short_clip: Clip, state: dict[str, Any]
) -> None:
    original = short_clip.path.read_bytes()
    size = len(original)
    url = f"/api/v1/tasks/{state['job_id']}/audio"
    with web.client() as client:
        whole = client.get(url)
        part = client.get(url, headers={"Range": "bytes=1000-4999"})
        tail = client.get(url, headers={"Range": "bytes=-300"})
        open_ended = client.get(url, headers={"Range": f"bytes={size - 10}-"})
        beyond = client.get(url, headers={"Range": f"bytes={size}-"})
        head = client.head(url, headers={"Range": "bytes=0-9"})
        links = client.get(f"/api/v1/tasks/{state['job_id']}/links").json()
        missing = client.get("/api/v1/tasks/no-such-job/audio")

    assert whole.status_code == 200
    assert whole.content == original
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "audio/wav"

    assert part.status_code == 206
    assert part.content == original[1000:5000]
    assert part.headers["content-range"] == f"bytes 1000-4999/{size}"
    assert part.headers["content-length"] == "4000"

    assert tail.status_code == 206 and tail.content == original[-300:]
    assert open_ended.status_code == 206 and open_ended.content == original[-10:]

    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-length"] == "10"
    assert head.headers["content-range"] == f"bytes 0-9/{size}"

    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert "starts at byte" in beyond.json()["detail"]

    job = state["job_id"]
    signed = r"expires=[0-9]+&signature=[0-9a-f]{64}"  # issue 12: signed, short-lived
    assert links["expires_at"] is not None
    assert re.fullmatch(rf"/api/v1/tasks/{job}/audio\?{signed}", links["audio"])
    assert sorted(links["downloads"]) == sorted(("txt", "srt", "vtt", "tsv", "json"))
    for fmt, link in links["downloads"].items():
        assert re.fullmatch(rf"/api/v1/tasks/{job}/download\?format={fmt}&{signed}", link)
    assert missing.status_code == 404


def test_the_page_and_its_files_are_served_by_the_api(web: Service) -> None:
    with httpx.Client(base_url=web.url) as client:
        index = client.get("/")
        script = client.get("/web/app.js")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in index.headers["content-security-policy"]
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
