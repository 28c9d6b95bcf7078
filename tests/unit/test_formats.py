"""The format writers, checked by reading their output back with real parsers (`srt`,
`webvtt-py`, `csv`, `json`) over arbitrary transcripts."""

from __future__ import annotations

import csv
import html
import io
import json
import unicodedata
from typing import Any

import pytest
import srt
import webvtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smap_stt.formats import FORMATS, RENDERED_FORMATS, content_disposition, render

# Text as transcripts (and attackers) have it: any script, plus what breaks subtitle files.
_TRICKY = st.sampled_from(
    ["-->", "\n", "\n\n", "\r\n", "\t", " ", "&", "<b>", "<u>", "&lt;", "1", "\u2028", "\ue000"]
)
_TEXT = st.lists(
    st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=8), _TRICKY),
    max_size=5,
).map("".join)
_TIME = st.floats(min_value=0, max_value=360_000, allow_nan=False)


@st.composite
def _word(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(_TIME)
    return {
        "start": start,
        "end": start + draw(st.floats(0, 10)),
        "word": draw(st.sampled_from(["", " "])) + draw(_TEXT),
        "probability": draw(st.floats(0, 1)),
    }


@st.composite
def _segment(draw: st.DrawFn, words: bool) -> dict[str, Any]:
    start = draw(_TIME)
    segment: dict[str, Any] = {
        "start": start,
        "end": start + draw(st.floats(0, 600)),
        "text": draw(_TEXT),
        "avg_logprob": draw(st.floats(-5, 0)),
        "no_speech_prob": draw(st.floats(0, 1)),
    }
    if words:
        segment["words"] = draw(st.lists(_word(), max_size=6))
    return segment


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    words = draw(st.booleans())
    return {
        "job_id": "j",
        "filename": "a.wav",
        "model": "base",
        "task": "transcribe",
        "language": draw(st.sampled_from(["en", "vi", "zh", "ar", "xx", ""])),
        "language_probability": 0.9,
        "duration_seconds": draw(_TIME),
        "text": draw(_TEXT),
        "segments": draw(st.lists(_segment(words), max_size=6)),
    }


SUBTITLE_OPTIONS = st.fixed_dictionaries(
    {
        "max_line_width": st.one_of(st.none(), st.integers(1, 60)),
        "max_line_count": st.one_of(st.none(), st.integers(1, 4)),
        "highlight_words": st.booleans(),
    }
)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _plain(text: str) -> str:
    """Control characters (tabs and line breaks too) become spaces in every format, and so do
    the two private-use characters the writers mark highlights with."""
    return "".join(
        " " if unicodedata.category(ch) == "Cc" or ch in "\ue000\ue001" else ch for ch in text
    )


def _cleaned(text: str) -> str:
    """What subtitles promise to keep of a text: its words, `-->` shown as `->`."""
    text = _plain(text)
    while "-->" in text:
        text = text.replace("-->", "->")
    return text


def _expected_words(document: dict[str, Any], options: dict[str, Any]) -> str:
    """Every character of the transcript's words, in order, without the spaces (cues may join
    a word to the next when it has no leading space, as Whisper's writer does)."""
    by_words = any(options.values())
    parts: list[str] = []
    for segment in document["segments"]:
        if by_words and segment.get("words"):  # text without aligned words is shown as is
            parts.extend(w["word"] for w in segment["words"])
        else:
            parts.append(segment["text"])
    return _cleaned("".join(_cleaned(" ".join(parts)).split()))


def _expected_times(document: dict[str, Any], options: dict[str, Any]) -> set[int]:
    times = set()
    for segment in document["segments"]:
        if any(options.values()) and segment.get("words"):
            for word in segment["words"]:
                times |= {_ms(word["start"]), _ms(word["end"])}
        elif any(options.values()) and segment["text"].strip():
            # No word times: the segment's span shared out between its words.
            times |= {_ms(segment["start"]), _ms(segment["end"])}
        else:
            times |= {_ms(segment["start"]), _ms(segment["end"])}
    return times


def _cue_words(texts: list[str]) -> str:
    return _cleaned("".join(" ".join(texts).split()))


@PROPERTY
@given(documents(), SUBTITLE_OPTIONS)
def test_srt_reads_back_with_the_same_times_and_words(
    document: dict[str, Any], options: dict[str, Any]
) -> None:
    body = render(document, "srt", **options).body.decode("utf-8")
    cues = list(srt.parse(body))
    assert [cue.index for cue in cues] == list(range(1, len(cues) + 1))
    for cue in cues:
        assert cue.start <= cue.end
    if options["highlight_words"]:  # every word is shown once per word: check the plain cues
        options = {**options, "highlight_words": False}
        cues = list(srt.parse(render(document, "srt", **options).body.decode("utf-8")))
    assert _cue_words([cue.content for cue in cues]) == _expected_words(document, options)
    _check_times(
        [(_ms(c.start.total_seconds()), _ms(c.end.total_seconds())) for c in cues],
        document,
        options,
    )


@PROPERTY
@given(documents(), SUBTITLE_OPTIONS)
def test_vtt_reads_back_with_the_same_times_and_words(
    document: dict[str, Any], options: dict[str, Any]
) -> None:
    body = render(document, "vtt", **options).body.decode("utf-8")
    assert body.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(body)).captions
    for caption in captions:
        assert caption.start_in_seconds <= caption.end_in_seconds
        assert "-->" not in caption.text
    if options["highlight_words"]:
        options = {**options, "highlight_words": False}
        captions = webvtt.from_buffer(
            io.StringIO(render(document, "vtt", **options).body.decode())
        ).captions
    texts = [html.unescape(caption.text) for caption in captions]
    assert _cue_words(texts) == _expected_words(document, options)
    _check_times(
        [(_vtt_ms(c.start), _vtt_ms(c.end)) for c in captions],
        document,
        options,
    )


