"""Probing and decoding uploads with PyAV, whose wheel bundles FFmpeg (no system ffmpeg).

FFmpeg is forgiving in ways that hurt a service: random bytes, a bare WAV header or a truncated
file can open fine and decode to nothing without an error, a truncated MP3 keeps the duration its
header promised, and a decode generator that hit one bad packet silently stops. So we decode
packet by packet (a bad packet is skipped, a run of them is an error), check the amount of
audio we actually got, and turn every failure into an AudioError with a message a client can act
on: no raw av, ValueError or OSError leaves this module.

`probe` is what the API process runs on every upload, so numpy (which only the decoders need)
is imported inside them: importing this module and probing loads no numpy.

Uploads are hostile until proven otherwise (docs/SECURITY.md). FFmpeg can also read playlists
and lists of other files (concat/ffconcat, HLS, image sequences, SDP, devices), which would let
an upload read files on the server or reach the network. So only the container formats in
`ALLOWED_FORMATS` are opened (FFmpeg's `format_whitelist`, checked after probing and before
the demuxer reads anything, and inherited by any nested input), only the `file` protocol is
allowed, and text files are refused before FFmpeg sees them. Streams with implausible sample
rates or channel counts and audio longer than the caller's maximum are refused
(AudioRejected). Error messages never carry paths or FFmpeg's words: those go to the log.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import av.container

from smap_stt.errors import AudioError, AudioRejected, AudioTooShort

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SAMPLE_RATE", "AudioInfo", "decode_audio", "decode_pieces", "probe"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""What Whisper listens at: decoded audio is mono float32 at this rate."""

ALLOWED_FORMATS = (
    "wav,w64,mp3,ogg,flac,mov,matroska,aac,ac3,eac3,amr,amrnb,amrwb,aiff,au,caf,asf,avi,flv,"
    "mpeg,mpegts,ape,wv,tta,tak,mpc,mpc8,dts,dtshd,truehd,mlp,gsm,voc,dsf,rm,xwma,nut,mxf,oma,"
    "shn,qcp,ircam,nistsphere,loas,iff,mmf,bonk,wsaud"
)
"""FFmpeg demuxers (comma separated) that may open an upload: audio and video containers that
read nothing but the file itself."""

_OPEN_OPTIONS = {"format_whitelist": ALLOWED_FORMATS, "protocol_whitelist": "file"}

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 64

# What text playlists and file lists start with (after optional whitespace or a BOM).
_TEXT_SIGNATURES = (b"#extm3u", b"#ext-x", b"ffconcat", b"file ", b"[playlist]", b"<?xml", b"<")

# Consecutive packets that fail to decode before we call the file corrupt rather than glitched.
_MAX_BAD_PACKETS = 20

# How far the first packet after seeking to the claimed end may fall short of it before we stop
# believing the header (MP3 seeking by TOC or bitrate is approximate).
_SEEK_SLACK = 10.0

# FFmpeg probes a WAV's PCM stream for DTS disguised as PCM by running every demuxer's probe
# over up to 2500 packets: 80 % of an upload's probe (issue 14's profile, 1 MB WAV: 7 ms of an
# open, 1.2 ms without). Speech does not come as DTS-in-WAV, so WAV files skip that probe.
_WAV_OPTIONS = {"max_probe_packets": "0"}


@dataclass
class AudioInfo:
    """What `probe` learned about a file."""

    duration: float
    """Seconds of audio; from the container when it proved true, else counted."""
    format_name: str
    """FFmpeg's container name, e.g. `mp3`, `wav`, `mov,mp4,m4a,3gp,3g2,mj2`."""
    codec: str
    """Codec of the first audio stream, e.g. `mp3float`, `aac`, `pcm_s16le`."""
    sample_rate: int
    channels: int


def probe(path: Path, *, min_seconds: float = 0.1, max_seconds: float | None = None) -> AudioInfo:
    """Check that `path` is audio worth transcribing and describe it; cheap for long files.

    Decodes only the first `min_seconds`; the duration comes from the container header unless
    a seek to its claimed end shows it lies (truncated files), and is counted from the packets
    (no decoding) when there is no header duration. Raises AudioError for an empty or missing
    file, a file that is not media or is corrupt, media without an audio stream, and audio that
    decodes to less than `min_seconds`; AudioRejected for a stream no real recording has (sample
    rate, channels) and audio longer than `max_seconds`.
    """
    try:
        with _open(path) as container:
            stream = _audio_stream(container)
            info = AudioInfo(
                duration=0.0,
                format_name=container.format.name,
                codec=stream.codec_context.name,
                sample_rate=stream.sample_rate or 0,
                channels=stream.channels or 0,
            )
            _check_plausible(info)
            decoded, bad = _decoded_seconds(container, stream, limit=min_seconds)
            if decoded == 0 and bad:
                raise AudioError("The file is not decodable audio: its packets are corrupt.")
            if decoded < min_seconds:
                raise AudioTooShort(_too_short(decoded, min_seconds))
            claimed = _claimed_duration(container, stream)
            # The same open file is sought to the claimed end: one open per probe, which is
            # a good part of an upload's cost (issue 14). Only a header without a duration,
            # or one that lies, costs a second open to count the packets.
            if claimed is not None and not _reaches(container, stream, claimed):
                claimed = None
        if claimed is None:
            claimed = _counted_duration(path)
        info.duration = max(claimed, decoded)
        if max_seconds is not None and info.duration > max_seconds:
            raise AudioRejected(_too_long(info.duration, max_seconds))
        return info
    except AudioError:
        raise
    except Exception as exc:  # FFmpeg has many ways to fail; none may leak raw
        logger.info("probe of %s failed: %r", path.name, exc)
        raise AudioError("The file could not be read as audio; it may be corrupt.") from exc


