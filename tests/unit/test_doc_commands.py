"""The shell commands in README.md and docs/*.md run as pasted: every block marked sh, bash,
shell or console parses with `shlex`, a URL with a query is quoted (one argument; `&` would cut
it in every shell, `?` is a glob in zsh), and a lone `&` never splits a command. The README's
error list names every status the API answers with."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "zsh"}
_BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def shell_lines(text: str) -> list[str]:
    """Every command line of the shell code blocks, continuation lines joined."""
    lines: list[str] = []
    for language, body in _BLOCK.findall(text):
        if language not in SHELL_LANGUAGES:
            continue
        joined = re.sub(r"\\\n", " ", body)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def shell_words(line: str) -> list[str]:
    """The words as a shell sees them: `&`, `;` and `|` are operators of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    return list(lexer)


def problems(line: str) -> list[str]:
    """What would make `line` not do what it says when pasted into sh, bash or zsh."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        return [f"does not parse ({exc})"]
    found = []
    if "&" in shell_words(line):
        found.append("a lone & runs the command in the background and starts another")
    for word in words:
        if "://" in word and "?" in word:
            # NAME=URL is quoted after the `=`.
            value = re.sub(r"^[A-Za-z_]\w*=", "", word)
            quoted = f'"{value}"' in line or f"'{value}'" in line
            if not quoted:
                found.append(f"URL with a query is not quoted: {word}")
    return found


def test_the_check_catches_what_the_shell_would_do() -> None:
    assert problems("curl http://h/api/v1/tasks?status=COMPLETED&limit=10")
    assert problems("curl http://h/api/v1/tasks?limit=10")  # zsh: no matches found
    assert problems('curl "http://h/x?a=1')
    assert not problems('curl "http://h/api/v1/tasks?status=COMPLETED&limit=10"  # ok')
    assert not problems("curl 'http://h/x?a=1&b=2' && echo done")
    assert not problems('MONGODB_URL="mongodb://db:27017/?replicaSet=rs0"')


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_shell_commands_run_as_pasted(path: Path) -> None:
    found = {line: problems(line) for line in shell_lines(path.read_text())}
    assert {line: p for line, p in found.items() if p} == {}


def test_the_tour_lists_jobs_with_both_query_parameters() -> None:
    lines = [line for line in shell_lines((ROOT / "README.md").read_text()) if "status=" in line]
    assert lines, "the README tour lists jobs by status"
    url = next(word for word in shell_words(lines[0]) if "://" in word)
    assert url.endswith("?status=COMPLETED&limit=10")


def _statuses_in_code() -> set[int]:
    """Every error status the API's code names, and every one its schema declares."""
    found: set[int] = set()
    for source in (ROOT / "src" / "smap_stt").rglob("*.py"):
        text = source.read_text()
        found |= {int(n) for n in re.findall(r"status_code=([45]\d\d)", text)}
        found |= {int(n) for n in re.findall(r"_error\(\s*([45]\d\d)", text)}
        found |= {int(n) for n in re.findall(r"InvalidRequest\([^)]*?\b([45]\d\d)\)", text)}
    schema = json.loads((ROOT / "docs" / "openapi.json").read_text())
    for operations in schema["paths"].values():
        for operation in operations.values():
            found |= {int(code) for code in operation["responses"] if code[0] in "45"}
    found.add(405)  # any route, another method
    found.discard(500)  # a bug, never an answer we mean to give; the handler logs it
    return found


def test_readme_error_list_names_every_status() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = {int(n) for n in re.findall(r"^\| ([45]\d\d) \|", readme, re.MULTILINE)}
    assert {400, 404, 409, 413, 415, 422, 503} <= _statuses_in_code()
    missing = _statuses_in_code() - listed
    assert not missing, f"README's error table lacks {sorted(missing)}: add a row for each"
