"""Streaming multipart parsing: the file part goes straight to a spool file on disk in bounded
writes, and the size limit is enforced while the body arrives, never after."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from smap_stt import limits, metrics, service
from smap_stt.config import Settings
from smap_stt.errors import AudioError, InvalidRequest
from smap_stt.keys import Principal
from smap_stt.retention import process_dir
from smap_stt.service import Upload
from smap_stt.stt.audio import AudioInfo

if TYPE_CHECKING:
    from smap_stt.backends import Backends

__all__ = ["Upload", "clean_filename", "receive_upload", "unlink_spool"]

FLUSH_BYTES = 1024 * 1024
MIN_VIEW_BYTES = 16 * 1024  # smaller pieces of the file are copied, not kept as views
_IOV_MAX = 1024  # buffers one writev takes (Linux, macOS)
MAX_FIELD_BYTES = 4096
MAX_PART_HEADERS = 16
MAX_PARTS = 16  # the file and the small fields (language, model, priority, options)
FORM_OVERHEAD = 64 * 1024  # room for boundaries and the small text fields beside the file
MAX_BOUNDARY = 256  # python-multipart's limit; RFC 2046 allows 70


def clean_filename(raw: str) -> str:
    """Keep the name a client gave, minus any path and control characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:255].strip()
    return name if name not in ("", ".", "..") else "upload"


# dialects (issue 10): `encode=false` bodies are headerless 16 kHz mono s16le PCM.
PCM_RATE = 16000


