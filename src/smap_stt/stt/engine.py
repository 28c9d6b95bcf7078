"""Transcription: faster-whisper over checkpointable chunks, with progress and cancellation.

A file is cut into chunks of about WHISPER_CHUNK_SECONDS at pauses (see `chunks`); the worker
stores each finished chunk, and a resumed job passes them back as `done_chunks` so they are not
transcribed again. Inside a chunk, Silero VAD (shipped with faster-whisper, runs offline) keeps
only speech, and each window is decoded without conditioning on the previous window's text, so
one bad window cannot derail what follows (DESIGN §5).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from faster_whisper import WhisperModel

from smap_stt.config import Settings
from smap_stt.errors import ModelCorrupt, ModelNotFound
from smap_stt.stt.audio import probe
from smap_stt.stt.chunks import AudioChunk, iter_chunks
from smap_stt.stt.models import resolve_model
from smap_stt.stt.results import Chunk, Segment, Transcript

__all__ = ["Engine"]

logger = logging.getLogger(__name__)


class Engine:
    """Loads Whisper models once per process and transcribes files with them.

    Thread-safe: the worker runs several `transcribe` calls at once, each in its own thread.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, WhisperModel] = {}
        self._lock = threading.Lock()

    def load(self, model: str) -> WhisperModel:
        """The loaded model called `model`, loading it on first use.

        Raises ModelNotFound when it is neither installed nor (if allowed) downloadable, and
        ModelCorrupt when its files do not load.
        """
        with self._lock:
            loaded = self._models.get(model)
            if loaded is None:
                loaded = self._models[model] = self._load(model)
            return loaded

    def _load(self, model: str) -> WhisperModel:
        settings = self._settings
        path = resolve_model(
            settings.whisper_models_dir, model, allow_download=settings.whisper_allow_download
        )
        logger.info("Loading Whisper model %s from %s", model, path)
        try:
            return WhisperModel(
                path,
                device="cpu",
                compute_type=settings.whisper_compute_type,
                cpu_threads=settings.threads_per_call,
                download_root=str(settings.whisper_models_dir / ".hub"),
            )
        except (RuntimeError, ValueError, OSError) as exc:
            if path == model:  # a hub download that did not work out
                raise ModelNotFound(f"Model {model!r} could not be downloaded: {exc}") from exc
            raise ModelCorrupt(f"Model {model!r} in {path} could not be loaded: {exc}") from exc

    def transcribe(
        self,
        path: Path,
        *,
        model: str,
        language: str | None,
        done_chunks: Sequence[Chunk] = (),
        on_chunk: Callable[[Chunk], None] | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Transcript:
        """Transcribe the audio file at `path` with `model`.

        `language` None detects it (on the first chunk with speech, then kept for the rest).
        Chunks in `done_chunks` (an earlier attempt's checkpoints) are not transcribed again;
        every other chunk is passed to `on_chunk` once finished. `on_progress` gets the percent
        of audio done, often; whatever it raises (JobCancelled) stops the work and propagates.
        Raises AudioError for undecodable audio and ModelNotFound for an unknown model.
        """
        whisper = self.load(model)
        requested = language
        duration = probe(path).duration
        run = _Run(duration=duration, on_progress=on_progress)
        done = {chunk.index: chunk for chunk in done_chunks}
        detected_probability: float | None = None
        chunks: list[Chunk] = []
        run.report(_finished_prefix(done_chunks))
        for audio in iter_chunks(
            path,
            chunk_seconds=self._settings.whisper_chunk_seconds,
            fixed_ends={index: chunk.end for index, chunk in done.items()},
        ):
            finished = done.get(audio.index)
            if finished is None:
                finished, probability = self._transcribe_chunk(
                    whisper, audio, language=language, run=run
                )
                if language is None and finished.segments:
                    language, detected_probability = finished.language, probability
                if on_chunk is not None:
                    on_chunk(finished)
            elif language is None and finished.segments and finished.language:
                language = finished.language
            chunks.append(finished)
            run.report(audio.end_seconds)
        duration = max(duration, chunks[-1].end) if chunks else duration
        segments = [segment for chunk in chunks for segment in chunk.segments]
        run.finish()
        return Transcript(
            text=" ".join(segment.text for segment in segments),
            segments=segments,
            language=language or "",
            language_probability=1.0 if requested else detected_probability,
            duration=duration,
        )

    def _transcribe_chunk(
        self, whisper: WhisperModel, audio: AudioChunk, *, language: str | None, run: _Run
    ) -> tuple[Chunk, float | None]:
        settings = self._settings
        offset = audio.start_seconds
        pieces, info = whisper.transcribe(
            audio.audio,
            language=language,
            beam_size=settings.whisper_beam_size,
            vad_filter=True,
            condition_on_previous_text=False,
        )
        segments: list[Segment] = []
        for piece in pieces:
            text = piece.text.strip()
            if text:
                segments.append(
                    Segment(start=round(offset + piece.start, 3),
                            end=round(offset + piece.end, 3), text=text)
                )
            run.report(offset + piece.end)
        chunk = Chunk(
            index=audio.index,
            start=audio.start_seconds,
            end=audio.end_seconds,
            segments=segments,
            language=info.language,
        )
        return chunk, (info.language_probability if language is None else None)


def _finished_prefix(done_chunks: Sequence[Chunk]) -> float:
    """Seconds from the file start covered by consecutive finished chunks 0, 1, 2..."""
    by_index = {chunk.index: chunk for chunk in done_chunks}
    end, index = 0.0, 0
    while index in by_index:
        end, index = by_index[index].end, index + 1
    return end


class _Run:
    """Progress bookkeeping of one transcribe call: percent of audio, never going backwards."""

    def __init__(self, *, duration: float, on_progress: Callable[[float], None] | None) -> None:
        self._duration = duration
        self._on_progress = on_progress
        self._percent = 0.0

    def report(self, seconds: float) -> None:
        """Audio up to `seconds` is done; below 100 % until `finish` (the duration may lie)."""
        if self._duration > 0:
            self._call(min(99.9, 100.0 * seconds / self._duration))

    def finish(self) -> None:
        self._call(100.0)

    def _call(self, percent: float) -> None:
        self._percent = max(self._percent, round(percent, 1))
        if self._on_progress is not None:
            self._on_progress(self._percent)
