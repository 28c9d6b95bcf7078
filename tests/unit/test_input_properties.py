"""Property-based tests (Hypothesis) of what a client controls before a job exists: the file
name, the multipart form and its limits, the language, model and priority fields (issue 12).
Each property holds for any input Hypothesis can make; none may raise anything but
InvalidRequest."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from smap_stt import service
from smap_stt.api.upload import MAX_FIELD_BYTES, MAX_PARTS, clean_filename, receive_upload
from smap_stt.backends import Backends
from smap_stt.blobs.local import LocalBlobStore
from smap_stt.config import Settings
from smap_stt.errors import InvalidRequest
from smap_stt.keys import OPEN, Principal
from smap_stt.queue.base import JobQueue
from smap_stt.store.base import JobStore
from smap_stt.stt.languages import LANGUAGES, normalize_language

BOUNDARY = "hypothesis-boundary-7MA4YWxkTrZu0gW"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- file names ---------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=600))
def test_a_cleaned_filename_is_safe_to_show_and_store(raw: str) -> None:
    name = clean_filename(raw)
    assert 1 <= len(name) <= 255
    assert "/" not in name and "\\" not in name
    assert all(ch.isprintable() for ch in name)
    assert name == name.strip()
    assert name not in (".", "..")
    assert clean_filename(name) == name  # cleaning twice changes nothing


@FAST
@given(st.text(max_size=100), st.text(max_size=100))
def test_a_path_never_survives_in_the_name(directory: str, base: str) -> None:
    assert clean_filename(f"{directory}/{base}") == clean_filename(base)
    assert clean_filename(f"{directory}\\{base}") == clean_filename(base)


# --- the multipart form ------------------------------------------------------------------------


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def _body(parts: list[bytes]) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _request(body: bytes, cuts: list[int]) -> Request:
    """A request whose body arrives in the pieces `cuts` makes, as a socket would deliver it."""
    edges = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
    pieces = [body[a:b] for a, b in itertools.pairwise(edges)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/tasks/upload",
        "headers": [
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return Request(scope, receive)


def _receive(body: bytes, cuts: list[int], spool: Path) -> Any:
    async def run() -> Any:
        return await receive_upload(
            _request(body, cuts), spool_dir=spool, max_bytes=64 * 1024, idle_timeout=5
        )

    return asyncio.run(run())


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@FAST
@given(
    audio=st.binary(min_size=1, max_size=3000),
    fields=st.dictionaries(
        st.sampled_from(["language", "model", "priority", "extra"]),
        st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=50),
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
)
def test_any_well_formed_form_arrives_whole_however_it_is_cut(
    spool: Path, audio: bytes, fields: dict[str, str], cuts: list[int]
) -> None:
    parts = [_part(name, value.encode()) for name, value in fields.items()]
    body = _body([*parts, _part("file", audio, filename="talk.wav")])
    received = _receive(body, cuts, spool)
    try:
        assert received.path.read_bytes() == audio
        assert received.size == len(audio)
        assert received.fields == {name: value.strip() for name, value in fields.items()}
        assert received.filename == "talk.wav"
    finally:
        received.path.unlink()


@FAST
@given(
    extra=st.integers(min_value=MAX_PARTS, max_value=MAX_PARTS + 20),
    cuts=st.lists(st.integers(min_value=0), max_size=4),
)
def test_too_many_parts_are_refused(spool: Path, extra: int, cuts: list[int]) -> None:
    parts = [_part(f"f{i}", b"x") for i in range(extra)]
    body = _body([*parts, _part("file", b"RIFF", filename="a.wav")])
    with pytest.raises(InvalidRequest, match="more than"):
        _receive(body, cuts, spool)
    assert not any(spool.iterdir())  # nothing left on disk


@FAST
@given(size=st.integers(min_value=MAX_FIELD_BYTES + 1, max_value=3 * MAX_FIELD_BYTES))
def test_a_field_over_the_limit_is_refused(spool: Path, size: int) -> None:
    body = _body([_part("language", b"a" * size), _part("file", b"RIFF", filename="a.wav")])
    with pytest.raises(InvalidRequest, match="too long") as raised:
        _receive(body, [], spool)
    assert raised.value.status_code == 422
    assert not any(spool.iterdir())


@FAST
@given(body=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0), max_size=4))
def test_arbitrary_bytes_are_a_clear_refusal(spool: Path, body: bytes, cuts: list[int]) -> None:
    try:
        received = _receive(body, cuts, spool)
    except InvalidRequest as exc:
        assert 400 <= exc.status_code < 500
    else:  # bytes that happen to form a valid form: fine, it is a real upload
        received.path.unlink()
    assert not any(spool.iterdir())


# --- language, model, priority -----------------------------------------------------------------


@FAST
@given(st.text(max_size=40))
def test_a_language_is_a_known_code_auto_or_a_clear_refusal(value: str) -> None:
    try:
        code = normalize_language(value)
    except InvalidRequest as exc:
        assert exc.status_code == 422 and "auto" in str(exc)
        return
    assert code is None or code in LANGUAGES


@FAST
@given(st.sampled_from(sorted(LANGUAGES)), st.sampled_from(["", "-US", "_vn", "-Latn"]))
def test_every_code_is_understood_in_any_case_with_a_region(code: str, region: str) -> None:
    assert normalize_language(code.upper() + region) == code
    assert normalize_language(f"  {code}{region} ") == code


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> LocalBlobStore:
    """An empty local blob store: no models pushed to it."""
    store = LocalBlobStore(tmp_path_factory.mktemp("blobs"))
    asyncio.run(store.open())
    return store


def _parse(
    blobs: LocalBlobStore, fields: dict[str, str], principal: Principal = OPEN
) -> service.JobRequest:
    config = Settings(whisper_models_dir=blobs.root / "no-models")
    backends = Backends(cast(JobStore, None), blobs, cast(JobQueue, None))
    return asyncio.run(service.parse_request(config, backends, fields, principal=principal))


def _valid_priority(raw: str) -> bool:
    return raw == "" or (re.fullmatch(r"[0-9]{1,2}", raw) is not None and int(raw) <= 10)


@FAST
@given(st.text(max_size=6))
def test_priority_is_a_plain_number_from_0_to_10_or_a_refusal(
    blobs: LocalBlobStore, raw: str
) -> None:
    try:
        request = _parse(blobs, {"priority": raw, "language": "en"})
    except InvalidRequest as exc:
        assert exc.status_code == 422 and "priority" in str(exc)
        assert not _valid_priority(raw)
        return
    assert _valid_priority(raw)
    assert request.priority == (int(raw) if raw else 5)


@FAST
@given(st.integers(min_value=0, max_value=10), st.integers(min_value=0, max_value=10))
def test_a_key_cannot_ask_above_its_maximum(
    blobs: LocalBlobStore, priority: int, maximum: int
) -> None:
    key = Principal(key_id="k", name="k", admin=False, max_priority=maximum)
    if priority <= maximum:
        assert _parse(blobs, {"priority": str(priority)}, key).priority == priority
    else:
        with pytest.raises(InvalidRequest, match=f"maximum of {maximum}"):
            _parse(blobs, {"priority": str(priority)}, key)


@FAST
@given(st.text(min_size=1, max_size=30))
def test_a_model_is_an_available_one_or_a_refusal_naming_them(
    blobs: LocalBlobStore, name: str
) -> None:
    try:
        request = _parse(blobs, {"model": name})
    except InvalidRequest as exc:
        assert exc.status_code == 422
        assert str(exc).endswith("available: base"), str(exc)
        return
    assert request.model == name == "base"