def _vtt_ms(stamp: str) -> int:
    *hours, minutes, seconds = stamp.split(":")
    whole, millis = seconds.split(".")
    total = (int(hours[0]) if hours else 0) * 3600 + int(minutes) * 60 + int(whole)
    return total * 1000 + int(millis)


def _check_times(
    cues: list[tuple[int, int]], document: dict[str, Any], options: dict[str, Any]
) -> None:
    if any(options.values()) and not all(s.get("words") for s in document["segments"]):
        return  # times of text without word times are interpolated: checked separately
    if not any(options.values()):
        spans = [
            (_ms(s["start"]), max(_ms(s["start"]), _ms(s["end"])))
            for s in document["segments"]
            if _cleaned(s["text"]).split()
        ]
        assert cues == spans
    else:
        allowed = _expected_times(document, options)
        for start, end in cues:
            assert start in allowed
            assert end in allowed or end == start


@PROPERTY
@given(documents())
def test_tsv_has_whispers_header_and_integer_milliseconds(document: dict[str, Any]) -> None:
    body = render(document, "tsv").body.decode("utf-8")
    rows = list(csv.reader(io.StringIO(body, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == ["start", "end", "text"]
    kept = [s for s in document["segments"] if _plain(s["text"]).split()]
    assert len(rows) - 1 == len(kept)
    for row, segment in zip(rows[1:], kept, strict=True):
        assert int(row[0]) == _ms(segment["start"])
        assert int(row[1]) == max(_ms(segment["start"]), _ms(segment["end"]))
        assert row[2].split() == _plain(segment["text"]).split()


@PROPERTY
@given(documents())
def test_txt_is_one_segment_a_line(document: dict[str, Any]) -> None:
    lines = render(document, "txt").body.decode("utf-8").split("\n")
    kept = [_plain(s["text"]).split() for s in document["segments"]]
    kept = [words for words in kept if words]
    assert lines[-1] == ""
    assert [line.split() for line in lines[:-1]] == kept


@PROPERTY
@given(documents())
def test_verbose_json_is_openais_shape(document: dict[str, Any]) -> None:
    body = json.loads(render(document, "verbose_json").body)
    assert set(body) >= {"task", "language", "duration", "text", "segments"}
    for out, segment in zip(body["segments"], document["segments"], strict=True):
        assert set(out) == {
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        }
        assert out["start"] == segment["start"]
        assert out["text"] == segment["text"]
        assert out["avg_logprob"] == segment["avg_logprob"]
    has_words = any("words" in s for s in document["segments"])
    assert ("words" in body) == has_words
    if has_words:
        assert len(body["words"]) == sum(len(s["words"]) for s in document["segments"])


SEED_DOCUMENT = {  # as the worker wrote it before issue 9: segments of start, end, text only
    "job_id": "j",
    "filename": "talk.mp3",
    "model": "base",
    "language": "en",
    "language_probability": None,
    "duration_seconds": 3725.0,
    "text": "Hello world. Second one.",
    "segments": [
        {"start": 0.0, "end": 1.5, "text": " Hello world."},
        {"start": 3723.25, "end": 3725.0, "text": " Second one."},
    ],
}


def test_srt_follows_whispers_layout() -> None:
    body = render(SEED_DOCUMENT, "srt").body.decode()
    assert body == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello world.\n\n"
        "2\n01:02:03,250 --> 01:02:05,000\nSecond one.\n\n"
    )


def test_vtt_follows_whispers_layout() -> None:
    body = render(SEED_DOCUMENT, "vtt").body.decode()
    assert body == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:01.500\nHello world.\n\n"
        "01:02:03.250 --> 01:02:05.000\nSecond one.\n\n"
    )


def test_tsv_and_txt_follow_whisper() -> None:
    assert render(SEED_DOCUMENT, "tsv").body.decode() == (
        "start\tend\ttext\n0\t1500\tHello world.\n3723250\t3725000\tSecond one.\n"
    )
    assert render(SEED_DOCUMENT, "txt").body.decode() == "Hello world.\nSecond one.\n"


WORDS_DOCUMENT = {
    "language": "en",
    "segments": [
        {
            "start": 0.0,
            "end": 3.0,
            "text": " one two three four",
            "words": [
                {"start": 0.0, "end": 0.5, "word": " one", "probability": 0.9},
                {"start": 0.5, "end": 1.0, "word": " two", "probability": 0.9},
                {"start": 1.0, "end": 2.0, "word": " three", "probability": 0.9},
                {"start": 2.0, "end": 3.0, "word": " four", "probability": 0.9},
            ],
        }
    ],
}


def test_line_width_and_count_split_cues_at_words_with_word_times() -> None:
    cues = list(
        srt.parse(render(WORDS_DOCUMENT, "srt", max_line_width=9, max_line_count=1).body.decode())
    )
    assert [cue.content for cue in cues] == ["one two", "three", "four"]
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in cues] == [
        (0.0, 1.0),
        (1.0, 2.0),
        (2.0, 3.0),
    ]
    two_lines = render(WORDS_DOCUMENT, "srt", max_line_width=9, max_line_count=2).body.decode()
    assert [cue.content for cue in srt.parse(two_lines)] == ["one two\nthree", "four"]


