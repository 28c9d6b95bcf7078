"""One stored transcript, many renderings: txt, SRT, WebVTT, TSV and OpenAI's verbose JSON.

Pure functions from the transcript document the worker stores (`results/<job_id>.json`) to
bytes; nothing here transcribes, reads storage or knows about HTTP. The rules follow openai/
whisper's writers (`whisper/utils.py`): SRT cues numbered from 1 with `HH:MM:SS,mmm`, WebVTT
with its header and `.` milliseconds (hours only when needed), TSV in integer milliseconds,
txt one segment a line; `max_line_width` / `max_line_count` / `highlight_words` split and mark
cues at word boundaries exactly as Whisper's `SubtitlesWriter` does. Where Whisper writes a file
a parser cannot read back (a blank line or `-->` inside a cue, a tab inside a TSV field), the
text is cleaned so every file parses and keeps its words.

Documents written before word timestamps existed have segments of only start, end and text;
they render the same way (lines are split at spaces, with times spread over the segment).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from smap_stt.stt.languages import LANGUAGES

__all__ = [
    "FORMATS",
    "RENDERED_FORMATS",
    "Rendered",
    "Word",
    "content_disposition",
    "render",
    "segments_of",
]

FORMATS = ("json", "verbose_json", "txt", "srt", "vtt", "tsv")
"""Every `format=` a client may ask for; `json` (the seed's result shape) is built by the API."""
RENDERED_FORMATS = FORMATS[1:]
"""The formats `render` produces."""

_MEDIA_TYPES = {
    "verbose_json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}
_EXTENSIONS = {"verbose_json": "json", "txt": "txt", "srt": "srt", "vtt": "vtt", "tsv": "tsv"}

# C0/C1 controls except the line breaks that str.splitlines() knows (\n \r \x0b \x0c \x1c-\x1e
# \x85), which are handled as line breaks.
_CONTROLS = re.compile("[\x00-\x09\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\ue000\ue001]")
# Where a highlighted word starts and ends until the cue is written (private-use characters,
# removed from the transcript's own text above): a literal "<u>" said in the audio stays text.
_U_OPEN, _U_CLOSE = "\ue000", "\ue001"
_CONTROLS_BUT_MARKS = re.compile("[\x00-\x09\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")

# Whisper starts a new cue after a pause this long (seconds) when cues may span segments.
_LONG_PAUSE = 3.0


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    extension: str


@dataclass(frozen=True)
class Word:
    """A timed word as Whisper keeps it: its text carries its leading space."""

    start: float
    end: float
    word: str


@dataclass(frozen=True)
class _Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] | None  # None: the document has no word times for it
    raw: Mapping[str, Any]


def render(
    document: Mapping[str, Any],
    fmt: str,
    *,
    max_line_width: int | None = None,
    max_line_count: int | None = None,
    highlight_words: bool = False,
) -> Rendered:
    """`document` rendered as `fmt` (one of RENDERED_FORMATS); ValueError for any other.

    The subtitle options apply to srt and vtt only, as in Whisper.
    """
    segments = segments_of(document)
    if fmt == "txt":
        body = "".join(f"{line}\n" for s in segments if (line := _one_line(s.text)))
    elif fmt in ("srt", "vtt"):
        cues = _cues(
            segments,
            max_line_width=max_line_width,
            max_line_count=max_line_count,
            highlight_words=highlight_words,
        )
        body = _srt(cues) if fmt == "srt" else _vtt(cues)
    elif fmt == "tsv":
        rows = ["start\tend\ttext\n"]
        rows += [
            f"{_ms(s.start)}\t{_ms(s.end)}\t{_one_line(s.text)}\n"
            for s in segments
            if _one_line(s.text)
        ]
        body = "".join(rows)
    elif fmt == "verbose_json":
        body = json.dumps(_verbose_json(document, segments), ensure_ascii=False)
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return Rendered(body.encode("utf-8"), _MEDIA_TYPES[fmt], _EXTENSIONS[fmt])


def segments_of(document: Mapping[str, Any]) -> list[_Segment]:
    """The document's segments with clean times (finite, ≥ 0, end ≥ start), in stored order."""
    out: list[_Segment] = []
    for raw in document.get("segments") or ():
        start = _seconds(raw.get("start"))
        end = max(start, _seconds(raw.get("end")))
        words: tuple[Word, ...] | None = None
        if isinstance(raw.get("words"), list):
            timed = []
            for item in raw["words"]:
                word_start = _seconds(item.get("start"))
                text = str(item.get("word") or "")
                timed.append(Word(word_start, max(word_start, _seconds(item.get("end"))), text))
            words = tuple(timed)
        out.append(_Segment(start, end, str(raw.get("text") or ""), words, raw))
    return out


def content_disposition(filename: str, extension: str, *, inline: bool = False) -> str:
    """`attachment; filename=...` naming `<stem of filename>.<extension>`; a name that is not
    plain ASCII also goes in RFC 5987's `filename*`, with an ASCII fallback beside it."""
    stem = filename.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    name = f"{stem or 'transcript'}.{extension}"
    kind = "inline" if inline else "attachment"
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%;' else "_" for ch in name)
    if fallback == name:
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# --- subtitles -----------------------------------------------------------------------------


def _cues(
    segments: Sequence[_Segment],
    *,
    max_line_width: int | None,
    max_line_count: int | None,
    highlight_words: bool,
) -> list[tuple[float, float, str]]:
    """(start, end, text) of every cue, following Whisper's SubtitlesWriter.iterate_result."""
    if max_line_width is None and max_line_count is None and not highlight_words:
        # One cue per segment, as Whisper writes a transcript without word options.
        cues = [(s.start, s.end, _cue_text(s.text)) for s in segments]
        return [cue for cue in cues if cue[2]]
    cues = []
    for subtitle in _subtitles(segments, max_line_width, max_line_count):
        text = "".join(word.word for word in subtitle)
        if not highlight_words:
            cues.append((subtitle[0].start, subtitle[-1].end, text))
            continue
        last = subtitle[0].start
        for i, this in enumerate(subtitle):
            if this.start > last:  # Whisper: the plain text in the gap before a word
                cues.append((last, this.start, text))
            marked = "".join(
                _underline(w.word) if j == i else w.word for j, w in enumerate(subtitle)
            )
            cues.append((this.start, this.end, marked))
            last = this.end
    # The words' text was cleaned of stray markers (_timed_words), so the highlights are ours.
    return [
        (start, max(start, end), c)
        for start, end, text in cues
        if (c := _cue_text(text, keep_marks=True))
    ]


def _subtitles(
    segments: Sequence[_Segment], max_line_width: int | None, max_line_count: int | None
) -> Iterator[list[Word]]:
    """Words grouped into cues, a newline before each word that starts a new line: Whisper's
    `iterate_subtitles` (cues follow segments unless both the width and the count are set)."""
    preserve_segments = max_line_count is None or max_line_width is None
    width = max_line_width or 1000
    line_len, line_count = 0, 1
    subtitle: list[Word] = []
    last = segments[0].start if segments else 0.0
    for segment in segments:
        for i, original in enumerate(_timed_words(segment)):
            word = original.word
            long_pause = not preserve_segments and original.start - last > _LONG_PAUSE
            has_room = line_len + len(word) <= width
            seg_break = i == 0 and bool(subtitle) and preserve_segments
            if line_len > 0 and has_room and not long_pause and not seg_break:
                line_len += len(word)
            else:
                word = word.strip()
                if (
                    subtitle
                    and max_line_count is not None
                    and (long_pause or line_count >= max_line_count)
                ) or seg_break:
                    yield subtitle
                    subtitle, line_count = [], 1
                elif line_len > 0:
                    line_count += 1
                    word = "\n" + word
                line_len = len(word.strip())
            subtitle.append(Word(original.start, original.end, word))
            last = original.start
    if subtitle:
        yield subtitle


def _timed_words(segment: _Segment) -> list[Word]:
    """The segment's words with their times; without stored word times, its text split at
    spaces with the segment's time shared out by length."""
    if segment.words:
        # A word's own text never breaks a line or a cue: newlines inside it become spaces.
        return [Word(w.start, w.end, _spaces(w.word)) for w in segment.words if _one_line(w.word)]
    parts = _spaces(segment.text).split()
    total = sum(len(part) for part in parts)
    words, passed = [], 0
    span = segment.end - segment.start
    for part in parts:
        start = segment.start + span * passed / total
        passed += len(part)
        words.append(Word(start, segment.start + span * passed / total, " " + part))
    return words


def _underline(word: str) -> str:
    return re.sub(r"^(\s*)(.*)$", rf"\1{_U_OPEN}\2{_U_CLOSE}", word, flags=re.DOTALL)


def _cue_text(text: str, *, keep_marks: bool = False) -> str:
    """Cue text a parser reads back whole: no blank lines (they end a cue), no `-->` (it
    starts one), no spaces at line ends."""
    text = _CONTROLS_BUT_MARKS.sub(" ", text) if keep_marks else _no_controls(text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    cleaned = "\n".join(line for line in lines if line)
    while "-->" in cleaned:
        cleaned = cleaned.replace("-->", "->")
    return cleaned


def _srt(cues: Sequence[tuple[float, float, str]]) -> str:
    return "".join(
        f"{n}\n{_timestamp(start, ',', hours=True)} --> {_timestamp(end, ',', hours=True)}\n"
        f"{_markup(text)}\n\n"
        for n, (start, end, text) in enumerate(cues, start=1)
    )


def _vtt(cues: Sequence[tuple[float, float, str]]) -> str:
    parts = ["WEBVTT\n\n"]
    parts += [
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{_vtt_escape(text)}\n\n"
        for start, end, text in cues
    ]
    return "".join(parts)


def _vtt_escape(text: str) -> str:
    """`&` and `<` start markup in WebVTT cue text: the transcript's are escaped, only the
    highlights are markup."""
    return _markup(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _markup(text: str) -> str:
    return text.replace(_U_OPEN, "<u>").replace(_U_CLOSE, "</u>")


def _timestamp(seconds: float, decimal_marker: str, *, hours: bool = False) -> str:
    """Whisper's format_timestamp: [HH:]MM:SS<marker>mmm, hours shown when asked or > 0."""
    milliseconds = _ms(seconds)
    h, milliseconds = divmod(milliseconds, 3_600_000)
    m, milliseconds = divmod(milliseconds, 60_000)
    s, milliseconds = divmod(milliseconds, 1_000)
    prefix = f"{h:02d}:" if hours or h > 0 else ""
    return f"{prefix}{m:02d}:{s:02d}{decimal_marker}{milliseconds:03d}"


# --- plain helpers -------------------------------------------------------------------------


def _seconds(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if 0.0 <= number < 1e9 else 0.0  # also drops NaN and infinities


def _ms(seconds: float) -> int:
    return round(1000 * seconds)


def _no_controls(text: str) -> str:
    """Control characters (never meaningful in a transcript, and our highlight markers) as
    spaces; line breaks kept."""
    return _CONTROLS.sub(" ", text)


def _spaces(text: str) -> str:
    """Every run of whitespace or control characters (line breaks too) as one space."""
    return re.sub(r"\s+", " ", _CONTROLS.sub(" ", text))


def _one_line(text: str) -> str:
    return " ".join(_no_controls(text).split())


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def _verbose_json(document: Mapping[str, Any], segments: Sequence[_Segment]) -> dict[str, Any]:
    """OpenAI's `verbose_json` transcription object."""
    temperature = float(document.get("temperature") or 0.0)
    out_segments = []
    words: list[dict[str, Any]] = []
    for index, segment in enumerate(segments):
        raw = segment.raw
        out_segments.append(
            {
                "id": raw.get("id", index),
                "seek": round(100 * segment.start),  # in 10 ms mel frames, as Whisper counts
                "start": segment.start,
                "end": segment.end,
                "text": segment.text,
                "tokens": list(raw.get("tokens") or []),
                "temperature": float(raw.get("temperature", temperature)),
                "avg_logprob": float(raw.get("avg_logprob") or 0.0),
                "compression_ratio": _compression_ratio(segment.text),
                "no_speech_prob": float(raw.get("no_speech_prob") or 0.0),
            }
        )
        for word in segment.words or ():
            words.append({"word": word.word.strip(), "start": word.start, "end": word.end})
    language = str(document.get("language") or "")
    body: dict[str, Any] = {
        "task": str(document.get("task") or "transcribe"),
        "language": LANGUAGES.get(language, language).lower(),  # OpenAI: "english"
        "duration": _seconds(document.get("duration_seconds")),
        "text": str(document.get("text") or ""),
        "segments": out_segments,
    }
    if any(segment.words is not None for segment in segments):
        body["words"] = words
    return body
