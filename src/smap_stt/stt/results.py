"""What transcription produces: plain data shared by the engine, the worker and the API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Chunk:
    """A checkpointable piece of a long file: the segments found in [start, end) seconds."""

    index: int
    start: float
    end: float
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        segments = [Segment(**segment) for segment in data.get("segments", [])]
        return cls(
            index=data["index"],
            start=data["start"],
            end=data["end"],
            segments=segments,
            language=data.get("language"),
        )


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    language_probability: float | None
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
