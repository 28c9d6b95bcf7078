"""Schemathesis fuzzes the API described by docs/openapi.json against a real `serve`: no input
it can make may get a 5xx, and every answer must match the documented status codes, content
types and schemas (405s must name the allowed methods). It sends an API key (issue 12), so it
reaches every operation past authentication, and checks that requests without one get 401.

Deterministic (`--generation-deterministic`: no random seed, no example database) and bounded
(a fixed number of examples per operation, a hard subprocess timeout); about 15 s here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Clip, _delete_topology
from tests.procs import ROOT, SMAP_STT, Service, base_env, free_port, upload, wait_final

SCHEMA = ROOT / "docs" / "openapi.json"
# Valid-by-schema uploads that are not audio are refused with 415/422 on purpose: the schema
# cannot say "must decode as audio", so schemathesis' positive-data check does not apply.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = base_env(data_dir, API_PORT=port, MAX_UPLOAD_SIZE_MB=2, RATE_LIMIT_PER_MINUTE=100000)
    service = Service(env, data_dir, port)
    try:  # a serve that fails to come up is stopped too, not left running
        service.start("serve")
        created = subprocess.run(
            [*SMAP_STT, "keys", "create", "fuzz", "--max-priority", "10"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        service.env["TEST_API_KEY"] = created.stdout.strip()
        yield service
    finally:
        service.stop_all()
        asyncio.run(
            _delete_topology(
                service.env["RABBITMQ_EXCHANGE_NAME"], service.env["RABBITMQ_QUEUE_NAME"]
            )
        )


def _schemathesis(svc: Service, *args: str, config: Path | None = None, examples: int = 60) -> None:
    command = [str(Path(sys.executable).with_name("schemathesis")), "--no-color"]
    if config is not None:
        command += ["--config-file", str(config)]
    command += [
        "run",
        str(SCHEMA),
        "--url",
        svc.url,
        *CHECKS,
        "--header",
        f"Authorization: Bearer {svc.env['TEST_API_KEY']}",
        "--max-examples",
        str(examples),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--max-failures",
        "5",
        *args,
    ]
    log_before = len(svc.procs[0].log())
    done = subprocess.run(
        command, cwd=svc.data_dir, capture_output=True, text=True, timeout=300, check=False
    )
    server_log = svc.procs[0].log()[log_before:]
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert " 500" not in done.stdout
    # Nothing the fuzzer sent reached the catch-all handler.
    assert "unexpected error" not in server_log, server_log[-4000:]
    assert "Exception in ASGI application" not in server_log, server_log[-4000:]
    # Refused uploads leave nothing behind.
    spooled = [p for p in (svc.data_dir / "tmp").glob("uploads*/**/*") if p.is_file()]
    assert spooled == []


DIALECTS = "^/(v1/|asr|detect-language)"


def test_fuzz_every_operation(svc: Service) -> None:
    _schemathesis(svc, "--exclude-path-regex", DIALECTS)


def test_fuzz_the_dialects(svc: Service) -> None:
    """OpenAI's /v1 and whisper-asr-webservice's routes (in their own run: the time limit)."""
    _schemathesis(svc, "--include-path-regex", DIALECTS)


def test_fuzz_operations_on_a_real_job(svc: Service, tiny_clip: Clip, tmp_path: Path) -> None:
    """With a completed job's id the fuzzer reaches the real answers (result, transcript
    download, 409 on cancel) instead of 404 only."""
    with svc.client() as client:
        client.headers["Authorization"] = f"Bearer {svc.env['TEST_API_KEY']}"
        job_id = upload(client, tiny_clip.path, language="en")
        assert wait_final(client, job_id)["status"] == "COMPLETED"
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.job_id" = "{job_id}"\n')
    # DELETE is left out here: it would remove the job before the others see it.
    _schemathesis(
        svc,
        "--include-path-regex",
        re.escape("{job_id}"),
        "--exclude-method",
        "DELETE",
        config=config,
        examples=20,
    )
