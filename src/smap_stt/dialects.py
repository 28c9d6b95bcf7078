"""The two foreign dialects the API speaks besides its own task API: OpenAI's audio API and
whisper-asr-webservice's `/asr`. Requests are translated into the upload fields the service
reads (one job core for every door), and a finished job's transcript document is rendered back
in the dialect's shapes. Pure functions, apart from `finished_document`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smap_stt import formats, service
from smap_stt.backends import Backends
from smap_stt.errors import InvalidRequest
from smap_stt.jobs import Job, JobStatus
from smap_stt.stt.languages import LANGUAGES

__all__ = [
    "ASR_OUTPUTS",
    "OPENAI_FORMATS",
    "WHISPER_1",
    "AsrCall",
    "JobEnded",
    "OpenAICall",
    "ParamError",
    "asr_call",
    "detect_language_body",
    "finished_document",
    "openai_call",
    "render_asr",
    "render_openai",
]

WHISPER_1 = service.WHISPER_1
"""OpenAI's model name; here it means WHISPER_MODEL (`service.parse_request` maps it)."""
OPENAI_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
ASR_OUTPUTS = ("txt", "vtt", "srt", "tsv", "json")


class ParamError(InvalidRequest):
    """A request parameter is invalid; `param` names it (OpenAI's error carries it)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message, status_code=400)
        self.param = param


class JobEnded(Exception):
    """The job a synchronous request waited for ended without a transcript."""

    def __init__(self, job: Job) -> None:
        reason = f": {job.error_message}" if job.error_message else ""
        super().__init__(f"job {job.id} ended {job.status.value}{reason}")
        self.job = job


async def finished_document(backends: Backends, job: Job) -> dict[str, Any]:
    """The transcript document of a final job; JobEnded unless it COMPLETED."""
    if job.status is not JobStatus.COMPLETED:
        raise JobEnded(job)
    document = await service.load_result(backends, job)
    if document is None:
        raise JobEnded(job)
    return document


# --- OpenAI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAICall:
    fields: dict[str, str]
    """The upload fields for the service (language, model, task, options, priority)."""
    response_format: str
    task: str
    granularities: tuple[str, ...]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def openai_call(raw: Mapping[str, str], *, task: str) -> OpenAICall:
    """Read an OpenAI form leniently, as real clients send it: `timestamp_granularities[]` or
    `timestamp_granularities`, repeated or comma separated; fields OpenAI has and we do not
    use (`stream` false, `include`, `chunking_strategy`, ...) and unknown ones are ignored."""
    response_format = (raw.get("response_format") or "json").strip()
    if response_format not in OPENAI_FORMATS:
        raise ParamError(
            f"response_format must be one of {', '.join(OPENAI_FORMATS)}, not {response_format!r}",
            "response_format",
        )
    if raw.get("stream", "").strip().lower() in ("true", "1"):
        raise ParamError("streaming is not supported; send stream=false", "stream")
    model = (raw.get("model") or WHISPER_1).strip()
    granularities: list[str] = []
    for name in ("timestamp_granularities[]", "timestamp_granularities"):
        granularities += [part.strip() for part in raw.get(name, "").split(",") if part.strip()]
    for value in granularities:
        if value not in GRANULARITIES:
            raise ParamError(
                f"timestamp_granularities[] takes word and/or segment, not {value!r}",
                "timestamp_granularities[]",
            )
    raw_temperature = (raw.get("temperature") or "0").strip()
    try:
        temperature = float(raw_temperature)
    except ValueError:
        temperature = math.nan
    if not 0 <= temperature <= 1:
        raise ParamError(
            f"temperature must be a number from 0 to 1, not {raw_temperature!r}", "temperature"
        )
    # No language: detected (OpenAI's behaviour), not DEFAULT_LANGUAGE.
    language = (raw.get("language") or "").strip() if task == "transcribe" else ""
    fields = {
        "language": language or "auto",
        "model": model,
        "task": task,
        "word_timestamps": _flag("word" in granularities),
        "temperature": f"{temperature:.6f}".rstrip("0").rstrip(".") or "0",
    }
    if raw.get("prompt"):
        fields["initial_prompt"] = raw["prompt"]
    if raw.get("priority"):
        fields["priority"] = raw["priority"]
    return OpenAICall(
        fields=fields,
        response_format=response_format,
        task=task,
        granularities=tuple(dict.fromkeys(granularities)) or ("segment",),
    )


def render_openai(document: Mapping[str, Any], call: OpenAICall) -> formats.Rendered:
    """The body OpenAI's API would answer for this transcript."""
    text = str(document.get("text") or "").strip()
    duration = float(document.get("duration_seconds") or 0.0)
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if call.response_format == "json":
        body: Any = {"text": text, "usage": usage}
    elif call.response_format == "text":
        return formats.Rendered((text + "\n").encode(), "text/plain; charset=utf-8", "txt")
    elif call.response_format in ("srt", "vtt"):
        rendered = formats.render(document, call.response_format)
        return formats.Rendered(rendered.body, "text/plain; charset=utf-8", rendered.extension)
    else:
        body = json.loads(formats.render(document, "verbose_json").body)
        body["task"] = call.task
        body["text"] = text
        if call.task == "translate":
            body["language"] = "english"  # the language of the output, as OpenAI reports it
        if "word" in call.granularities:
            body.setdefault("words", [])
        else:
            body.pop("words", None)
        if "segment" not in call.granularities:
            body.pop("segments", None)
        body["usage"] = usage
    return formats.Rendered(
        json.dumps(body, ensure_ascii=False).encode(), "application/json", "json"
    )


