"""`smap-stt submit | wait | result` against a real `serve`: exit codes, files written, a
refused file named, a server that is down in one line."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from tests.conftest import Clip, _delete_topology
from tests.procs import ROOT, SMAP_STT, Service, base_env, free_port


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("cli")
    port = free_port()
    service = Service(base_env(data_dir, API_PORT=port), data_dir, port)
    try:
        service.start("serve")
        yield service
    finally:
        service.stop_all()
        asyncio.run(
            _delete_topology(
                service.env["RABBITMQ_EXCHANGE_NAME"], service.env["RABBITMQ_QUEUE_NAME"]
            )
        )


def smap(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}  # no SMAP_STT_* from the caller
    return subprocess.run(
        [*SMAP_STT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_submit_waits_and_writes_the_subtitles(
    svc: Service, tiny_clip: Clip, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio at all, just text " * 40)
    out = tmp_path / "out"
    done = smap(
        "submit", tiny_clip.path, bad, "--server", svc.url, "--language", "en",
        "--format", "srt", "--out", out, "--wait",
    )  # fmt: skip
    # The refused file is named and makes the exit status non-zero; the good one is written.
    assert done.returncode == 1, done.stderr
    assert f"{bad} refused:" in done.stderr
    assert "Traceback" not in done.stderr
    written = out / f"{tiny_clip.path.stem}.srt"
    assert str(written) in done.stdout.splitlines()
    cues = list(srt.parse(written.read_text()))
    assert cues and "fox" in " ".join(c.content for c in cues).lower()
    job_id = done.stdout.splitlines()[0].split("\t")[0]

    # Later: `wait` for the same job (already final) and `result` in another format.
    waited = smap("wait", job_id, "--server", svc.url, "--format", "vtt", "--out", out)
    assert waited.returncode == 0, waited.stderr
    captions = webvtt.read(str(out / f"{tiny_clip.path.stem}.vtt")).captions
    assert [c.text for c in captions] == [c.content for c in cues]
    printed = smap("result", job_id, "--server", svc.url, "--format", "txt")
    assert printed.returncode == 0 and "fox" in printed.stdout.lower()


def test_submit_without_wait_prints_job_ids(svc: Service, tiny_clip: Clip) -> None:
    done = smap("submit", tiny_clip.path, "--server", svc.url, "--priority", "7")
    assert done.returncode == 0, done.stderr
    job_id, name = done.stdout.strip().split("\t")
    assert name == str(tiny_clip.path) and len(job_id) == 36
    waited = smap("wait", job_id, "--server", svc.url)
    assert waited.returncode == 0, waited.stderr


def test_wait_exits_non_zero_naming_a_job_that_did_not_complete(
    svc: Service, tiny_clip: Clip
) -> None:
    with httpx.Client(base_url=svc.url, timeout=60) as client:
        ok = client.post("/api/v1/tasks/upload", files={"file": tiny_clip.path.read_bytes()})
        stopped = client.post(
            "/api/v1/tasks/upload",
            files={"file": tiny_clip.path.read_bytes()},
            data={"priority": "0"},  # behind the other one: still waiting when cancelled
        )
        stopped_id = stopped.json()["job_id"]
        assert client.post(f"/api/v1/tasks/{stopped_id}/cancel").status_code == 200
    waited = smap("wait", ok.json()["job_id"], stopped_id, "--server", svc.url)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert f"job {stopped_id}" in waited.stderr and "CANCELLED" in waited.stderr
    assert ok.json()["job_id"] not in waited.stderr and "Traceback" not in waited.stderr


def test_unknown_jobs_and_bad_options_fail_with_a_line(svc: Service, tiny_clip: Clip) -> None:
    missing = smap("result", "no-such-job", "--server", svc.url)
    assert missing.returncode == 1 and "no-such-job" in missing.stderr
    refused = smap(
        "submit", tiny_clip.path, "--server", svc.url, "--option", "beam_size=99"
    )  # fmt: skip
    assert refused.returncode == 1 and "beam_size" in refused.stderr
    assert "Traceback" not in missing.stderr + refused.stderr


def test_a_server_that_is_down_is_one_clear_line(tiny_clip: Clip) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("submit", tiny_clip.path), ("wait", "abc"), ("result", "abc")):
        done = smap(*args, "--server", url)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1] == (
            f"smap-stt: cannot reach the server at {url} (is it running?)"
        )
        assert "Traceback" not in done.stderr
