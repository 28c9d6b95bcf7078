"""Transcription: faster-whisper's model over checkpointable chunks, with progress and cancel.

A file is cut into chunks of about WHISPER_CHUNK_SECONDS at pauses (`chunks`); the worker
stores each finished chunk, and a resumed job passes them back as `done_chunks` so they are not
transcribed again. A chunk's speech is decoded as independent, batched windows (`windows`),
which is both what keeps one bad window from derailing the rest and what makes it about twice
as fast as sequential faster-whisper on a CPU. Only one chunk of audio is in memory at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from faster_whisper import WhisperModel

from smap_stt import allocator
from smap_stt.config import Settings
from smap_stt.errors import JobCancelled, ModelCorrupt, ModelNotFound
from smap_stt.stt.audio import probe
from smap_stt.stt.chunks import ChunkAudio, iter_chunks
from smap_stt.stt.local_models import resolve_model
from smap_stt.stt.results import ChunkTranscript, TranscribeOptions, Transcript
from smap_stt.stt.windows import (
    Decoded,
    DecodeOptions,
    Stopped,
    Window,
    decode_windows,
    detect_language,
    fixed_windows,
    speech_windows,
)

__all__ = ["Engine", "EngineOptions"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# on_progress is called at least this often (seconds) while a chunk is being decoded.
_HEARTBEAT = 0.5
# Until a model has been timed, assume it decodes this many seconds per second of audio.
_FIRST_GUESS_RTF = 0.05
# Chunks decoded or queued at once per call.
_AHEAD = 2
# Windows per beam-search batch (each holds ~48 MB while it decodes, base, beam 5): 2 per
# decoder, so a worker's peak no longer follows how many windows a chunk holds; a lone
# decoder takes up to 4 (batches of 1 and 2 would cost it ~8 %), as much as two decoders.
_LONE_DECODER_BATCH = 4
# A decoding engine gives the allocator's free pages back this often (`_release_free_pages`).
RELEASE_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class EngineOptions:
    """What the engine uses of the settings, and only that."""

    models_dir: Path
    """WHISPER_MODELS_DIR."""
    decoders: int = 1
    """Single-threaded CTranslate2 decoders (MAX_CONCURRENT_JOBS × threads per job)."""
    chunk_seconds: float = 120.0
    """WHISPER_CHUNK_SECONDS: audio per checkpointed chunk."""
    beam_size: int = 5
    compute_type: str = "int8"
    allow_download: bool = False
    max_audio_seconds: float | None = None
    """MAX_AUDIO_DURATION_SECONDS: a file that decodes to more is refused (issue 12)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        return cls(
            models_dir=settings.whisper_models_dir,
            decoders=settings.max_concurrent_jobs * settings.threads_per_call,
            chunk_seconds=settings.whisper_chunk_seconds,
            beam_size=settings.whisper_beam_size,
            compute_type=settings.whisper_compute_type,
            allow_download=settings.whisper_allow_download,
            max_audio_seconds=settings.max_audio_duration_seconds,
        )


