"""The CLI client's pieces that need no server: what it imports and what it sends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from smap_stt import client
from smap_stt.cli import build_parser


def test_the_client_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, smap_stt.client; "
        "print(sorted(m for m in sys.modules if m.startswith(('smap_stt', 'faster_whisper', "
        "'ctranslate2', 'numpy', 'fastapi', 'pydantic_settings'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "['smap_stt', 'smap_stt.client']"


def test_the_api_key_goes_as_a_bearer_token() -> None:
    args = build_parser().parse_args(
        ["wait", "j1", "--api-key", "s3cret", "--server", "http://h:1/"]
    )
    with client._http(args) as http:
        assert http.headers["Authorization"] == "Bearer s3cret"
        assert str(http.base_url) == "http://h:1"
    args = build_parser().parse_args(["result", "j1"])
    with client._http(args) as http:
        assert "Authorization" not in http.headers


def test_the_api_key_and_server_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMAP_STT_API_KEY", "k")
    monkeypatch.setenv("SMAP_STT_SERVER", "http://elsewhere:9")
    args = build_parser().parse_args(["result", "j1"])
    assert (args.api_key, args.server) == ("k", "http://elsewhere:9")