def wav_header(data_bytes: int, *, rate: int = PCM_RATE) -> bytes:
    """A 44-byte RIFF/WAVE header for mono 16-bit PCM of `data_bytes` bytes."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        min(36 + data_bytes, 0xFFFFFFFF),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        rate,
        rate * 2,
        2,
        16,
        b"data",
        min(data_bytes, 0xFFFFFFFF),
    )


Check = Callable[[Path], AudioInfo | AudioError]
"""What `receive_upload` runs on the received file: `service.probe_upload`."""


def _patch_wav_sizes(path: Path, data_bytes: int) -> None:
    """Write the real sizes into the header that was streamed with placeholders."""
    with path.open("r+b") as spool:
        spool.write(wav_header(data_bytes))


class _FormCollector:
    def __init__(self, spool_path: Path, file_field: str = "file") -> None:
        self.spool_path = spool_path
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_size = 0
        # The file part as views of the received chunks (immutable bytes), not copied: they
        # go to disk in one write each once FLUSH_BYTES are pending (issue 14's profile:
        # copying them into one buffer was the parser's largest cost). Small pieces are
        # copied into a buffer instead, so a client sending a byte at a time cannot make a
        # view per byte.
        self.pending: list[bytearray | memoryview] = []
        self.pending_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self.saw_file = False
        self.parts = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_data(self._header_field, d[s:e]),
            "on_header_value": lambda d, s, e: self._header_data(self._header_value, d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:  # each part costs memory (its fields), so they are bounded
            raise InvalidRequest(
                f"the form has more than {MAX_PARTS} parts; send the file and "
                "the upload's fields (docs/API.md) only"
            )
        self._headers, self._name, self._is_file = {}, None, False
        self._value = bytearray()

    def _header_data(self, into: bytearray, data: bytes) -> None:
        # Bounded here too: older python-multipart releases keep no limit on part headers.
        into.extend(data)
        if len(into) > MAX_FIELD_BYTES:
            raise InvalidRequest("a part header of the form is too long", status_code=400)

    def _header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS:
            raise InvalidRequest("a part of the form has too many headers", status_code=400)
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field:
            if self.saw_file:
                raise InvalidRequest(
                    f"the form has more than one {self.file_field!r} field; send one file"
                )
            self.saw_file = True
            self._is_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            piece = memoryview(data)[start:end]
            if end - start >= MIN_VIEW_BYTES:
                self.pending.append(piece)
            elif self.pending and isinstance(self.pending[-1], bytearray):
                self.pending[-1] += piece
            else:
                self.pending.append(bytearray(piece))
            self.pending_bytes += end - start
            self.file_size += end - start
        else:
            self._value.extend(data[start:end])
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"form field {self._name!r} is too long", status_code=422)

    def take_pending(self) -> list[bytearray | memoryview]:
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        return pending

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            value = self._value.decode("utf-8", "replace").strip()
            if self._name in self.fields:  # repeated (`timestamp_granularities[]`): joined
                value = f"{self.fields[self._name]},{value}"
                if len(value) > MAX_FIELD_BYTES:
                    raise InvalidRequest(f"form field {self._name!r} is too long", 422)
            self.fields[self._name] = value


def _append(path: Path, pieces: list[bytearray | memoryview], digest: Any = None) -> None:
    """Append to the spool file (and feed the content hash), off the event loop."""
    if digest is not None:
        for piece in pieces:
            digest.update(piece)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:  # the spool directory is made on first use (or if removed)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        while pieces:  # one writev; a short write (disk full, signal) goes on where it ended
            written = os.writev(fd, pieces[:_IOV_MAX])
            while pieces and written >= len(pieces[0]):
                written -= len(pieces[0])
                pieces = pieces[1:]
            if written:
                pieces = [memoryview(pieces[0])[written:], *pieces[1:]]
    finally:
        os.close(fd)


async def receive_upload(
    request: Request,
    *,
    spool_dir: Path,
    max_bytes: int,
    idle_timeout: float = 60,
    file_field: str = "file",
    raw_pcm: bool = False,
    check: Check | None = None,
) -> Upload:
    """Parse a multipart upload into a spool file. Raises InvalidRequest (400/408/413/415/422);
    on any error nothing is left on disk. A client that stops sending for `idle_timeout`
    seconds is refused (408), so a stalled upload cannot hold a spool file forever.

    The file's sha256 is computed as its bytes go to disk (never by reading it again).
    `raw_pcm`: the file is headerless 16 kHz mono s16le PCM (whisper-asr-webservice's
    `encode=false`); a WAV header is written in front of it as it streams, so the spool file
    is an ordinary WAV for the probe and the worker.

    `check` (the probe, `service.probe_upload`) runs on the complete file in the same thread
    hop as its last write; its outcome is the Upload's `probed`, which `service.submit`
    reports after the form's own errors, as it always did (issue 14: a hop less per upload)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "send the audio as multipart/form-data (with its boundary) and the file in a field "
            f"named {file_field!r}",
            status_code=415,
        )
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidRequest(
            f"the multipart boundary is longer than {MAX_BOUNDARY} characters", status_code=400
        )
    limit_mb = max_bytes // (1024 * 1024)
    too_large = InvalidRequest(
        f"the file is larger than the limit of {limit_mb} MB (MAX_UPLOAD_SIZE_MB)", 413
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
        raise too_large

    spool = spool_dir / f"upload-{uuid.uuid4().hex}.part"
    collector = _FormCollector(spool, file_field)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    digest = hashlib.sha256()
    if raw_pcm:  # placeholder sizes, patched once the length is known
        collector.pending.append(bytearray(wav_header(0)))
    received = 0
    chunks = request.stream()
    loop = asyncio.get_running_loop()
    try:
        # One timeout for the whole body, pushed back as each chunk arrives and disarmed
        # while a flush runs, so only the client's silence expires it (a new asyncio.timeout
        # per chunk was ~5 % of the event loop's time on an upload, issue 14).
        idle = asyncio.timeout(None)
        try:
            async with idle:
                while True:
                    idle.reschedule(loop.time() + idle_timeout)
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    received += len(chunk)
                    if received > max_bytes + FORM_OVERHEAD:
                        raise too_large
                    parser.write(chunk)
                    if collector.file_size > max_bytes:
                        raise too_large
                    if collector.pending_bytes >= FLUSH_BYTES:
                        idle.reschedule(None)
                        await asyncio.to_thread(_append, spool, collector.take_pending(), digest)
        except TimeoutError:
            if not idle.expired():
                raise
            raise InvalidRequest(
                f"the upload sent nothing for {idle_timeout:g} s; send the body without pauses",
                status_code=408,
            ) from None
        parser.finalize()
        if parser.state != MultipartState.END:
            raise InvalidRequest(
                "malformed multipart body: it ends before its closing boundary", status_code=400
            )
        if not collector.saw_file:
            raise InvalidRequest(
                f"the form has no {file_field!r} field: send the audio as {file_field}=@..."
            )
        if collector.file_size <= 0:
            raise InvalidRequest("the uploaded file is empty", status_code=422)
        probed = await asyncio.to_thread(
            _finish,
            spool,
            collector.take_pending(),
            digest,
            wav_data_bytes=collector.file_size if raw_pcm else None,
            check=check,
        )
        return Upload(
            filename=clean_filename(collector.filename or ""),
            path=spool,
            size=collector.file_size,
            fields=collector.fields,
            sha256=digest.hexdigest(),
            probed=probed,
        )
    except FormParserError as exc:  # the body does not parse (also: too many part headers)
        await asyncio.to_thread(unlink_spool, spool)
        raise InvalidRequest(f"malformed multipart body: {exc}", status_code=400) from None
    except ClientDisconnect:
        await asyncio.to_thread(unlink_spool, spool)
        raise InvalidRequest("the client disconnected before the upload finished", 400) from None
    except BaseException:
        await asyncio.to_thread(unlink_spool, spool)
        raise


def _finish(
    path: Path,
    pieces: list[bytearray | memoryview],
    digest: Any,
    *,
    wav_data_bytes: int | None,
    check: Check | None,
) -> AudioInfo | AudioError | None:
    """Off the event loop, in one go: the spool file's last write, the real sizes in its WAV
    header (raw PCM), and `check` of the complete file."""
    _append(path, pieces, digest)
    if wav_data_bytes is not None:
        _patch_wav_sizes(path, wav_data_bytes)
    return None if check is None else check(path)


def unlink_spool(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.asynccontextmanager
async def intake(
    request: Request,
    settings: Settings,
    backends: Backends,
    principal: Principal,
    *,
    file_field: str = "file",
    raw_pcm: bool = False,
) -> AsyncIterator[Upload]:
    """Every upload route's way in, whatever its dialect (task API, OpenAI, /asr): the key's
    and the service's limits first, then the upload within this process's
    MAX_CONCURRENT_UPLOADS slots (503 beyond), UPLOAD_DEADLINE_SECONDS (408) and the idle
    timeout, into this process's own spool folder; a refusal is counted by its status. The
    spool file is removed when the block ends (the job's audio is stored by then)."""
    with metrics.count_refusals():
        await service.admit_upload(settings, backends, principal)
        slots: limits.UploadSlots = request.app.state.upload_slots
        async with slots.slot():
            try:
                async with asyncio.timeout(settings.upload_deadline_seconds):
                    upload = await receive_upload(
                        request,
                        spool_dir=process_dir(settings.temp_dir, "uploads"),
                        max_bytes=settings.max_upload_bytes,
                        idle_timeout=settings.upload_idle_timeout,
                        file_field=file_field,
                        raw_pcm=raw_pcm,
                        check=functools.partial(service.probe_upload, settings),
                    )
            except TimeoutError:  # receive_upload removed its spool file on the way out
                raise InvalidRequest(
                    f"the upload took longer than {settings.upload_deadline_seconds:g} s "
                    "(UPLOAD_DEADLINE_SECONDS); send it faster or in a smaller file",
                    status_code=408,
                ) from None
        try:
            yield upload
        finally:
            if not upload.stored:  # a thread hop per upload saved when it was (issue 14)
                await asyncio.to_thread(unlink_spool, upload.path)
