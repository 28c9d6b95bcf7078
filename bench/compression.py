"""(g) Does storing transcripts compressed pay? Size and time of gzip on transcript documents
of one hour of speech (9000 words, the stored document's shape), with and without word
timestamps. The text is the project's long English fixture; times and scores are random but
rounded as the worker rounds them, so the figures are close to a real document's."""

from __future__ import annotations

import gzip
import json
import random
import time
from typing import Any

from bench.common import ROOT

WORDS_PER_HOUR = 9000


def document(n_words: int, *, with_words: bool) -> dict[str, Any]:
    words = (ROOT / "tests" / "fixtures" / "long.txt").read_text().split()
    rng = random.Random(1)
    segments: list[dict[str, Any]] = []
    clock, index = 0.0, 0
    while index < n_words:
        count = rng.randint(8, 16)
        chunk = [words[(index + k) % len(words)] for k in range(count)]
        timed = []
        for word in chunk:
            length = rng.uniform(0.15, 0.5)
            timed.append(
                {
                    "start": round(clock, 3),
                    "end": round(clock + length, 3),
                    "word": " " + word,
                    "probability": round(rng.uniform(0.5, 1), 4),
                }
            )
            clock += length
        segment: dict[str, Any] = {
            "id": len(segments),
            "start": timed[0]["start"],
            "end": timed[-1]["end"],
            "text": " " + " ".join(chunk),
            "avg_logprob": round(rng.uniform(-0.6, -0.1), 4),
            "no_speech_prob": round(rng.uniform(0, 0.1), 4),
        }
        if with_words:
            segment["words"] = timed
        segments.append(segment)
        index += count
    return {
        "job_id": "00000000-0000-0000-0000-000000000000",
        "filename": "talk.mp3",
        "model": "base",
        "language": "en",
        "duration_seconds": round(clock, 3),
        "text": "".join(s["text"] for s in segments).strip(),
        "segments": segments,
    }


def main(quick: bool = False) -> str:
    rows = ["| document (1 h of speech) | JSON | gzip -6 | ratio | compress | decompress |"]
    rows.append("|---|---|---|---|---|---|")
    for with_words in (False, True):
        raw = json.dumps(document(WORDS_PER_HOUR, with_words=with_words)).encode()
        started = time.perf_counter()
        packed = gzip.compress(raw, 6)
        middle = time.perf_counter()
        gzip.decompress(packed)
        done = time.perf_counter()
        rows.append(
            f"| {'with' if with_words else 'without'} word timestamps | {len(raw) / 1e3:.0f} kB "
            f"| {len(packed) / 1e3:.0f} kB | {len(packed) / len(raw):.0%} "
            f"| {(middle - started) * 1e3:.0f} ms | {(done - middle) * 1e3:.0f} ms |"
        )
    table = "\n".join(["### (g) transcript compression", "", *rows, ""])
    print(table)
    return table


if __name__ == "__main__":
    main()
