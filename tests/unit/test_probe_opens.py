"""The upload probe opens a file once (issue 14): each open costs ~2.6 ms of an upload."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from smap_stt.stt import audio


def _tone(path: Path, seconds: float) -> Path:
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real_open = av.open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(str(args[0]))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    return opened


def test_a_long_wav_is_probed_with_one_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = _tone(tmp_path / "tone.wav", 40.0)  # long enough for the seek to the claimed end
    opened = _count_opens(monkeypatch)
    info = audio.probe(clip)
    assert len(opened) == 1
    assert info.duration == pytest.approx(40.0, abs=0.05)


def test_a_wav_whose_header_lies_is_still_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header claims 40 s, only 15 s are there: the seek finds nothing near the end, and
    the fallback (a second open) counts what is really there."""
    clip = _tone(tmp_path / "tone.wav", 40.0)
    data = clip.read_bytes()
    clip.write_bytes(data[: 44 + 15 * 16000 * 2])
    opened = _count_opens(monkeypatch)
    info = audio.probe(clip)
    assert info.duration == pytest.approx(15.0, abs=0.1)
    assert len(opened) <= 2
