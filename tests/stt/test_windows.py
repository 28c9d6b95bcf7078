"""The window logic without the model: packing, time mapping, splitting, and the checks."""

from __future__ import annotations

import faster_whisper.vad
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smap_stt.stt import windows
from smap_stt.stt.audio import SAMPLE_RATE, decode_audio
from smap_stt.stt.results import Segment
from smap_stt.stt.windows import (
    _MIN_FILL,
    _VAD_FRAMES,
    Window,
    _check,
    _Outcome,
    _pack,
    _padded,
    _segments,
    _Word,
    fixed_windows,
)
from tests.stt.conftest import Clip

S = SAMPLE_RATE


def _window(*regions: tuple[float, float], retries: int = 0) -> Window:
    spans = [(round(a * S), round(b * S)) for a, b in regions]
    audio = np.zeros(sum(b - a for a, b in spans), dtype=np.float32)
    return Window(regions=spans, audio=audio, retries=retries)


def test_window_time_maps_back_across_removed_silence() -> None:
    window = _window((1.0, 4.0), (10.0, 12.0))  # 5 s of speech out of 11 s
    assert window.seconds == 5.0 and window.end == 12.0
    assert window.chunk_time(0.5) == 1.5
    assert window.chunk_time(3.0) == 4.0  # the seam, as an end
    assert window.chunk_time(3.0, start=True) == 10.0  # the seam, as a start
    assert window.chunk_time(4.5) == 11.5
    assert window.chunk_time(99.0) == 12.0


def test_slices_and_halves_keep_their_place_in_the_chunk() -> None:
    window = _window((0.0, 6.0), (8.0, 10.0), (20.0, 24.0))  # 12 s, seams at 6 s and 8 s
    first, second = window.halves()
    assert first.regions == [(0, 6 * S)] and second.regions == [(8 * S, 10 * S), (20 * S, 24 * S)]
    assert first.retries == second.retries == 1
    tail = window.slice(7 * S, 12 * S)
    assert tail.regions == [(9 * S, 10 * S), (20 * S, 24 * S)]
    assert tail.chunk_time(0.0, start=True) == 9.0


def _outcome(
    text: str, words: list[_Word], *, logprob: float = -0.2, no_speech: float = 0.01
) -> _Outcome:
    return _Outcome(text=text, words=words, avg_logprob=logprob, no_speech_prob=no_speech)


def _spans(segments: list[Segment]) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.text) for s in segments]


def _words(*spec: tuple[str, float, float]) -> list[_Word]:
    return [_Word(text=text, start=start, end=end) for text, start, end in spec]


def test_segments_end_at_sentences_and_pauses() -> None:
    window = _window((0.0, 20.0))
    words = _words(
        (" Hello", 0.0, 0.4),
        (" there.", 0.4, 0.9),
        (" How", 1.0, 1.2),
        (" are", 1.2, 1.4),
        (" you", 2.6, 2.9),
        (" today", 2.9, 3.3),
    )
    segments = _segments(window, _outcome("Hello there. How are you today", words))
    assert _spans(segments) == [
        (0.0, 0.9, "Hello there."),
        (1.0, 1.4, "How are"),
        (2.6, 3.3, "you today"),
    ]
    assert [w.word for w in segments[0].words] == [" Hello", " there."]
    assert segments[0].avg_logprob == -0.2 and segments[0].no_speech_prob == 0.01


def test_check_keeps_good_text() -> None:
    window = _window((0.0, 3.0))
    segments, redo = _check(
        window, _outcome("Hi all.", _words((" Hi", 0.2, 0.5), (" all.", 0.5, 2.8)))
    )
    assert _spans(segments) == [(0.2, 2.8, "Hi all.")] and redo == []


def test_check_drops_what_the_model_calls_no_speech() -> None:
    window = _window((0.0, 3.0))
    outcome = _outcome(
        "Thank you.", _words((" Thank", 0.0, 0.5), (" you.", 0.5, 1.0)), logprob=-1.5, no_speech=0.9
    )
    assert _check(window, outcome) == ([], [])


@pytest.mark.parametrize(("retries", "halves"), [(0, 2), (2, 0)])
def test_check_splits_a_looping_window_a_bounded_number_of_times(retries: int, halves: int) -> None:
    window = _window((0.0, 10.0), (12.0, 30.0), retries=retries)
    loop = " the end of the" * 40
    segments, redo = _check(window, _outcome(loop, _words((" the", 0.0, 0.2))))
    assert segments == [] and len(redo) == halves


