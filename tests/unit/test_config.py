"""Settings as a deployment reads them: `.env.example` copied to `.env` as shipped, a `.env`
with every value changed, and the comma form of list settings from the environment. Each test
runs in a temporary working directory, since Settings reads `.env` from there."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from smap_stt.config import Settings, split_setting

ROOT = Path(__file__).resolve().parents[2]

# Values for fields whose rules a generic change would break (kept small on purpose: every
# other field is changed by its type in `_changed`).
_CHANGED: dict[str, tuple[str, object]] = {
    "max_concurrent_jobs": ("3", 3),  # its default depends on the machine
    "retry_delays": ("7, 8,9", [7, 8, 9]),
    "retention_completed_days": ("30", 30.0),  # default None: RETENTION_DAYS applies
    "retention_failed_days": ("7", 7.0),
    "retention_cancelled_days": ("1.5", 1.5),
    "whisper_model_aliases": ("medium=base,large=base", "medium=base,large=base"),
    "url_signing_secret": ("changed-secret", SecretStr("changed-secret")),  # issue 12
    "metrics_token": ("changed-token", SecretStr("changed-token")),
}


@pytest.fixture
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no setting in the environment."""
    fields = set(Settings.model_fields)
    for name in list(os.environ):
        if name.lower() in fields:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _changed(name: str, default: object) -> tuple[str, object]:
    """A valid value unlike the default: (text for .env, the value Settings should hold)."""
    if name in _CHANGED:
        return _CHANGED[name]
    annotation = Settings.model_fields[name].annotation
    if typing.get_origin(annotation) is typing.Literal:
        choice = next(c for c in typing.get_args(annotation) if c != default)
        return str(choice).lower(), choice  # lower case: the validator takes it too
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 2), default + 2
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    if isinstance(default, Path):
        return f"elsewhere/{name}", Path(f"elsewhere/{name}")
    if isinstance(default, str):
        return f"changed-{name}", f"changed-{name}"
    if isinstance(default, list):
        return "1, 2,3", [1, 2, 3]
    raise AssertionError(f"no changed value for {name} ({annotation}): add one to _CHANGED")


def test_env_example_as_shipped_gives_the_defaults(clean_cwd: Path) -> None:
    (clean_cwd / ".env").write_text((ROOT / ".env.example").read_text())
    loaded = Settings()
    defaults = Settings(_env_file=None)
    for name in Settings.model_fields:
        assert getattr(loaded, name) == getattr(defaults, name), name
    assert loaded.retry_delays == [5, 30, 120]


def test_env_file_with_every_value_changed(clean_cwd: Path) -> None:
    defaults = Settings(_env_file=None)
    lines, expected = [], {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if not line or line.startswith("#"):
            lines.append(line)
            continue
        key = line.partition("=")[0]
        name = key.lower()
        text, value = _changed(name, getattr(defaults, name))
        lines.append(f"{key}={text}")
        expected[name] = value
    assert set(expected) == set(Settings.model_fields), ".env.example misses settings"
    (clean_cwd / ".env").write_text("\n".join(lines) + "\n")
    loaded = Settings()
    for name, value in expected.items():
        assert getattr(loaded, name) == value, name


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5,30,120", [5, 30, 120]), (" 1 , 2 ", [1, 2]), ("[4, 5]", [4, 5]), ("9", [9])],
)
def test_list_settings_take_the_comma_form_from_the_environment(
    clean_cwd: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[int]
) -> None:
    monkeypatch.setenv("RETRY_DELAYS", text)
    assert Settings().retry_delays == expected


def test_every_list_setting_takes_the_comma_form(
    clean_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever list settings are added later: each reads `a,b` from the environment."""
    listed = [
        name
        for name, field in Settings.model_fields.items()
        if typing.get_origin(field.annotation) in (list, set, tuple)
    ]
    assert "retry_delays" in listed
    for name in listed:
        item = typing.get_args(Settings.model_fields[name].annotation)[0]
        monkeypatch.setenv(name.upper(), "1,2" if item is int else "a,b")
        value: Any = getattr(Settings(), name)
        assert list(value) == ([1, 2] if item is int else ["a", "b"]), name


def test_dict_values_take_the_comma_form() -> None:
    assert split_setting("a=1, b = 2", dict) == {"a": "1", "b": "2"}
    assert split_setting('{"a": 1}', dict) == {"a": 1}


def test_a_bad_list_value_is_a_validation_error(
    clean_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRY_DELAYS", "5,soon")
    with pytest.raises(ValidationError, match="retry_delays"):
        Settings()
