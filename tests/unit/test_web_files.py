"""The page's static files: everything they reference is shipped, and the language list the
page offers is the server's."""

from __future__ import annotations

import json
import re

from smap_stt.api.routes.page import WEB_DIR
from smap_stt.stt.languages import LANGUAGES


def test_the_page_references_only_its_own_shipped_files() -> None:
    html = (WEB_DIR / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"#]+)"', html)
    local = [ref for ref in references if ref.startswith("/web/")]
    assert local, references
    for ref in local:
        assert (WEB_DIR / ref.removeprefix("/web/")).is_file(), ref
    assert not [ref for ref in references if "://" in ref or ref.startswith("//")]


def test_every_module_import_resolves_to_a_shipped_file() -> None:
    for script in WEB_DIR.glob("*.js"):
        for target in re.findall(r'from\s+"(\./[^"]+)"', script.read_text()):
            assert (WEB_DIR / target).is_file(), f"{script.name} imports {target}"


def test_the_page_offers_the_servers_languages() -> None:
    source = (WEB_DIR / "languages.js").read_text()
    pairs = json.loads(source[source.index("[") : source.rindex("]") + 1].replace(",\n]", "\n]"))
    assert dict(pairs) == LANGUAGES