def test_check_decodes_a_missed_tail_again() -> None:
    window = _window((0.0, 20.0))
    outcome = _outcome("Early stop.", _words((" Early", 0.5, 1.0), (" stop.", 1.0, 9.0)))
    segments, redo = _check(window, outcome)
    assert _spans(segments) == [(0.5, 9.0, "Early stop.")]
    assert len(redo) == 1 and redo[0].regions == [(9 * S, 20 * S)] and redo[0].retries == 1


def test_fixed_windows_cover_the_audio_back_to_back_without_vad() -> None:
    audio = np.zeros(65 * S, dtype=np.float32)
    windows = fixed_windows(audio, seconds=30)
    assert [w.regions for w in windows] == [[(0, 30 * S)], [(30 * S, 60 * S)], [(60 * S, 65 * S)]]
    assert sum(len(w.audio) for w in windows) == len(audio)
    assert fixed_windows(audio[:0]) == []


def test_regions_are_padded_like_faster_whisper_and_share_short_pauses() -> None:
    speech = [(2 * S, 5 * S), (5 * S + 2000, 9 * S), (20 * S, 21 * S)]
    regions, pauses = _padded(speech, pad=6400, total=22 * S)
    assert pauses == [2000, 11 * S]
    # a 125 ms pause is split between its two regions; a long one gets 400 ms each side
    assert regions == [
        (2 * S - 6400, 5 * S + 1000),
        (5 * S + 1000, 9 * S + 6400),
        (20 * S - 6400, 21 * S + 6400),
    ]
    assert _padded([(100, 200)], pad=6400, total=300) == ([(0, 300)], [])


def test_a_full_window_is_cut_at_its_longest_pause_not_where_it_overflows() -> None:
    # 5 s regions; the pause after the fifth (25 s) is the longest within the last fifth
    regions = [(i * 6 * S, i * 6 * S + 5 * S) for i in range(12)]
    pauses = [S // 5] * 11
    pauses[4] = S  # sentence end after 25 s of speech
    pauses[2] = 2 * S  # longer, but would leave the window half empty
    assert _pack(regions, pauses, limit=30 * S) == [(0, 5), (5, 11), (11, 12)]


def test_without_a_better_pause_the_window_takes_all_that_fits() -> None:
    regions = [(i * 10 * S, i * 10 * S + 7 * S) for i in range(9)]  # 7 s each
    pauses = [3 * S] * 8
    assert _pack(regions, pauses, limit=30 * S) == [(0, 4), (4, 8), (8, 9)]


@given(
    st.lists(
        st.tuples(st.one_of(st.integers(1, 8 * S), st.integers(1, 40 * S)), st.integers(0, 3 * S)),
        max_size=40,
    )
)
def test_packing_keeps_every_region_once_in_order_and_fills_windows(
    spans: list[tuple[int, int]],
) -> None:
    regions, pauses, at = [], [], 0
    for length, pause in spans:
        regions.append((at, at + length))
        pauses.append(pause)
        at += length + pause
    pauses = pauses[:-1]
    limit = 30 * S
    packed = _pack(regions, pauses, limit)
    assert [k for first, cut in packed for k in range(first, cut)] == list(range(len(regions)))
    for first, cut in packed[:-1]:
        length = sum(end - start for start, end in regions[first:cut])
        following = regions[cut][1] - regions[cut][0]
        # full enough, or nothing more fitted
        assert length >= _MIN_FILL * limit or length + following > limit
    for first, cut in packed:
        length = sum(end - start for start, end in regions[first:cut])
        assert length <= limit or cut == first + 1  # only a lone over-long region overflows


def test_vad_in_bounded_calls_gives_the_librarys_probabilities(speech_75s: Clip) -> None:
    """Real speech, the real Silero model: fed `_VAD_FRAMES` at a time (state and context
    carried over), the probabilities are exactly those of the library's one call, and
    `get_speech_timestamps` is the bounded one. The audio ends in speech that fills the last
    frame's final 64 samples, which the library zeroes (in the array it is given)."""
    speech = decode_audio(speech_75s.path)
    loud = np.flatnonzero(np.abs(speech) > 0.05)
    end = loud[loud > 2 * _VAD_FRAMES * 512 + 16000][0] + 2000  # in speech, after 65 s
    end -= end % 512 - 500  # 500 samples into a frame: padding leaves 52 real ones at its end
    audio = np.pad(speech[:end], (0, 512 - end % 512))
    assert len(audio) // 512 > 2 * _VAD_FRAMES  # at least three calls, the last one partial
    assert np.abs(audio[-64:-12]).max() > 0
    expected = windows._library_vad()(audio.copy())
    got = faster_whisper.vad.get_vad_model()(audio)
    assert isinstance(faster_whisper.vad.get_vad_model(), windows._BoundedVad)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert 0.1 < float((got > 0.5).mean()) < 0.95  # speech and pauses: a real signal