def test_highlight_words_underlines_each_word_in_turn() -> None:
    body = render(WORDS_DOCUMENT, "vtt", highlight_words=True).body.decode()
    captions = webvtt.from_buffer(io.StringIO(body)).captions
    assert [c.raw_text for c in captions] == [
        "<u>one</u> two three four",
        "one <u>two</u> three four",
        "one two <u>three</u> four",
        "one two three <u>four</u>",
    ]


def test_old_documents_split_lines_without_word_times() -> None:
    body = render(SEED_DOCUMENT, "srt", max_line_width=6).body.decode()
    assert [cue.content for cue in srt.parse(body)] == ["Hello\nworld.", "Second\none."]


def test_render_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="srt"):
        render(SEED_DOCUMENT, "docx")
    assert set(RENDERED_FORMATS) < set(FORMATS)


@pytest.mark.parametrize(
    ("filename", "extension", "expected"),
    [
        ("talk.mp3", "srt", 'attachment; filename="talk.srt"'),
        ("no_ext", "vtt", 'attachment; filename="no_ext.vtt"'),
        ("a.b.wav", "txt", 'attachment; filename="a.b.txt"'),
        (
            "bài giảng.mp3",
            "srt",
            "attachment; filename=\"b_i gi_ng.srt\"; filename*=UTF-8''b%C3%A0i%20gi%E1%BA%A3ng.srt",
        ),
        (
            'say "hi".wav',
            "srt",
            "attachment; filename=\"say _hi_.srt\"; filename*=UTF-8''say%20%22hi%22.srt",
        ),
    ],
)
def test_content_disposition_names_the_original_stem(
    filename: str, extension: str, expected: str
) -> None:
    assert content_disposition(filename, extension) == expected


def test_markup_said_in_the_audio_stays_text() -> None:
    document = {"segments": [{"start": 0.0, "end": 1.0, "text": "a <u>b</u> &amp; c"}]}
    body = render(document, "vtt").body.decode()
    assert "a &lt;u&gt;b&lt;/u&gt; &amp;amp; c" in body
    caption = next(iter(webvtt.from_buffer(io.StringIO(body))))
    assert html.unescape(caption.text) == "a <u>b</u> &amp; c"
