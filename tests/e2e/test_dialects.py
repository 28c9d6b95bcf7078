"""The OpenAI and whisper-asr-webservice dialects against a running service and the real model:
the official `openai` client, unchanged, and `/asr` / `/detect-language` with the request
shapes from whisper-asr-webservice's docs (including `encode=false` PCM, as Bazarr sends)."""

from __future__ import annotations

import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import Clip
from tests.procs import Service, ServiceFactory, base_env, free_port
from tests.speech import wer


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("dialects")
    port = free_port()
    service = Service(base_env(data_dir, API_PORT=port), data_dir, port)
    service.start("serve")
    yield service
    service.stop_all()


@pytest.fixture(scope="module")
def client(svc: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{svc.url}/v1", api_key="unused", max_retries=0, timeout=300)


def _pcm16k(path: Path) -> bytes:
    """The clip as raw 16 kHz mono s16le, no header: what `encode=false` clients send."""
    with wave.open(str(path)) as clip:
        assert clip.getnchannels() == 1 and clip.getsampwidth() == 2
        rate = clip.getframerate()
        samples = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
    times = np.arange(0, len(samples) / rate, 1 / 16000)
    resampled = np.interp(times, np.arange(len(samples)) / rate, samples.astype(np.float64))
    return resampled.astype("<i2").tobytes()


# --- OpenAI -----------------------------------------------------------------------------------


def test_openai_json_text_srt_vtt(client: openai.OpenAI, tiny_clip: Clip) -> None:
    with tiny_clip.path.open("rb") as audio:
        result = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert wer(tiny_clip.text, result.text) <= 0.2, result.text

    with tiny_clip.path.open("rb") as audio:
        text = client.audio.transcriptions.create(
            model="base", file=audio, response_format="text", language="en"
        )
    assert isinstance(text, str) and wer(tiny_clip.text, text) <= 0.2

    with tiny_clip.path.open("rb") as audio:
        srt = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="srt"
        )
    first_cue = srt.strip().split("\n\n")[0].splitlines()
    assert first_cue[0] == "1" and " --> " in first_cue[1] and first_cue[1].startswith("00:00:")

    with tiny_clip.path.open("rb") as audio:
        vtt = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="vtt"
        )
    assert vtt.startswith("WEBVTT") and " --> " in vtt


def test_openai_verbose_json_with_words_and_segments(
    client: openai.OpenAI, short_clip: Clip
) -> None:
    with short_clip.path.open("rb") as audio:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.language == "english"
    assert result.duration == pytest.approx(17.8, abs=1.0)
    assert wer(short_clip.text, result.text) <= 0.15
    assert result.segments and result.words
    assert all(s.end > s.start for s in result.segments)
    assert [s.id for s in result.segments] == sorted(s.id for s in result.segments)
    assert len(result.words) >= 30
    starts = [word.start for word in result.words]
    assert starts == sorted(starts) and result.words[-1].end <= result.duration + 0.5
    spoken = " ".join(word.word for word in result.words)
    assert wer(short_clip.text, spoken) <= 0.15


def test_openai_translation(client: openai.OpenAI, svc: Service, tiny_clip: Clip) -> None:
    with tiny_clip.path.open("rb") as audio:
        raw = client.audio.translations.with_raw_response.create(model="whisper-1", file=audio)
    result = raw.parse()
    # English speech translates to itself, give or take a word or two on a 3 s clip.
    assert wer(tiny_clip.text, result.text) <= 0.34, result.text
    job = httpx.get(f"{svc.url}/api/v1/tasks/{raw.headers['X-Job-Id']}/status").json()
    assert job["task"] == "translate" and job["model"] == "base"
    assert job["requested_model"] == "whisper-1"


def test_openai_errors(client: openai.OpenAI, tmp_path: Path) -> None:
    junk = tmp_path / "notes.mp3"
    junk.write_bytes(b"this is not audio at all" * 100)
    with junk.open("rb") as audio, pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="whisper-1", file=audio)
    error = bad.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["param"] == "file" and "/" not in error["message"]

    silence = tmp_path / "x.wav"
    silence.write_bytes(b"")
    with silence.open("rb") as audio, pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=audio)
    with junk.open("rb") as audio, pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(  # type: ignore[call-overload]
            model="whisper-1", file=audio, response_format="mp3"
        )
    assert bad.value.body["param"] == "response_format"  # type: ignore[index]
    with junk.open("rb") as audio, pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="large-v9", file=audio)
    assert "unknown model" in bad.value.message