def _check_plausible(info: AudioInfo) -> None:
    """0 means the demuxer does not know yet (noise that looks like MP3): decoding decides."""
    if info.sample_rate and not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioRejected(
            f"The audio claims a sample rate of {info.sample_rate} Hz; recordings have "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, so the file is damaged or crafted."
        )
    if info.channels > MAX_CHANNELS:
        raise AudioRejected(
            f"The audio claims {info.channels} channels; at most {MAX_CHANNELS} are accepted."
        )


def _too_long(seconds: float, max_seconds: float) -> str:
    return (
        f"The audio is {_hours(seconds)} long; the longest accepted is {_hours(max_seconds)} "
        "(MAX_AUDIO_DURATION_SECONDS). Split it into shorter files."
    )


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _looks_like_text(head: bytes) -> bool:
    """Playlists and file lists are text; every container we open is binary near its start
    (an MP3 without ID3 starts with a frame header, 0xFF 0xFx)."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(_TEXT_SIGNATURES):
        return True
    if not head or b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end is still text
        if exc.start < len(head) - 4:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def decode_pieces(
    path: Path, *, piece_seconds: float, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """Decode `path` to 16 kHz mono float32, yielding pieces of `piece_seconds` (the last may be
    shorter) so that memory stays bounded whatever the file's length.

    Raises AudioError when the file cannot be decoded, a run of packets is corrupt, or nothing
    decodes at all; AudioRejected as soon as more than `max_seconds` decoded (the header that
    passed the probe lied).
    """
    import numpy as np

    if piece_seconds <= 0:
        raise ValueError("piece_seconds must be positive")
    piece_samples = max(1, round(piece_seconds * SAMPLE_RATE))
    pending: list[np.ndarray] = []
    pending_samples = 0
    total = 0
    max_samples = None if max_seconds is None else max_seconds * SAMPLE_RATE
    try:
        for samples in _decoded_samples(path):
            pending.append(samples)
            pending_samples += len(samples)
            total += len(samples)
            if max_samples is not None and total > max_samples:
                raise AudioRejected(
                    "The audio decodes to more than its header said: "
                    + _too_long(total / SAMPLE_RATE, max_seconds or 0)
                )
            while pending_samples >= piece_samples:
                joined = np.concatenate(pending)
                yield joined[:piece_samples]
                rest = joined[piece_samples:]
                pending = [rest] if len(rest) else []
                pending_samples = len(rest)
    finally:
        # PyAV's resampler graph is only freed by the cycle collector; without this, memory
        # grows job after job (https://github.com/SYSTRAN/faster-whisper/issues/390).
        gc.collect()
    if pending_samples:
        yield np.concatenate(pending)
    if total == 0:
        raise AudioTooShort("The file contains no decodable audio.")


def decode_audio(path: Path) -> np.ndarray:
    """The whole file as 16 kHz mono float32; only for short files (1 h is 230 MB)."""
    import numpy as np

    pieces = list(decode_pieces(path, piece_seconds=600.0))
    return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def _open(path: Path) -> av.container.InputContainer:
    # One look at the file before FFmpeg opens it: its size and first bytes (text? WAV?) from
    # one open, not a stat and two opens (issue 14: each costs an upload a syscall or three).
    try:
        with path.open("rb", buffering=0) as file:
            size = os.fstat(file.fileno()).st_size
            head = file.read(512)
    except OSError as exc:
        logger.info("cannot read %s: %r", path.name, exc)
        raise AudioError("The file cannot be read.") from exc
    if size == 0:
        raise AudioTooShort("The file is empty.")
    if _looks_like_text(head):
        raise AudioError(
            "The file is text (a playlist or a list of files?), not audio; upload the "
            "recording itself."
        )
    try:
        return _av_open(path, wav=_is_wav_header(head))
    except (av.error.InvalidDataError, av.error.ArgumentError, av.error.PermissionError) as exc:
        # ArgumentError (EINVAL): the demuxer FFmpeg recognised is not in ALLOWED_FORMATS.
        logger.info("refused to open %s: %r", path.name, exc)
        raise AudioError(
            "The file is not a supported audio or video format, or it is corrupt."
        ) from exc
    except Exception as exc:
        logger.info("cannot open %s: %r", path.name, exc)
        raise AudioError("The file could not be opened as audio or video.") from exc


def _av_open(path: Path, *, wav: bool | None = None) -> av.container.InputContainer:
    """The one way this module opens media: allowed demuxers and the file protocol only.
    `wav`: whether the file starts as a WAV does, when the caller has read its start."""
    if wav is None:
        wav = _is_wav(path)
    options = {**_OPEN_OPTIONS, **(_WAV_OPTIONS if wav else {})}
    return av.open(str(path), mode="r", metadata_errors="ignore", options=options)


def _is_wav(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            head = file.read(12)
    except OSError:
        return False  # av.open reports it
    return _is_wav_header(head)


def _is_wav_header(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def _audio_stream(container: av.container.InputContainer) -> av.AudioStream:
    if not container.streams.audio:
        kinds: list[str] = sorted({stream.type for stream in container.streams}) or ["nothing"]
        raise AudioError(
            f"The file has no audio stream (it is "
            f"{container.format.long_name or container.format.name} with "
            f"{' and '.join(kinds)} only)."
        )
    return container.streams.audio[0]


def _decoded_seconds(
    container: av.container.InputContainer, stream: av.AudioStream, *, limit: float
) -> tuple[float, int]:
    """Seconds decoded from the start, stopping once `limit` is reached, and the number of
    packets that failed to decode on the way."""
    decoded = 0.0
    errors = [0]
    for frame in _frames(container, stream, errors=errors):
        decoded += frame.samples / (frame.sample_rate or SAMPLE_RATE)
        if decoded >= limit:
            break
    return decoded, errors[0]


def _claimed_duration(
    container: av.container.InputContainer, stream: av.AudioStream
) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _reaches(
    container: av.container.InputContainer, stream: av.AudioStream, claimed: float
) -> bool:
    """Whether there is audio near the `claimed` end: seek the open `container` there and look
    at the next packet of `stream` (which leaves the container at its end)."""
    target = max(0.0, claimed - 1.0)
    if target < _SEEK_SLACK:
        return True  # short files: _counted_duration would cost as much as this check
    try:
        container.seek(int(target * av.time_base), any_frame=False)
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base is not None:
                return float(packet.pts * packet.time_base) >= target - _SEEK_SLACK
    except (av.error.FFmpegError, OSError, ValueError):
        return False
    return False


def _counted_duration(path: Path) -> float:
    """The duration from the packets themselves: demuxing only, no decoding, so ~0.5 s/hour."""
    end = 0.0
    summed = 0.0
    with _av_open(path) as container:
        stream = container.streams.audio[0]
        for packet in container.demux(stream):
            if not packet.duration or packet.time_base is None:
                continue
            length = float(packet.duration * packet.time_base)
            summed += length
            if packet.pts is not None:
                end = max(end, float(packet.pts * packet.time_base) + length)
    return end or summed


def _frames(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    *,
    errors: list[int] | None = None,
) -> Iterator[av.AudioFrame]:
    """Decoded frames, decoding packet by packet so that one bad packet does not end the stream
    (a `container.decode()` generator that raised once is finished). Bad packets are counted
    in `errors[0]`."""
    bad = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            if errors is not None:
                errors[0] += 1
            bad += 1
            if bad > _MAX_BAD_PACKETS:
                raise AudioError(
                    "The audio is corrupt: many consecutive packets could not be decoded."
                ) from None
            continue
        bad = 0
        for frame in frames:
            if isinstance(frame, av.AudioFrame):
                yield frame


def _decoded_samples(path: Path) -> Iterator[np.ndarray]:
    """The file as consecutive float32 arrays at SAMPLE_RATE, mono."""
    try:
        with _open(path) as container:
            stream = _audio_stream(container)
            resampler = _new_resampler()
            for frame in _frames(container, stream):
                frame.pts = None  # timestamps of skipped or odd packets must not stall the graph
                try:
                    out = resampler.resample(frame)
                except ValueError:
                    # The input format changed mid-stream (e.g. concatenated MP3s): flush the
                    # old resampler and start a new one for the new format.
                    out = resampler.resample(None)
                    resampler = _new_resampler()
                    out += resampler.resample(frame)
                for resampled in out:
                    yield resampled.to_ndarray().reshape(-1)
            for resampled in resampler.resample(None):
                yield resampled.to_ndarray().reshape(-1)
    except AudioError:
        raise
    except Exception as exc:
        logger.info("decoding %s failed: %r", path.name, exc)
        raise AudioError("The audio could not be decoded; the file may be corrupt.") from exc


def _new_resampler() -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)


def _too_short(decoded: float, min_seconds: float) -> str:
    if decoded == 0:
        return "The file contains no decodable audio."
    return (
        f"The file contains only {decoded:.3f} s of decodable audio "
        f"(at least {min_seconds:g} s is needed)."
    )
