"""The dialects' pure translation: OpenAI and whisper-asr-webservice requests to job fields,
transcripts back to their bodies; the streamed WAV header for `encode=false`."""

from __future__ import annotations

import io
import json
import wave
from typing import Any

import pytest

from smap_stt import dialects
from smap_stt.api.upload import wav_header

DOCUMENT: dict[str, Any] = {
    "job_id": "j1",
    "filename": "talk.wav",
    "model": "base",
    "task": "transcribe",
    "language": "en",
    "language_probability": 0.97,
    "duration_seconds": 4.2,
    "text": " Hello there. General Kenobi.",
    "segments": [
        {
            "id": 0,
            "start": 0.0,
            "end": 1.5,
            "text": " Hello there.",
            "avg_logprob": -0.2,
            "no_speech_prob": 0.01,
            "words": [
                {"start": 0.0, "end": 0.6, "word": " Hello", "probability": 0.9},
                {"start": 0.6, "end": 1.5, "word": " there.", "probability": 0.8},
            ],
        },
        {"start": 2.0, "end": 4.2, "text": " General Kenobi."},  # an older document's segment
    ],
}


def test_openai_defaults_detect_the_language_and_map_whisper_1() -> None:
    call = dialects.openai_call({"model": "whisper-1"}, task="transcribe")
    assert call.response_format == "json" and call.granularities == ("segment",)
    assert call.fields == {
        "language": "auto",
        "model": "whisper-1",  # the service maps it to WHISPER_MODEL, recording the name
        "task": "transcribe",
        "word_timestamps": "false",
        "temperature": "0",
    }


@pytest.mark.parametrize(
    "raw",
    [
        {"timestamp_granularities[]": "word,segment"},  # repeated fields, as the parser joins them
        {"timestamp_granularities": "segment,word"},
        {"timestamp_granularities[]": "word", "timestamp_granularities": "segment"},
    ],
)
def test_openai_granularities_in_every_spelling(raw: dict[str, str]) -> None:
    call = dialects.openai_call({**raw, "unknown": "x"}, task="transcribe")
    assert set(call.granularities) == {"word", "segment"}
    assert call.fields["word_timestamps"] == "true"


def test_openai_options_pass_through_and_translation_ignores_language() -> None:
    raw = {"model": "base", "prompt": "Kenobi", "temperature": "0.4", "language": "vi"}
    call = dialects.openai_call(raw, task="transcribe")
    assert call.fields["initial_prompt"] == "Kenobi" and call.fields["temperature"] == "0.4"
    assert call.fields["language"] == "vi" and call.fields["model"] == "base"
    translation = dialects.openai_call(raw, task="translate")
    assert translation.fields["task"] == "translate" and translation.fields["language"] == "auto"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"response_format": "mp3"}, "response_format"),
        ({"timestamp_granularities[]": "sentence"}, "timestamp_granularities[]"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": "nan"}, "temperature"),
        ({"stream": "true"}, "stream"),
    ],
)
def test_openai_bad_parameters_name_the_parameter(raw: dict[str, str], param: str) -> None:
    with pytest.raises(dialects.ParamError) as error:
        dialects.openai_call(raw, task="transcribe")
    assert error.value.param == param and error.value.status_code == 400


def test_openai_bodies() -> None:
    def call(fmt: str, **raw: str) -> dialects.OpenAICall:
        return dialects.openai_call({"response_format": fmt, **raw}, task="transcribe")

    plain = json.loads(dialects.render_openai(DOCUMENT, call("json")).body)
    assert plain == {
        "text": "Hello there. General Kenobi.",
        "usage": {"type": "duration", "seconds": 5},
    }
    assert dialects.render_openai(DOCUMENT, call("text")).body == b"Hello there. General Kenobi.\n"
    srt = dialects.render_openai(DOCUMENT, call("srt")).body.decode()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\nHello there.")

    verbose = json.loads(dialects.render_openai(DOCUMENT, call("verbose_json")).body)
    assert verbose["language"] == "english" and verbose["duration"] == 4.2
    assert [s["start"] for s in verbose["segments"]] == [0.0, 2.0]
    assert "words" not in verbose
    words = call("verbose_json", **{"timestamp_granularities[]": "word"})
    only_words = json.loads(dialects.render_openai(DOCUMENT, words).body)
    assert [w["word"] for w in only_words["words"]] == ["Hello", "there."]
    assert "segments" not in only_words


def test_asr_fields_honour_given_values_only() -> None:
    call = dialects.asr_call(
        task="translate",
        language=None,
        initial_prompt=None,
        vad_filter=None,
        word_timestamps=None,
        output="srt",
    )
    assert call.fields == {"language": "auto", "task": "translate"}  # our defaults: VAD on
    call = dialects.asr_call(
        task="transcribe",
        language="en",
        initial_prompt="names",
        vad_filter=False,
        word_timestamps=True,
        output="json",
    )
    assert call.fields == {
        "language": "en",
        "task": "transcribe",
        "initial_prompt": "names",
        "vad_filter": "false",
        "word_timestamps": "true",
    }


def test_asr_json_has_whisper_asr_webservice_shape() -> None:
    body = json.loads(dialects.render_asr(DOCUMENT, "json"))
    assert set(body) == {"language", "segments", "text"} and body["language"] == "en"
    first, second = body["segments"]
    assert list(first) == [
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
        "words",
        "temperature",
    ]
    assert first["id"] == 1 and first["words"][0]["probability"] == 0.9
    assert second["words"] is None and second["seek"] == 200
    assert dialects.render_asr(DOCUMENT, "txt") == b"Hello there.\nGeneral Kenobi.\n"
    assert dialects.render_asr(DOCUMENT, "tsv").startswith(b"start\tend\ttext\n0\t1500\t")


def test_detect_language_body() -> None:
    assert dialects.detect_language_body(DOCUMENT) == {
        "detected_language": "english",
        "language_code": "en",
        "confidence": 0.97,
    }


@pytest.mark.parametrize("frames", [0, 1, 16000])
def test_wav_header_makes_a_valid_wav(frames: int) -> None:
    pcm = b"\x01\x00" * frames
    with wave.open(io.BytesIO(wav_header(len(pcm)) + pcm)) as clip:
        assert clip.getframerate() == 16000 and clip.getnchannels() == 1
        assert clip.getsampwidth() == 2 and clip.getnframes() == frames
