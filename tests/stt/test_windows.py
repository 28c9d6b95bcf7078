"""The window logic without the model: packing, time mapping, splitting, and the checks."""

from __future__ import annotations

import numpy as np
import pytest

from smap_stt.stt.audio import SAMPLE_RATE
from smap_stt.stt.results import Segment
from smap_stt.stt.windows import Window, _check, _Outcome, _segments, _Word, fixed_windows

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
