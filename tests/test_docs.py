"""The generated docs stay true to the code: regenerate with `python scripts/gen_docs.py`."""

from __future__ import annotations

import pytest
from scripts import gen_docs


@pytest.mark.parametrize("path", list(gen_docs.outputs()), ids=lambda p: p.name)
def test_generated_docs_are_current(path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    expected = gen_docs.outputs()[path]
    assert path.exists(), f"{path} is missing: run python scripts/gen_docs.py"
    assert path.read_text() == expected, f"{path} is stale: run python scripts/gen_docs.py"


def test_readme_opens_with_the_two_commands() -> None:
    readme = (gen_docs.ROOT / "README.md").read_text()
    first_code = readme.split("```", 2)[1]
    assert "make run" in first_code and "make test" in first_code
