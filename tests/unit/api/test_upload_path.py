"""Issue 14's shortcuts on the upload path keep what they replace: the probe runs once on the
complete file (in the hop of its last write), and a client sending tiny pieces cannot make
the parser keep one object per piece."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request

from smap_stt.api.upload import FLUSH_BYTES, MIN_VIEW_BYTES, _FormCollector, receive_upload
from smap_stt.errors import AudioError
from smap_stt.stt.audio import AudioInfo

from .multipart import multipart_body, streamed_request


def _request(data: bytes, chunk: int) -> Request:
    return streamed_request(multipart_body("audio_file", data, []), chunk)


async def test_the_check_runs_once_on_the_complete_file(tmp_path: Path) -> None:
    pcm = b"\x10\x00\xf0\xff" * (FLUSH_BYTES // 3)  # more than one flush
    seen: list[bytes] = []
    info = AudioInfo(
        duration=1.0, format_name="wav", codec="pcm_s16le", sample_rate=16000, channels=1
    )

    def check(path: Path) -> AudioInfo | AudioError:
        seen.append(path.read_bytes())
        return info

    upload = await receive_upload(
        _request(pcm, 65536),
        spool_dir=tmp_path,
        max_bytes=10 * 2**20,
        file_field="audio_file",
        raw_pcm=True,
        check=check,
    )
    assert upload.probed is info
    assert seen == [upload.path.read_bytes()]  # once, after the header got its real sizes
    assert len(seen[0]) == 44 + len(pcm) and seen[0][40:44] == len(pcm).to_bytes(4, "little")


async def test_an_error_of_the_check_is_kept_for_later(tmp_path: Path) -> None:
    upload = await receive_upload(
        _request(b"not audio", 4096),
        spool_dir=tmp_path,
        max_bytes=2**20,
        file_field="audio_file",
        check=lambda path: AudioError("not audio"),
    )
    assert isinstance(upload.probed, AudioError)  # service.submit reports it after the form's


def test_tiny_pieces_are_gathered_into_one_buffer(tmp_path: Path) -> None:
    collector = _FormCollector(tmp_path / "spool")
    collector._is_file = True
    for _ in range(10_000):
        collector._part_data(b"abc", 1, 2)
    big = bytes(MIN_VIEW_BYTES)
    collector._part_data(big, 0, len(big))
    collector._part_data(b"xy", 0, 2)
    assert [len(piece) for piece in collector.pending] == [10_000, MIN_VIEW_BYTES, 2]
    assert isinstance(collector.pending[1], memoryview)  # a large piece is not copied
    assert collector.pending_bytes == 10_000 + MIN_VIEW_BYTES + 2