class Engine:
    """Loads Whisper models once per process and transcribes files with them.

    Thread-safe: the worker runs up to MAX_CONCURRENT_JOBS `transcribe` calls at once, each in
    its own thread. The decoding itself runs on a pool of MAX_CONCURRENT_JOBS × threads per
    call single-threaded CTranslate2 workers shared by all calls: on a CPU, two windows decoded
    side by side on one core each go faster than one window on two cores, and a job running
    alone gets every core while concurrent jobs share them, never more threads than cores.
    """

    def __init__(self, options: EngineOptions) -> None:
        self._options = options
        self._workers = options.decoders
        self._models: dict[str, WhisperModel] = {}
        # The same model once more as one CTranslate2 worker on every core, for a job that runs
        # alone with fewer windows than there are single-threaded decoders (issue 14: a lone
        # 15–30 s file otherwise decodes on one core while the others idle). ~95 MB for base;
        # loaded in the background once the model itself is, so no job waits for it.
        self._solos: dict[str, WhisperModel] = {}
        self._calls = 0  # transcribe calls decoding now
        self._ran = False  # a call ran since free pages were last given back
        self._releaser: threading.Thread | None = None
        self._rtf: dict[str, float] = {}
        self._lock = threading.Lock()
        self._beam_size = options.beam_size
        self._batch = _LONE_DECODER_BATCH if self._workers == 1 else 2
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="whisper")

    def load(self, model: str) -> WhisperModel:
        """The loaded model called `model`, loading it on first use.

        Raises ModelNotFound when it is neither installed nor (if allowed) downloadable, and
        ModelCorrupt when its files do not load.
        """
        with self._lock:
            loaded = self._models.get(model)
            if loaded is None:
                if self._releaser is None:
                    self._releaser = threading.Thread(
                        target=self._release_free_pages, name="whisper-release", daemon=True
                    )
                    self._releaser.start()
                loaded = self._models[model] = self._load(model, threads=1, workers=self._workers)
                if self._workers > 1:  # in the background: jobs need not wait for it
                    threading.Thread(
                        target=self._load_solo, args=(model,), name="whisper-solo", daemon=True
                    ).start()
            return loaded

    def _load_solo(self, model: str) -> None:
        try:
            solo = self._load(model, threads=self._workers, workers=1)
        except Exception:  # the main model loaded: lone jobs just keep to one core
            logger.exception("Could not load a second copy of %s for lone jobs", model)
            return
        with self._lock:
            self._solos[model] = solo

    def _load(self, model: str, *, threads: int, workers: int) -> WhisperModel:
        options = self._options
        path = resolve_model(options.models_dir, model, allow_download=options.allow_download)
        logger.info(
            "Loading Whisper model %s from %s (%d worker(s) of %d thread(s))",
            model,
            path,
            workers,
            threads,
        )
        try:
            # CTranslate2 workers of one model share its weights.
            whisper = WhisperModel(
                path,
                device="cpu",
                compute_type=options.compute_type,
                cpu_threads=threads,
                num_workers=workers,
                download_root=str(options.models_dir / ".hub"),
            )
        except (RuntimeError, ValueError, OSError) as exc:
            if path == model:  # a hub download that did not work out
                raise ModelNotFound(f"Model {model!r} could not be downloaded: {exc}") from exc
            raise ModelCorrupt(f"Model {model!r} in {path} could not be loaded: {exc}") from exc
        allocator.release_free_memory()  # what loading freed: ~95 MB a copy
        return whisper

    def transcribe(
        self,
        path: Path,
        *,
        model: str,
        language: str | None,
        options: TranscribeOptions = TranscribeOptions(),  # noqa: B008  (frozen, shared)
        done_chunks: Sequence[ChunkTranscript] = (),
        on_chunk: Callable[[ChunkTranscript], None] | None = None,
        on_progress: Callable[[float], None] | None = None,
        on_chunks: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Transcript:
        """Transcribe the audio file at `path` with `model`.

        `language` None detects it (on the first speech, then kept for the whole file).
        `options` are the job's own (task, prompt, hotwords, beam, temperature, VAD).
        Chunks in `done_chunks` (an earlier attempt's checkpoints) are not transcribed again;
        every other chunk is passed to `on_chunk` once finished, in order. `on_progress` gets
        the percent of audio done (estimated inside a chunk) at least every second or so, and
        `on_chunks` the chunks finished and expected (the total is an estimate until the end);
        whatever they raise (JobCancelled) stops the work and propagates at once: windows
        still queued are dropped from the decoding pool and the threads stop after the model
        call they are in. Setting `stop` (from any thread) does the same without waiting for
        the next callback; the call then raises JobCancelled. The event is set when the call
        returns, whatever the outcome.
        Raises AudioError for undecodable audio and ModelNotFound for an unknown model.
        """
        self.load(model)
        duration = probe(path, max_seconds=self._options.max_audio_seconds).duration
        job = self._new_job(
            model, language, options, duration=duration, on_progress=on_progress, stop=stop
        )
        done = {chunk.index: chunk for chunk in done_chunks}
        job.progress.report(_finished_prefix(done_chunks))
        counter = _ChunkCounter(
            self._expected_chunks(duration), on_chunks, finished=len(done_chunks)
        )
        # Chunks in flight, oldest first: while one is decoded the next is already queued,
        # so the decoding threads never wait for us; two chunks bound the memory.
        flight: deque[_PendingChunk] = deque()
        current: _PendingChunk | None = None
        with self._call(job, lambda: (current, *flight)):
            for audio in iter_chunks(
                path,
                chunk_seconds=self._options.chunk_seconds,
                fixed_ends={index: chunk.end for index, chunk in done.items()},
                max_seconds=self._options.max_audio_seconds,  # issue 12
                speech=options.vad_filter,
            ):
                finished = done.get(audio.index)
                if finished is not None:
                    if job.language is None and finished.segments and finished.language:
                        job.language = finished.language
                        job.language_probability = finished.language_probability
                    flight.append(_PendingChunk(audio=audio, chunk=finished))
                else:
                    flight.append(self._submit(job, audio))
                while len(flight) > _AHEAD:
                    current = flight.popleft()
                    self._finish(job, current, on_chunk, counter)
            while flight:
                current = flight.popleft()
                self._finish(job, current, on_chunk, counter)
            current = None
        job.progress.finish()
        counter.done(len(job.chunks))
        return Transcript.from_chunks(
            job.chunks,
            language=job.language,
            language_probability=None if language else job.language_probability,
            duration=duration,
        )

    def transcribe_chunk(
        self,
        audio: ChunkAudio,
        *,
        model: str,
        language: str,
        options: TranscribeOptions = TranscribeOptions(),  # noqa: B008  (frozen, shared)
        stop: threading.Event | None = None,
    ) -> ChunkTranscript:
        """One chunk of a file fanned out across workers (worker/fanout.py), decoded exactly as
        `transcribe` decodes a chunk, on the same decoders. Setting `stop` ends the work after
        the model calls running; the call then raises JobCancelled."""
        job = self._new_job(model, language, options, duration=audio.end_seconds, stop=stop)
        pending: _PendingChunk | None = None
        with self._call(job, lambda: (pending,)):
            pending = self._submit(job, audio)
            chunk = self._decoded(job, pending)
        return chunk

    @contextlib.contextmanager
    def _call(
        self, job: _Job, pending: Callable[[], Iterable[_PendingChunk | None]]
    ) -> Iterator[None]:
        """One call's bookkeeping, shared by `transcribe` and `transcribe_chunk`: counted while
        it runs (the solo decoder's rule), Stopped raised as JobCancelled, and, stopped or
        failed, nothing of it left to keep the decoding threads busy (`pending`: its chunks
        still queued or decoding, read when the call ends)."""
        with self._lock:
            self._calls += 1
        try:
            yield
        except Stopped:
            raise JobCancelled("the transcription was stopped") from None
        finally:
            with self._lock:
                self._calls -= 1
                self._ran = True  # what it freed goes back at the next tick
            job.stop.set()
            for chunk in pending():
                for future in chunk.futures if chunk is not None else ():
                    future.cancel()

    def _release_free_pages(self) -> None:
        """Every RELEASE_EVERY_SECONDS while calls run (and once after), give back the pages
        the allocator holds free.

        Decoding allocates and frees working buffers of tens of MB (the encoder's attention
        over a 30 s window is ~70 MB a window), and tcmalloc keeps what is freed: a worker
        that had finished the 10 minute clip rested at ~770 MB, ~380 MB with this (issue 14).
        It does not lower the peak while decoding (releasing every 5 s did not either: the
        free pages the peak holds are fragmentation within seconds, docs/PERFORMANCE.md).
        Released at every free they would be faulted in again at once
        (TCMALLOC_AGGRESSIVE_DECOMMIT: a 10 minute file in 36 s instead of 20 s); every 30 s
        the cost did not show in the benchmarks."""
        while True:
            time.sleep(RELEASE_EVERY_SECONDS)
            with self._lock:
                ran, self._ran = self._ran or self._calls > 0, False
            if ran:
                allocator.release_free_memory()

    def detect_language(
        self, audio: ChunkAudio, *, model: str, vad_filter: bool = True
    ) -> tuple[str | None, float | None]:
        """The language of the first speech in `audio` (None: no speech in it), as
        `transcribe` detects it, so that every chunk of a fanned-out file uses the same one."""
        job = self._new_job(model, None, TranscribeOptions(vad_filter=vad_filter), duration=0)
        self._detect(job, self._windows(job, audio), audio)
        return job.language, job.language_probability

    def _new_job(
        self,
        model: str,
        language: str | None,
        options: TranscribeOptions,
        *,
        duration: float,
        on_progress: Callable[[float], None] | None = None,
        stop: threading.Event | None = None,
    ) -> _Job:
        return _Job(
            model=model,
            whisper=self.load(model),
            language=language,
            progress=_Progress(duration, on_progress),
            options=DecodeOptions(
                beam_size=options.beam_size or self._beam_size,
                batch_size=self._batch,
                task=options.task,
                initial_prompt=options.initial_prompt,
                hotwords=options.hotwords,
                temperature=options.temperature,
            ),
            vad_filter=options.vad_filter,
            stop=stop,
        )

    def _expected_chunks(self, duration: float) -> int:
        """How many chunks `iter_chunks` will probably make of `duration` seconds."""
        return max(1, round(duration / self._options.chunk_seconds))

    def _submit(self, job: _Job, audio: ChunkAudio) -> _PendingChunk:
        """Queue the decoding of a chunk's speech, split between the decoding threads."""
        windows = self._windows(job, audio)
        self._detect(job, windows, audio)
        whisper, groups = job.whisper, min(len(windows), self._workers)
        solo = self._solos.get(job.model)
        # Only a file of one chunk: chunks of a longer one are decoded two at a time anyway.
        one_chunk = job.progress.duration < self._options.chunk_seconds
        if solo is not None and one_chunk and len(windows) < self._workers and self._calls == 1:
            whisper, groups = solo, 1  # alone with few windows: all cores on them
        futures = [
            self._pool.submit(
                decode_windows,
                whisper,
                windows[first:last],
                language=job.language or "en",
                options=job.options,
                stop=job.stop,
            )
            for first, last in split_windows(len(windows), groups, job.options.batch_size)
        ]
        job.progress.report(audio.start_seconds)  # a sign of life between heartbeats
        return _PendingChunk(audio=audio, futures=futures, started=time.monotonic())

    def _windows(self, job: _Job, audio: ChunkAudio) -> list[Window]:
        seconds = job.options.window_seconds
        if job.vad_filter and audio.windows is not None:  # found where the chunk was cut
            return audio.windows
        if job.vad_filter:
            return speech_windows(audio.audio, seconds=seconds)
        return fixed_windows(audio.audio, seconds=seconds)

    def _detect(self, job: _Job, windows: list[Window], audio: ChunkAudio) -> None:
        """Set the job's language from the first window, if it has none yet."""
        if not windows or job.language is not None:
            return
        if job.whisper.model.is_multilingual:
            future = self._pool.submit(detect_language, job.whisper, windows[0])
            job.language, job.language_probability = self._wait(job, [future], audio)[0]
        else:
            job.language, job.language_probability = "en", 1.0

    def _decoded(self, job: _Job, pending: _PendingChunk) -> ChunkTranscript:
        """The transcript of a chunk queued by `_submit`, once its windows are decoded."""
        audio = pending.audio
        segments = [
            segment.shifted(audio.start_seconds)
            for group in self._wait(job, pending.futures, audio)
            for decoded in group
            for segment in decoded.segments
        ]
        self._learn_speed(job.model, time.monotonic() - pending.started, audio)
        return ChunkTranscript(
            index=audio.index,
            start=audio.start_seconds,
            end=audio.end_seconds,
            segments=segments,
            language=job.language,
            language_probability=job.language_probability,
        )

    def _finish(
        self,
        job: _Job,
        pending: _PendingChunk,
        on_chunk: Callable[[ChunkTranscript], None] | None,
        counter: _ChunkCounter,
    ) -> None:
        audio, chunk = pending.audio, pending.chunk
        if chunk is None:
            chunk = self._decoded(job, pending)
            if on_chunk is not None:
                on_chunk(chunk)
            counter.finished_one()
        job.chunks.append(chunk)
        job.progress.report(audio.end_seconds)

    def _wait(self, job: _Job, futures: Sequence[Future[T]], audio: ChunkAudio) -> list[T]:
        """The futures' results, in order; meanwhile, progress through `audio` estimated from
        the model's measured speed, reported every `_HEARTBEAT` seconds."""
        started = time.monotonic()
        seconds = audio.end_seconds - audio.start_seconds
        expected = max(0.5, seconds * self._rtf.get(job.model, _FIRST_GUESS_RTF))
        while True:
            finished, _ = wait(futures, timeout=_HEARTBEAT)
            if len(finished) == len(futures):
                return [future.result() for future in futures]
            share = min(0.95, (time.monotonic() - started) / expected)
            job.progress.report(audio.start_seconds + share * seconds)

    def _learn_speed(self, model: str, elapsed: float, audio: ChunkAudio) -> None:
        seconds = audio.end_seconds - audio.start_seconds
        if seconds >= 5:
            previous = self._rtf.get(model)
            rtf = elapsed / seconds
            self._rtf[model] = rtf if previous is None else 0.5 * (previous + rtf)


@dataclass
class _PendingChunk:
    """A chunk queued for decoding (`futures`, one per group of windows) or already
    transcribed by an earlier attempt (`chunk`)."""

    audio: ChunkAudio
    futures: list[Future[list[Decoded]]] = field(default_factory=list)
    chunk: ChunkTranscript | None = None
    started: float = 0.0


class _Job:
    """What one transcribe call works with and accumulates."""

    def __init__(
        self,
        *,
        model: str,
        whisper: WhisperModel,
        language: str | None,
        progress: _Progress,
        options: DecodeOptions,
        vad_filter: bool,
        stop: threading.Event | None,
    ) -> None:
        self.model = model
        self.whisper = whisper
        self.language = language
        self.language_probability: float | None = None
        self.progress = progress
        self.options = options
        self.vad_filter = vad_filter
        self.chunks: list[ChunkTranscript] = []
        # Set by the caller, or when the call ends for any reason: its windows still decoding
        # raise Stopped before their next model call.
        self.stop = stop if stop is not None else threading.Event()


class _ChunkCounter:
    """Chunks finished and expected, for clients that show progress by chunks."""

    def __init__(
        self, expected: int, report: Callable[[int, int], None] | None, *, finished: int
    ) -> None:
        self._expected, self._report, self._finished = expected, report, finished
        self._call()

    def finished_one(self) -> None:
        self._finished += 1
        self._call()

    def done(self, total: int) -> None:
        self._finished = self._expected = total
        self._call(final=True)

    def _call(self, *, final: bool = False) -> None:
        if not final:  # more chunks than expected: never "all done" while one is running
            self._expected = max(self._expected, self._finished + 1)
        if self._report is not None:
            self._report(self._finished, self._expected)


def split_windows(count: int, groups: int, batch: int) -> list[tuple[int, int]]:
    """[first, last) ranges of `count` windows, in order: `groups` of them (one per decoder;
    fewer if there are fewer windows), more if needed so that none is longer than `batch`,
    their lengths at most one apart. They are queued for whichever decoder is free first:
    with 2 decoders and batches of 2, 5 windows are 2 + 2 + 1, not 3 + 2 (a batch's memory
    grows with each window in it)."""
    if count <= 0:
        return []
    groups = max(1, min(groups, count), -(-count // max(1, batch)))
    size, longer = divmod(count, groups)
    ranges, first = [], 0
    for group in range(groups):
        last = first + size + (group < longer)
        ranges.append((first, last))
        first = last
    return ranges


def _finished_prefix(done_chunks: Sequence[ChunkTranscript]) -> float:
    """Seconds from the file start covered by consecutive finished chunks 0, 1, 2..."""
    by_index = {chunk.index: chunk for chunk in done_chunks}
    end, index = 0.0, 0
    while index in by_index:
        end, index = by_index[index].end, index + 1
    return end


class _Progress:
    """Progress of one transcribe call: percent of the audio, never going backwards."""

    def __init__(self, duration: float, on_progress: Callable[[float], None] | None) -> None:
        self.duration = duration
        self._on_progress = on_progress
        self._percent = 0.0

    def report(self, seconds: float) -> None:
        """Audio up to `seconds` is done; stays below 100 % until `finish` (durations lie)."""
        percent = 99.9 if self.duration <= 0 else min(99.9, 100.0 * seconds / self.duration)
        self._call(percent)

    def finish(self) -> None:
        self._call(100.0)

    def _call(self, percent: float) -> None:
        self._percent = max(self._percent, round(percent, 1))
        if self._on_progress is not None:
            self._on_progress(self._percent)
