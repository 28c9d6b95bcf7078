"""Prometheus metrics from the real service: the queue gauges follow a backlog, counters move
when jobs complete, API_WORKERS=2 loses no count, and the dashboard and alert rules name only
metrics the service exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import Clip
from tests.ops.conftest import exported_names, scrape, total
from tests.procs import ROOT, Service, free_port, upload, wait_final

DASHBOARD = ROOT / "deploy" / "grafana" / "smap-stt.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


@pytest.fixture(scope="module")
def stack(module_service: Callable[..., Service]) -> Service:
    """`api` with two processes; workers are started by the tests."""
    svc = module_service(API_WORKERS=2)
    svc.start("api")
    return svc


def worker_url(svc: Service) -> str:
    return f"http://127.0.0.1:{svc.env['WORKER_METRICS_PORT']}/metrics"


def test_backlog_then_completion(stack: Service, tiny_clip: Clip) -> None:
    api = f"{stack.url}/metrics"
    with stack.client() as client:
        jobs = [upload(client, tiny_clip.path) for _ in range(3)]
        before = scrape(api)
        assert total(before, "smap_stt_queue_messages", queue="work") == 3
        assert total(before, "smap_stt_queue_consumers") == 0
        assert total(before, "smap_stt_queue_oldest_pending_seconds") > 0
        assert total(before, "smap_stt_jobs_accepted_total", model="base") == 3
        assert total(before, "smap_stt_upload_bytes_total") == 3 * tiny_clip.path.stat().st_size

        stack.env["WORKER_METRICS_PORT"] = str(free_port())
        stack.start("worker")
        for job_id in jobs:
            assert wait_final(client, job_id)["status"] == "COMPLETED"
    after = scrape(api)
    assert total(after, "smap_stt_queue_messages", queue="work") == 0
    assert total(after, "smap_stt_queue_consumers") == 1
    assert total(after, "smap_stt_queue_oldest_pending_seconds") == 0
    worker = scrape(worker_url(stack))
    assert total(worker, "smap_stt_jobs_finished_total", status="COMPLETED", model="base") == 3
    assert total(worker, "smap_stt_job_processing_seconds_count", model="base") == 3
    assert total(worker, "smap_stt_job_real_time_factor_count", model="base") == 3
    assert total(worker, "smap_stt_audio_seconds_total", model="base") > 3 * 1.0
    assert total(worker, "smap_stt_worker_slots") == 1
    assert total(worker, "smap_stt_jobs_in_flight") == 0
    assert total(worker, "smap_stt_model_load_seconds_count", model="base") == 1


def test_counts_add_up_across_api_processes(stack: Service) -> None:
    """Many refused uploads spread over both API processes; every scrape (whichever process
    answers it) reports the sum of all."""
    sent = 60
    for _ in range(sent):  # a new connection each: the kernel spreads them over the processes
        answer = httpx.post(
            f"{stack.url}/api/v1/tasks/upload",
            data={"language": "en"},
            headers={"Connection": "close"},
            timeout=30,
        )
        assert 400 <= answer.status_code < 500, answer.text
    for _ in range(8):  # several scrapes: each may be answered by either process
        values = scrape(f"{stack.url}/metrics")
        assert total(values, "smap_stt_uploads_refused_total") == sent
    (folder,) = Path(stack.env["TEMP_DIR"]).glob("metrics-*")
    per_process = [
        sum(
            value
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
            if "smap_stt_uploads_refused" in key
        )
        for path in folder.glob("counter_*.db")
    ]
    assert sum(per_process) == sent
    assert len([count for count in per_process if count]) == 2, per_process


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    found += re.findall(r"expr:\s*(?:\|\n)?((?:.|\n)*?)\n\s+for:", RULES.read_text())
    return found


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_dashboard_and_rules_name_only_exported_metrics(stack: Service) -> None:
    expressions = _expressions()
    assert len(expressions) >= 20
    named = {name for e in expressions for name in re.findall(r"\bsmap_stt_[a-z_]+", e)}
    assert len(named) >= 15
    exported = exported_names(f"{stack.url}/metrics") | exported_names(worker_url(stack))
    assert named - exported == set()
