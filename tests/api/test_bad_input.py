"""Every kind of bad upload gets a precise 4xx, never a 500, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Clip, _delete_topology
from tests.procs import Service, base_env, free_port, wait_final
from tests.speech import cached_speech, paragraphs

LIMIT_MB = 2
IDLE_TIMEOUT = 3


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("bad-input")
    port = free_port()
    service = Service(
        base_env(
            data_dir, API_PORT=port, MAX_UPLOAD_SIZE_MB=LIMIT_MB, UPLOAD_IDLE_TIMEOUT=IDLE_TIMEOUT
        ),
        data_dir,
        port,
    )
    try:  # a serve that fails to come up is stopped too, not left running
        service.start("serve")
        yield service
    finally:
        service.stop_all()
        asyncio.run(
            _delete_topology(
                service.env["RABBITMQ_EXCHANGE_NAME"], service.env["RABBITMQ_QUEUE_NAME"]
            )
        )


@pytest.fixture
def client(svc: Service) -> Iterator[httpx.Client]:
    with svc.client() as client:
        yield client
        # Nothing a refused upload sent may stay behind: no spool file, no stored audio.
        leftovers = _spool_files(svc)
        assert leftovers == []
        jobs = client.get("/api/v1/tasks", params={"limit": 100}).json()["jobs"]
        stored = list((svc.data_dir / "blobs" / "uploads").glob("*"))
        assert len(stored) == len(jobs)


def _post(client: httpx.Client, name: str, data: bytes, **fields: str) -> httpx.Response:
    return client.post(
        "/api/v1/tasks/upload", files={"file": (name, data)}, data={"language": "en", **fields}
    )


def _assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]


def _wav_header_only() -> bytes:
    header = bytearray(b"RIFF" + (92).to_bytes(4, "little") + b"WAVEfmt ")
    header += (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    header += (16000).to_bytes(4, "little") + (32000).to_bytes(4, "little")
    header += (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    header += b"data" + (0).to_bytes(4, "little")
    return bytes(header.ljust(100, b"\0"))


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000a49444154789c6300010000050001"
)


@pytest.mark.parametrize(
    ("name", "data", "status", "word"),
    [
        ("empty.wav", b"", 422, "empty"),
        ("noise.mp3", os.urandom(50_000), 415, ""),
        ("notes.wav", b"these are my meeting notes, not audio\n" * 200, 415, ""),
        ("header.wav", _wav_header_only(), 422, ""),
        ("picture.png", PNG, 415, ""),
    ],
)
def test_undecodable_uploads_are_refused(
    client: httpx.Client, name: str, data: bytes, status: int, word: str
) -> None:
    _assert_error(_post(client, name, data), status, word)


def test_truncated_mp3_head_is_refused(client: httpx.Client) -> None:
    mp3 = cached_speech(paragraphs("english")[0], fmt="mp3").read_bytes()
    response = _post(client, "cut.mp3", mp3[:300])
    assert response.status_code in (415, 422), response.text


def test_oversized_upload_is_413(client: httpx.Client) -> None:
    big = b"\0" * ((LIMIT_MB + 1) * 1024 * 1024)
    _assert_error(_post(client, "big.wav", big), 413, "MAX_UPLOAD_SIZE_MB")


def test_oversized_chunked_upload_without_length_is_413(client: httpx.Client) -> None:
    boundary = "b0undary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.wav"\r\n\r\n'
        ).encode()
        for _ in range(LIMIT_MB + 2):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/api/v1/tasks/upload",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    _assert_error(response, 413)


def test_lying_content_length_is_refused_before_reading(svc: Service) -> None:
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/tasks/upload HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 99999999999\r\n\r\n"
        )
        reply = sock.recv(4096)
    assert b" 413 " in reply.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"language": "klingon"}, ["klingon", "en", "vi"]),
        ({"model": "huge-v9"}, ["huge-v9", "base"]),
        ({"priority": "11"}, ["priority"]),
        ({"priority": "high"}, ["priority"]),
    ],
)
def test_bad_options_are_422_and_say_what_is_valid(
    client: httpx.Client, fields: dict[str, str], words: list[str]
) -> None:
    wav = cached_speech(paragraphs("english")[0]).read_bytes()
    _assert_error(_post(client, "ok.wav", wav, **fields), 422, *words)


def test_not_multipart_is_415(client: httpx.Client) -> None:
    response = client.post("/api/v1/tasks/upload", json={"file": "x"})
    _assert_error(response, 415, "multipart")


def test_missing_file_field_is_422(client: httpx.Client) -> None:
    response = client.post("/api/v1/tasks/upload", files={"audio": ("a.wav", b"x")})
    _assert_error(response, 422, "file")


def test_malformed_multipart_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/tasks/upload",
        content=b"--x\r\ngarbage without end",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    _assert_error(response, 400, "malformed multipart")


def test_hostile_filename_is_kept_as_a_name_only(client: httpx.Client, svc: Service) -> None:
    wav = cached_speech(paragraphs("english")[0]).read_bytes()
    response = _post(client, "../../etc/passwd\x00.wav", wav)
    assert response.status_code == 201, response.text
    assert "/" not in response.json()["details"]["filename"]
    stored = [p.relative_to(svc.data_dir) for p in (svc.data_dir / "blobs").rglob("*")]
    assert all(".." not in str(p) for p in stored)
    client.post(f"/api/v1/tasks/{response.json()['job_id']}/cancel")


def test_unknown_job_is_404(client: httpx.Client) -> None:
    for path in ("status", "result"):
        _assert_error(client.get(f"/api/v1/tasks/nope/{path}"), 404, "nope")
    _assert_error(client.post("/api/v1/tasks/nope/cancel"), 404)
    _assert_error(client.delete("/api/v1/tasks/nope"), 404)


def test_bad_list_query_is_422(client: httpx.Client) -> None:
    _assert_error(client.get("/api/v1/tasks", params={"limit": 0}), 422, "limit")
    _assert_error(client.get("/api/v1/tasks", params={"status": "DONE"}), 422, "status")


def test_refused_uploads_create_no_jobs(client: httpx.Client, tiny_clip: Clip) -> None:
    def job_ids() -> set[str]:
        answer = client.get("/api/v1/tasks", params={"limit": 100})
        assert answer.status_code == 200, answer.text
        return {job["job_id"] for job in answer.json()["jobs"]}

    before = job_ids()
    refused = [
        _post(client, "noise.wav", os.urandom(4096)),
        _post(client, "empty.wav", b""),
        _post(client, "header.wav", _wav_header_only()),
        _post(client, "a.wav", b"RIFF", language="klingon"),
        _post(client, "a.wav", b"RIFF", priority="11"),
        client.post("/api/v1/tasks/upload", json={"file": "x"}),
    ]
    assert all(400 <= answer.status_code < 500 for answer in refused), [
        (answer.status_code, answer.text) for answer in refused
    ]
    # A control: an upload that is fine does show in the list, so an equal list means
    # something (a list that never changes would pass the first check on its own).
    accepted = _post(client, "fox.wav", tiny_clip.path.read_bytes())
    assert accepted.status_code == 201, accepted.text
    assert job_ids() == before | {accepted.json()["job_id"]}


# --- hand-made hostile multipart bodies ---------------------------------------------------------

FILE_PART = b'Content-Disposition: form-data; name="file"; filename="a.wav"'


def _multipart(parts: list[tuple[bytes, bytes]], boundary: str = "bnd") -> bytes:
    body = b"".join(
        f"--{boundary}\r\n".encode() + headers + b"\r\n\r\n" + data + b"\r\n"
        for headers, data in parts
    )
    return body + f"--{boundary}--\r\n".encode()


def _post_raw(
    client: httpx.Client, body: bytes, content_type: str = "multipart/form-data; boundary=bnd"
) -> httpx.Response:
    return client.post("/api/v1/tasks/upload", content=body, headers={"content-type": content_type})


def _field(name: str) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"'.encode()


def _spool_files(svc: Service) -> list[Path]:
    """Upload spool files of every process (each spools under TEMP_DIR/uploads-<pid>)."""
    return [p for p in (svc.data_dir / "tmp").glob("uploads*/**/*") if p.is_file()]


def _wait_spool_empty(svc: Service, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _spool_files(svc) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _spool_files(svc) == []


def test_thousands_of_form_parts_are_refused(client: httpx.Client) -> None:
    parts = [(_field(f"x{i}"), b"v") for i in range(20_000)]
    _assert_error(_post_raw(client, _multipart([*parts, (FILE_PART, b"abc")])), 422, "parts")


def test_giant_text_field_is_refused(client: httpx.Client) -> None:
    body = _multipart([(_field("language"), b"e" * 1_000_000), (FILE_PART, b"abc")])
    _assert_error(_post_raw(client, body), 422, "language", "too long")


def test_second_file_field_is_refused(client: httpx.Client) -> None:
    body = _multipart([(FILE_PART, b"abc"), (FILE_PART, b"def")])
    _assert_error(_post_raw(client, body), 422, "more than one")


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; charset=utf-8",
    ],
)
def test_multipart_without_boundary_is_415(client: httpx.Client, content_type: str) -> None:
    _assert_error(
        _post_raw(client, _multipart([(FILE_PART, b"abc")]), content_type), 415, "boundary"
    )


def test_overlong_boundary_is_400(client: httpx.Client) -> None:
    boundary = "b" * 10_000  # was a 500: python-multipart refuses more than 256 in its constructor
    body = _multipart([(FILE_PART, b"abc")], boundary)
    _assert_error(
        _post_raw(client, body, f"multipart/form-data; boundary={boundary}"), 400, "boundary"
    )


def test_body_without_closing_boundary_is_400(client: httpx.Client) -> None:
    for body in (
        b"",
        b"--bnd\r\n" + FILE_PART + b"\r\n\r\n",
        b"--bnd\r\n" + FILE_PART + b"\r\n\r\nRIFF....WAVE",
    ):
        _assert_error(_post_raw(client, body), 400, "closing boundary")


def test_header_only_part_is_an_empty_file(client: httpx.Client) -> None:
    _assert_error(_post_raw(client, _multipart([(FILE_PART, b"")])), 422, "empty")


def test_priority_must_be_ascii_digits(client: httpx.Client) -> None:
    wav = cached_speech(paragraphs("english")[0]).read_bytes()
    for priority in ("\u0663", "1_0", "+5", " "):  # int() takes the first three
        response = _post(client, "ok.wav", wav, priority=priority)
        if priority.strip():
            _assert_error(response, 422, "priority")
        else:  # blank means the default
            assert response.status_code == 201, response.text
            client.post(f"/api/v1/tasks/{response.json()['job_id']}/cancel")


def test_long_boundary_and_unusual_filenames_are_accepted(client: httpx.Client) -> None:
    wav = cached_speech(paragraphs("english")[0]).read_bytes()
    boundary = "b" * 200  # over RFC 2046's 70, within what the parser handles
    for filename, expected in [
        ("Bản ghi âm 会议 🎙.wav", "Bản ghi âm 会议 🎙.wav"),
        ("x" * 1000 + ".wav", "x" * 255),
        ("...", "..."),
        ("", "upload"),
    ]:
        disposition = f'Content-Disposition: form-data; name="file"; filename="{filename}"'
        body = _multipart([(disposition.encode(), wav), (_field("language"), b"en")], boundary)
        response = _post_raw(client, body, f"multipart/form-data; boundary={boundary}")
        assert response.status_code == 201, response.text
        assert response.json()["details"]["filename"] == expected
        client.post(f"/api/v1/tasks/{response.json()['job_id']}/cancel")


def _open_upload(svc: Service, sent: int) -> socket.socket:
    """Start an upload that declares more than it sends, having sent `sent` bytes of file."""
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=30)
    head = b"--bnd\r\n" + FILE_PART + b"\r\n\r\n"
    sock.sendall(
        b"POST /api/v1/tasks/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=bnd\r\n"
        b"Content-Length: %d\r\n\r\n" % (LIMIT_MB * 1024 * 1024) + head
    )
    for _ in range(sent // 100_000):
        sock.sendall(b"\0" * 100_000)
    return sock


def test_client_that_disconnects_mid_upload_leaves_no_spool_file(
    client: httpx.Client, svc: Service
) -> None:
    sock = _open_upload(svc, 1_200_000)  # past the first flush to disk
    deadline = time.monotonic() + 10
    while not _spool_files(svc) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _spool_files(svc), "the upload never reached the spool"
    sock.close()
    _wait_spool_empty(svc)


def test_stalled_upload_is_408_and_leaves_no_spool_file(client: httpx.Client, svc: Service) -> None:
    with _open_upload(svc, 1_200_000) as sock:
        started = time.monotonic()
        reply = sock.recv(4096)  # the server answers on its own, without the rest of the body
        waited = time.monotonic() - started
        while b"sent nothing" not in reply and time.monotonic() - started < IDLE_TIMEOUT + 15:
            more = sock.recv(4096)  # headers and body may arrive in separate packets
            if not more:
                break
            reply += more
    assert b" 408 " in reply.split(b"\r\n", 1)[0], reply
    assert b"sent nothing" in reply
    assert IDLE_TIMEOUT - 1 <= waited < IDLE_TIMEOUT + 15
    _wait_spool_empty(svc)


# --- paths, queries and methods ---------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["a%2Fb", "..%2F..%2Fetc", "%00", "%ff", "x" * 100])
def test_odd_job_ids_are_404(client: httpx.Client, job_id: str) -> None:
    for method, path in [
        ("GET", f"{job_id}/status"),
        ("GET", f"{job_id}/result"),
        ("GET", f"{job_id}/download"),
        ("POST", f"{job_id}/cancel"),
        ("DELETE", job_id),
    ]:
        response = client.request(method, f"/api/v1/tasks/{path}")
        _assert_error(response, 404)


@pytest.mark.parametrize("length", [101, 10_000])
def test_overlong_job_ids_are_422(client: httpx.Client, length: int) -> None:
    _assert_error(client.get(f"/api/v1/tasks/{'x' * length}/status"), 422, "job_id")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": ""},
        {"limit": "1e2"},
        {"status": ""},
        {"status": "pending"},
    ],
)
def test_odd_list_queries_are_422(client: httpx.Client, params: dict[str, str]) -> None:
    _assert_error(client.get("/api/v1/tasks", params=params), 422, next(iter(params)))


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/tasks", "GET"),
        ("/api/v1/tasks/upload", "POST"),
        ("/api/v1/tasks/health", "GET"),
        ("/api/v1/tasks/x/status", "GET"),
        ("/api/v1/tasks/x/cancel", "POST"),
        ("/api/v1/tasks/x", "DELETE"),
    ],
)
def test_unsupported_methods_are_405_with_allow(
    client: httpx.Client, path: str, allowed: str
) -> None:
    for method in ("HEAD", "PUT", "PATCH", "OPTIONS", "TRACE"):
        response = client.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allowed  # was dropped by the error handler
        if method != "HEAD":
            _assert_error(response, 405, "method not allowed")


# --- issue 15: what "no sound" means, exactly as the README says it.
def _silent_wav(seconds: float) -> bytes:
    """`seconds` of digital silence, 16 kHz mono 16-bit, made with the stdlib alone."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * round(seconds * 16000))
    return buffer.getvalue()


def test_audio_shorter_than_min_audio_seconds_is_refused(client: httpx.Client) -> None:
    _assert_error(_post(client, "blip.wav", _silent_wav(0.05)), 422, "at least 0.1 s")


def test_silence_completes_with_an_empty_transcript_and_says_so(client: httpx.Client) -> None:
    response = _post(client, "silence.wav", _silent_wav(2.0))
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    final = wait_final(client, job_id, timeout=120)
    assert final["status"] == "COMPLETED", final
    result = client.get(f"/api/v1/tasks/{job_id}/result").json()
    assert result["transcription"] == ""
    assert result["segments"] == []
    assert result["message"] == "Transcription completed: no speech was found in the audio"
