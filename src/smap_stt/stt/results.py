"""What transcription produces: plain data shared by the engine, the worker and the API.

The vocabulary: a file is cut into *chunks* (minutes of audio, checkpointed one by one); the
samples of a chunk are a `ChunkAudio` (stt/chunks.py), what was said in it a `ChunkTranscript`
(here). Inside a chunk, speech is decoded as *windows* of at most 30 s (`Window`, stt/windows.py),
each of which yields `Segment`s made of `Word`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ChunkTranscript", "Segment", "TranscribeOptions", "Transcript", "Word"]


@dataclass
class Word:
    """A word with its time (seconds from the file start) and the model's confidence in it.
    `word` keeps its leading space, as Whisper writes it."""

    start: float
    end: float
    word: str
    probability: float = 0.0


@dataclass
class Segment:
    """A stretch of speech, a sentence or so. Scores are those of the window it came from
    (Whisper's own `avg_logprob` and `no_speech_prob`); None in checkpoints written before
    they were kept."""

    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: list[Word] = field(default_factory=list)

    def shifted(self, seconds: float) -> Segment:
        """The same segment with its times (and its words') moved by `seconds`, to 1 ms."""
        return Segment(
            start=round(self.start + seconds, 3),
            end=round(self.end + seconds, 3),
            text=self.text,
            avg_logprob=self.avg_logprob,
            no_speech_prob=self.no_speech_prob,
            words=[
                Word(
                    start=round(w.start + seconds, 3),
                    end=round(w.end + seconds, 3),
                    word=w.word,
                    probability=w.probability,
                )
                for w in self.words
            ],
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        return cls(
            start=data["start"],
            end=data["end"],
            text=data["text"],
            avg_logprob=data.get("avg_logprob"),
            no_speech_prob=data.get("no_speech_prob"),
            words=[Word(**word) for word in data.get("words") or ()],
        )


@dataclass
class ChunkTranscript:
    """What was said in chunk `index`, [start, end) seconds of the file: the unit checkpointed
    in the job store, so a resumed job does not transcribe it again."""

    index: int
    start: float
    end: float
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    language_probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkTranscript:
        return cls(
            index=data["index"],
            start=data["start"],
            end=data["end"],
            segments=[Segment.from_dict(segment) for segment in data.get("segments", [])],
            language=data.get("language"),
            language_probability=data.get("language_probability"),
        )


@dataclass(frozen=True)
class TranscribeOptions:
    """What a job asked for beyond its language and model (the upload's form fields)."""

    task: str = "transcribe"
    """`transcribe`, or `translate` into English."""
    initial_prompt: str | None = None
    """Text given to every window as if it had been said before it: steers spelling and style."""
    hotwords: str | None = None
    """Words to favour, given to every window the way faster-whisper gives them."""
    beam_size: int | None = None
    """Beam width (None: WHISPER_BEAM_SIZE)."""
    temperature: float = 0.0
    """0: beam search; above 0: sampling at that temperature."""
    vad_filter: bool = True
    """False: decode fixed 30 s windows, silence included, instead of the speech VAD finds."""


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    language_probability: float | None
    duration: float
    chunks: int = 0
    """How many chunks the file was cut into."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_chunks(
        cls,
        chunks: list[ChunkTranscript],
        *,
        language: str | None,
        language_probability: float | None,
        duration: float,
    ) -> Transcript:
        """The whole file's transcript from its chunks, in index order."""
        segments = [segment for chunk in chunks for segment in chunk.segments]
        return cls(
            text=" ".join(segment.text for segment in segments),
            segments=segments,
            language=language or "",
            language_probability=language_probability,
            duration=max(duration, chunks[-1].end) if chunks else duration,
            chunks=len(chunks),
        )