def test_openai_models(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids[0] == "whisper-1" and "base" in ids
    assert client.models.retrieve("whisper-1").owned_by == "smap-stt"
    assert client.models.retrieve("base").id == "base"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o-transcribe")
    assert missing.value.code == "model_not_found"


def test_openai_lenient_form(svc: Service, tiny_clip: Clip) -> None:
    """What other clients send: repeated `timestamp_granularities` without brackets, fields
    we do not know, an Idempotency-Key."""
    data = {
        "model": "whisper-1",
        "response_format": "verbose_json",
        "timestamp_granularities": ["word", "segment"],
        "include[]": "logprobs",
        "chunking_strategy": "auto",
        "some_future_field": "1",
    }
    files = {"file": ("clip.wav", tiny_clip.path.read_bytes(), "audio/wav")}
    headers = {"Idempotency-Key": "lenient-1"}
    first = httpx.post(
        f"{svc.url}/v1/audio/transcriptions", data=data, files=files, headers=headers, timeout=300
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["words"] and body["segments"]
    again = httpx.post(
        f"{svc.url}/v1/audio/transcriptions", data=data, files=files, headers=headers, timeout=300
    )
    assert again.status_code == 200 and again.json()["text"] == body["text"]
    assert again.headers["X-Job-Id"] == first.headers["X-Job-Id"]

    bad = httpx.post(
        f"{svc.url}/v1/audio/transcriptions",
        data={"timestamp_granularities[]": "sentence"},
        files=files,
        timeout=60,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "timestamp_granularities[]"
    assert bad.headers["x-should-retry"] == "false"


def test_openai_wait_timeout_names_the_job(service: ServiceFactory, tiny_clip: Clip) -> None:
    slow = service(SYNC_WAIT_SECONDS="1")
    slow.start("api")  # no worker: the job waits in the queue past the wait
    client = openai.OpenAI(base_url=f"{slow.url}/v1", api_key="unused", timeout=60)
    started = time.monotonic()
    with tiny_clip.path.open("rb") as audio, pytest.raises(openai.APIStatusError) as timeout:
        client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert time.monotonic() - started < 20  # answered once, not retried (x-should-retry)
    assert timeout.value.status_code == 504
    assert timeout.value.code == "timeout"
    job_id = timeout.value.response.headers["X-Job-Id"]
    assert job_id in timeout.value.message
    status = httpx.get(f"{slow.url}/api/v1/tasks/{job_id}/status").json()
    assert status["status"] == "PENDING" and status["queue_position"] == 0
    with slow.client() as http:
        assert http.get("/api/v1/tasks").json()["total"] == 1


# --- whisper-asr-webservice -------------------------------------------------------------------


def test_asr_json_and_txt_as_its_docs_send_them(svc: Service, short_clip: Clip) -> None:
    # curl -X POST -H "content-type: multipart/form-data" -F "audio_file=@/path/to/file"
    #   0.0.0.0:9000/asr?output=json
    with short_clip.path.open("rb") as audio:
        response = httpx.post(
            f"{svc.url}/asr",
            params={"output": "json"},
            files={"audio_file": ("talk.wav", audio)},
            timeout=300,
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["asr-engine"] == "faster_whisper"
    assert response.headers["content-disposition"] == 'attachment; filename="talk.wav.json"'
    body = json.loads(response.text)
    assert body["language"] == "en" and wer(short_clip.text, body["text"]) <= 0.15
    segment = body["segments"][0]
    assert set(segment) >= {"id", "seek", "start", "end", "text", "tokens", "avg_logprob"}
    assert segment["words"] is None  # not asked for

    response = httpx.post(
        f"{svc.url}/asr",
        params={"task": "transcribe", "language": "en", "word_timestamps": "true"},
        files={"audio_file": ("talk.wav", short_clip.path.read_bytes())},
        timeout=300,
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="talk.wav.txt"'
    lines = response.text.strip().splitlines()
    assert len(lines) >= 2 and wer(short_clip.text, " ".join(lines)) <= 0.15


def test_asr_raw_pcm_srt_and_translate_vtt(svc: Service, tiny_clip: Clip) -> None:
    pcm = _pcm16k(tiny_clip.path)
    response = httpx.post(
        f"{svc.url}/asr",
        params={"encode": "false", "output": "srt", "language": "en", "vad_filter": "false"},
        files={"audio_file": ("episode.mkv", pcm)},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="episode.mkv.srt"'
    cue = response.text.strip().split("\n\n")[0].splitlines()
    assert cue[0] == "1" and " --> " in cue[1]
    # Read as anything but 16 kHz s16le it would be noise; linear resampling costs a word.
    assert wer(tiny_clip.text, " ".join(cue[2:])) <= 0.4

    response = httpx.post(
        f"{svc.url}/asr",
        params={"task": "translate", "output": "vtt"},
        files={"audio_file": ("clip.wav", tiny_clip.path.read_bytes())},
        timeout=300,
    )
    assert response.status_code == 200 and response.text.startswith("WEBVTT")


def test_detect_language(svc: Service, tiny_clip: Clip) -> None:
    response = httpx.post(
        f"{svc.url}/detect-language",
        files={"audio_file": ("clip.wav", tiny_clip.path.read_bytes())},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["detected_language"] == "english" and body["language_code"] == "en"
    assert 0.5 < body["confidence"] <= 1.0
    pcm = httpx.post(
        f"{svc.url}/detect-language",
        params={"encode": "false"},
        files={"audio_file": ("clip", _pcm16k(tiny_clip.path))},
        timeout=300,
    )
    assert pcm.status_code == 200 and pcm.json()["language_code"] == "en"


def test_asr_bad_input(svc: Service) -> None:
    junk = httpx.post(
        f"{svc.url}/asr", files={"audio_file": ("a.mp3", b"not audio" * 50)}, timeout=60
    )
    assert junk.status_code == 415 and "detail" in junk.json()
    wrong_field = httpx.post(f"{svc.url}/asr", files={"file": ("a.wav", b"x")}, timeout=60)
    assert wrong_field.status_code == 422 and "audio_file" in wrong_field.json()["detail"]
    bad_output = httpx.post(
        f"{svc.url}/asr",
        params={"output": "docx"},
        files={"audio_file": ("a.wav", b"x")},
        timeout=60,
    )
    assert bad_output.status_code == 422
    odd_pcm = httpx.post(
        f"{svc.url}/asr",
        params={"encode": "false"},
        files={"audio_file": ("a", b"\x00" * 11)},
        timeout=60,
    )
    assert odd_pcm.status_code == 422  # a fraction of a millisecond: no sound to transcribe
