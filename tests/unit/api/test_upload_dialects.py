"""The upload parser's part of issue 10, in process: the sha256 is computed as the file streams
(whatever the chunking), repeated fields are kept, another file field name, and raw PCM
becomes a WAV with the right sizes."""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path

import pytest

from smap_stt.api.upload import FLUSH_BYTES, receive_upload
from smap_stt.errors import InvalidRequest

from .multipart import multipart_body as _body
from .multipart import streamed_request as _request


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _listing(path: Path) -> list[Path]:
    return list(path.iterdir())


def _wav(path: Path) -> tuple[int, int, int, int, bytes]:
    with wave.open(str(path)) as clip:
        frames = clip.getnframes()
        return (
            clip.getframerate(),
            clip.getnchannels(),
            clip.getsampwidth(),
            frames,
            clip.readframes(frames),
        )


@pytest.mark.parametrize("chunk", [997, 65536, 3 * FLUSH_BYTES])
async def test_sha256_while_streaming_and_repeated_fields(tmp_path: Path, chunk: int) -> None:
    data = bytes(range(256)) * (FLUSH_BYTES // 100)  # spans several flushes
    fields = [("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment")]
    upload = await receive_upload(
        _request(_body("file", data, fields), chunk), spool_dir=tmp_path, max_bytes=10 * 2**20
    )
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert _read(upload.path) == data and upload.size == len(data)
    assert upload.fields == {"timestamp_granularities[]": "word,segment"}


async def test_raw_pcm_becomes_a_wav(tmp_path: Path) -> None:
    pcm = b"\x10\x00\xf0\xff" * 12_000  # 24000 frames: 1.5 s at 16 kHz
    upload = await receive_upload(
        _request(_body("audio_file", pcm, []), 4096),
        spool_dir=tmp_path,
        max_bytes=10 * 2**20,
        file_field="audio_file",
        raw_pcm=True,
    )
    assert upload.size == len(pcm) and upload.filename == "clip.raw"
    assert _wav(upload.path) == (16000, 1, 2, 24000, pcm)


async def test_the_file_field_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as error:
        await receive_upload(
            _request(_body("file", b"abc", []), 4096),
            spool_dir=tmp_path,
            max_bytes=2**20,
            file_field="audio_file",
        )
    assert "'audio_file'" in str(error.value)
    assert _listing(tmp_path) == []  # nothing left behind