# --- whisper-asr-webservice ------------------------------------------------------------------


@dataclass(frozen=True)
class AsrCall:
    fields: dict[str, str]
    output: str


def asr_call(
    *,
    task: str,
    language: str | None,
    initial_prompt: str | None,
    vad_filter: bool | None,
    word_timestamps: bool | None,
    output: str,
) -> AsrCall:
    """whisper-asr-webservice v1.9's query parameters as upload fields. Values given are
    honoured; absent ones get our defaults, which differ from that project's in one place:
    VAD is on unless `vad_filter=false` (it defaults to off there)."""
    if task not in ("transcribe", "translate"):
        raise InvalidRequest(f"task must be transcribe or translate, not {task!r}")
    if output not in ASR_OUTPUTS:
        raise InvalidRequest(f"output must be one of {', '.join(ASR_OUTPUTS)}, not {output!r}")
    fields = {"language": language or "auto", "task": task}
    if initial_prompt:
        fields["initial_prompt"] = initial_prompt
    if vad_filter is not None:
        fields["vad_filter"] = _flag(vad_filter)
    if word_timestamps is not None:
        fields["word_timestamps"] = _flag(word_timestamps)
    return AsrCall(fields=fields, output=output)


def render_asr(document: Mapping[str, Any], output: str) -> bytes:
    """The body `/asr` answers: Whisper's writers for txt/vtt/srt/tsv; for json the shape
    v1.9 writes (`{"language", "segments": [faster-whisper Segment fields], "text"}`), with
    the fields we do not keep (tokens, seek) filled as Whisper would leave them empty."""
    if output != "json":
        return formats.render(document, output).body
    verbose = json.loads(formats.render(document, "verbose_json").body)
    stored = document.get("segments") or []
    segments = []
    for index, segment in enumerate(verbose.get("segments") or []):
        raw = stored[index] if index < len(stored) and isinstance(stored[index], dict) else {}
        words = raw.get("words")
        segments.append(
            {
                "id": index + 1,
                "seek": segment["seek"],
                "start": segment["start"],
                "end": segment["end"],
                "text": segment["text"],
                "tokens": segment["tokens"],
                "avg_logprob": segment["avg_logprob"],
                "compression_ratio": segment["compression_ratio"],
                "no_speech_prob": segment["no_speech_prob"],
                "words": words if isinstance(words, list) else None,
                "temperature": segment["temperature"],
            }
        )
    body = {
        "language": str(document.get("language") or ""),
        "segments": segments,
        "text": str(document.get("text") or ""),
    }
    return json.dumps(body, ensure_ascii=False).encode()


def detect_language_body(document: Mapping[str, Any]) -> dict[str, Any]:
    """`/detect-language`'s answer: `{"detected_language": "english", "language_code": "en",
    "confidence": 0.98}`."""
    code = str(document.get("language") or "")
    confidence = document.get("language_probability")
    return {
        "detected_language": LANGUAGES.get(code, code).lower(),
        "language_code": code,
        "confidence": float(confidence) if isinstance(confidence, int | float) else None,
    }
