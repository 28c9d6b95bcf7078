"""The job's decoding options change what the real model does."""

from __future__ import annotations

from pathlib import Path

import pytest

from smap_stt.stt import engine as engine_module
from smap_stt.stt.engine import Engine
from smap_stt.stt.results import TranscribeOptions
from smap_stt.stt.windows import DecodeOptions, _search
from tests.speech import cached_speech, cached_speech_paragraphs


@pytest.fixture(scope="module")
def siobhan() -> Path:
    # espeak says the name so that the model writes "Shivan" on its own.
    return cached_speech("Our guest today is Siobhan from the north office.")


def test_a_prompt_or_hotwords_steer_the_spelling_of_a_name(engine: Engine, siobhan: Path) -> None:
    plain = engine.transcribe(siobhan, model="base", language="en").text
    assert "Siobhan" not in plain, plain  # else this test proves nothing
    prompted = engine.transcribe(
        siobhan,
        model="base",
        language="en",
        options=TranscribeOptions(initial_prompt="Meeting notes: Siobhan and the team."),
    ).text
    assert "Siobhan" in prompted, prompted
    hot = engine.transcribe(
        siobhan, model="base", language="en", options=TranscribeOptions(hotwords="Siobhan")
    ).text
    assert "Siobhan" in hot, hot


def test_without_vad_the_audio_is_decoded_in_fixed_windows(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = cached_speech_paragraphs(["Hello there.", "General Kenobi."], pause=8.0)
    calls: list[str] = []
    for name in ("fixed_windows", "speech_windows"):
        real = getattr(engine_module, name)

        def spy(*args: object, _real: object = real, _name: str = name, **kw: object) -> object:
            calls.append(_name)
            return _real(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(engine_module, name, spy)
    off = engine.transcribe(
        clip, model="base", language="en", options=TranscribeOptions(vad_filter=False)
    )
    assert calls == ["fixed_windows"]
    assert "hello" in off.text.lower()
    calls.clear()
    engine.transcribe(clip, model="base", language="en")
    assert calls == ["speech_windows"]


def test_temperature_above_zero_samples_instead_of_beam_search() -> None:
    assert _search(DecodeOptions(beam_size=4)) == {"beam_size": 4}
    assert _search(DecodeOptions(beam_size=4, temperature=0.6)) == {
        "beam_size": 1,
        "sampling_topk": 0,
        "sampling_temperature": 0.6,
    }


def test_sampling_still_transcribes(engine: Engine, siobhan: Path) -> None:
    transcript = engine.transcribe(
        siobhan, model="base", language="en", options=TranscribeOptions(temperature=0.5)
    )
    assert "guest" in transcript.text.lower()
