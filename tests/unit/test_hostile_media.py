"""Hostile uploads at the probe and the decoder (issue 12): files that make FFmpeg read other
files, streams no recording has, audio longer than allowed, and error messages that must never
show a path or a library's words. Real files, crafted here; no network."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest

from smap_stt.errors import AudioError, AudioRejected
from smap_stt.stt import audio


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixels = b"".join(b"\x00" + b"\xff\x00\x00" * 4 for _ in range(4))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")
    )


def _wav(rate: int, channels: int, frames: int, *, tone: bool = False) -> bytes:
    if tone:
        samples = (np.sin(np.arange(frames * channels) / 5) * 8000).astype("<i2")
    else:
        samples = np.zeros(frames * channels, dtype="<i2")
    data = samples.tobytes()
    block = channels * 2
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """Audio that belongs to someone else, next to the upload (as another job's file would be)."""
    path = tmp_path / "secret.wav"
    path.write_bytes(_wav(16000, 1, 32000, tone=True))
    return path


INDIRECT = {
    "list.ffconcat": "ffconcat version 1.0\nfile secret.wav\n",
    "list.txt": "ffconcat version 1.0\nfile 'secret.wav'\nfile secret.wav\n",
    "bom.ffconcat": "\ufeffffconcat version 1.0\nfile secret.wav\n",
    "play.m3u8": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nsecret.wav\n#EXT-X-ENDLIST\n",
    "play.m3u": "#EXTM3U\n#EXTINF:2,x\nsecret.wav\n",
    "bare.m3u": "secret.wav\n",
    "stream.sdp": "v=0\no=- 0 0 IN IP4 127.0.0.1\nc=IN IP4 127.0.0.1\nm=audio 5004 RTP/AVP 0\n",
}


def test_ffmpeg_alone_would_read_the_other_file(tmp_path: Path, secret: Path) -> None:
    """The danger is real: without our options FFmpeg's concat demuxer follows the relative
    name and decodes the other file's audio."""
    playlist = tmp_path / "list.ffconcat"
    playlist.write_text(INDIRECT["list.ffconcat"])
    with av.open(str(playlist)) as container:
        assert container.format.name == "concat"
        assert sum(frame.samples for frame in container.decode(audio=0)) == 32000


@pytest.mark.parametrize("name", sorted(INDIRECT))
def test_playlists_and_file_lists_are_refused(tmp_path: Path, secret: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(INDIRECT[name], encoding="utf-8")
    with pytest.raises(AudioError, match="is text") as raised:
        audio.probe(path)
    _assert_clean(str(raised.value), tmp_path)
    with pytest.raises(AudioError, match="is text"):
        list(audio.decode_pieces(path, piece_seconds=5))


@pytest.mark.parametrize("name", ["list.ffconcat", "play.m3u8"])
def test_ffmpeg_itself_refuses_indirect_formats(tmp_path: Path, secret: Path, name: str) -> None:
    """Behind the text check, FFmpeg's format_whitelist refuses them too (in case a text
    signature is missed)."""
    path = tmp_path / name
    path.write_text(INDIRECT[name])
    with pytest.raises(av.error.ArgumentError):
        audio._av_open(path)


def test_an_image_sequence_pattern_is_not_opened(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"img{index:03d}.png").write_bytes(_png())
    pattern = tmp_path / "img%03d.png"  # a file of that very name, so that it can be read
    pattern.write_bytes(_png())
    with pytest.raises(AudioError, match="not a supported"):
        audio.probe(pattern)


@pytest.mark.parametrize(
    ("rate", "channels", "words"),
    [
        (1, 1, "sample rate of 1 Hz"),
        (999, 1, "sample rate of 999 Hz"),
        (500_000, 1, "sample rate of 500000 Hz"),
        (16000, 200, "200 channels"),
    ],
)
def test_implausible_streams_are_rejected(
    tmp_path: Path, rate: int, channels: int, words: str
) -> None:
    """A 195 KB WAV claiming 1 Hz would otherwise be 27 hours of work."""
    path = tmp_path / "crafted.wav"
    path.write_bytes(_wav(rate, channels, 100_000 // channels))
    with pytest.raises(AudioRejected, match=words):
        audio.probe(path)


def test_plausible_edges_are_accepted(tmp_path: Path) -> None:
    for rate, channels in ((1000, 1), (384_000, 2), (48000, 64)):
        path = tmp_path / f"ok-{rate}-{channels}.wav"
        path.write_bytes(_wav(rate, channels, rate // 2, tone=True))
        info = audio.probe(path)
        assert (info.sample_rate, info.channels) == (rate, channels)


def test_audio_longer_than_the_maximum_is_rejected_at_the_probe(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    path.write_bytes(_wav(8000, 1, 8000 * 30, tone=True))
    assert audio.probe(path, max_seconds=30).duration == pytest.approx(30)
    with pytest.raises(AudioRejected, match=r"30\.0 s long; the longest accepted is 10\.0 s"):
        audio.probe(path, max_seconds=10)


def test_the_decoder_stops_at_the_maximum_whatever_the_header_said(tmp_path: Path) -> None:
    """The worker's check: counted on decoded samples, so a lying header cannot pass it."""
    path = tmp_path / "long.wav"
    path.write_bytes(_wav(16000, 1, 16000 * 12, tone=True))
    pieces = audio.decode_pieces(path, piece_seconds=1, max_seconds=5)
    got = 0
    with pytest.raises(AudioRejected, match="more than its header said"):
        for piece in pieces:
            got += len(piece)
    assert got <= 6 * 16000
    assert sum(len(p) for p in audio.decode_pieces(path, piece_seconds=5, max_seconds=12)) > 0


JUNK = {
    "random.bin": np.random.default_rng(1).bytes(5000),
    "zeros.wav": bytes(5000),
    "riff-only.wav": b"RIFF\xff\xff\xff\xffWAVEjunk" + bytes(100),
    "id3-only.mp3": b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(200),
    "ogg-junk.ogg": b"OggS" + np.random.default_rng(2).bytes(3000),
    "ftyp-junk.m4a": b"\x00\x00\x00\x18ftypM4A " + np.random.default_rng(3).bytes(3000),
}


def _assert_clean(message: str, tmp_path: Path) -> None:
    for leak in (str(tmp_path), "/tmp", ".part", "Errno", "returned", "av.", "NoneType", "'"):
        assert leak not in message, message


@pytest.mark.parametrize("name", sorted(JUNK))
def test_error_messages_show_no_paths_or_internals(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(JUNK[name])
    with pytest.raises(AudioError) as raised:
        audio.probe(path)
    _assert_clean(str(raised.value), tmp_path)
    try:
        list(audio.decode_pieces(path, piece_seconds=5))
    except AudioError as exc:
        _assert_clean(str(exc), tmp_path)


def test_a_missing_file_says_so_without_its_path(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as raised:
        audio.probe(tmp_path / "gone.wav")
    _assert_clean(str(raised.value), tmp_path)
