"""Long-audio benchmark: the engine against bare faster-whisper on ~10 min of English.

    .venv/bin/python -m tests.stt.long_audio_bench [--runs 3] [--modes bare,engine]

Each run is a fresh process (so peak RSS is its own); prints wall time, real-time factor, WER
against the text espeak-ng spoke, and peak RSS, then the median per mode. Not collected by
pytest: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.speech import ROOT, long_speech, wer

MODES = ("bare", "bare2", "batched", "engine")


def run_one(mode: str, threads: int, voice: str) -> dict[str, float | str]:
    text, path = long_speech(voice=voice)
    models_dir = ROOT / "models"  # WHISPER_MODELS_DIR's default, shared with the test suite
    from smap_stt.stt.local_models import ensure_bundled_model

    model_path = str(ensure_bundled_model(models_dir))
    started = time.perf_counter()
    if mode == "engine":
        from smap_stt.config import Settings
        from smap_stt.stt.engine import Engine, EngineOptions

        settings = Settings(
            _env_file=None,
            whisper_models_dir=models_dir,
            max_concurrent_jobs=1,
            whisper_cpu_threads=threads,
        )
        engine = Engine(EngineOptions.from_settings(settings))
        engine.load("base")
        loaded = time.perf_counter()
        hypothesis = engine.transcribe(path, model="base", language="en").text
    else:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        # "bare" is faster-whisper's defaults (cpu_threads=0: CTranslate2 picks, 4 threads);
        # "bare2" pins the thread count to the cores we have.
        model = WhisperModel(
            model_path,
            device="cpu",
            compute_type="int8",
            cpu_threads=threads if mode != "bare" else 0,
        )
        loaded = time.perf_counter()
        if mode == "batched":
            pipeline = BatchedInferencePipeline(model)
            segments, _ = pipeline.transcribe(str(path), language="en", beam_size=5, batch_size=8)
        else:
            segments, _ = model.transcribe(str(path), language="en", beam_size=5, vad_filter=True)
        hypothesis = " ".join(segment.text.strip() for segment in segments)
    finished = time.perf_counter()
    from smap_stt.stt.audio import probe

    duration = probe(path).duration
    return {
        "mode": mode,
        "seconds": round(finished - loaded, 2),
        "load_seconds": round(loaded - started, 2),
        "rtf": round((finished - loaded) / duration, 4),
        "wer": round(wer(text, hypothesis), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "audio_seconds": round(duration, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="bare,engine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice, e.g. en-gb")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.threads, args.voice)))
        return
    long_speech(voice=args.voice)  # generate once, outside the timed runs
    results: dict[str, list[dict[str, float | str]]] = {}
    for _ in range(args.runs):
        for mode in args.modes.split(","):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.stt.long_audio_bench",
                    "--one",
                    mode,
                    "--threads",
                    str(args.threads),
                    "--voice",
                    args.voice,
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=Path(__file__).parents[2],
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(result), flush=True)
            results.setdefault(mode, []).append(result)
    for mode, runs in results.items():
        print(
            f"{mode:8s} median: {statistics.median(float(r['seconds']) for r in runs):7.1f} s"
            f"  WER {statistics.median(float(r['wer']) for r in runs):.3f}"
            f"  peak RSS {max(float(r['peak_rss_mb']) for r in runs):.0f} MB"
            f"  ({len(runs)} runs)"
        )


if __name__ == "__main__":
    main()
