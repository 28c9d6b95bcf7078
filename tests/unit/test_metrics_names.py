"""Metric names and labels follow Prometheus' conventions; failure reasons stay few."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

from smap_stt import metrics


def ours() -> list[tuple[str, str, list[str]]]:
    found = []
    for family in REGISTRY.collect():
        if family.name.startswith("smap_stt_"):
            labels = sorted({key for s in family.samples for key in s.labels if key != "le"})
            found.append((family.name, family.type, labels))
    return found


def test_names_follow_conventions() -> None:
    names = {name for name, _, _ in ours()}
    assert "smap_stt_jobs_finished" in names  # prometheus-client strips _total from families
    for name, kind, _ in ours():
        assert re.fullmatch(r"smap_stt_[a-z_]+", name), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_factor")), name
        assert not name.endswith(("_ms", "_milliseconds", "_minutes", "_kb", "_mb")), name


def test_no_high_cardinality_labels() -> None:
    allowed = {"status", "model", "reason", "outcome", "status_code", "queue"}
    for family in REGISTRY.collect():
        if family.name.startswith("smap_stt_"):
            for sample in family.samples:
                assert set(sample.labels) - {"le"} <= allowed, (family.name, sample.labels)
    for labels in (m._labelnames for m in vars(metrics).values() if hasattr(m, "_labelnames")):
        assert set(labels) <= allowed


def test_failure_reasons_are_few_classes() -> None:
    cases = {
        "timeout: the job ran longer than JOB_TIMEOUT (60 s)": "timeout",
        "expired: waited more than 10 s in the queue": "expired",
        "purged by operator": "purged",
        "gave up after 4 attempts: the last one stopped": "gave_up",
        "the file is not audio that can be decoded": "audio",
        "unknown model 'x'; available: base": "model",
        "unexpected error: KeyError: 'a'": "unexpected",
        None: "other",
    }
    for text, reason in cases.items():
        assert metrics.failure_reason(text) == reason, text
