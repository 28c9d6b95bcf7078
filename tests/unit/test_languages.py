from __future__ import annotations

import pytest
from faster_whisper.tokenizer import _LANGUAGE_CODES

from smap_stt.errors import InvalidRequest
from smap_stt.stt.languages import LANGUAGES, normalize_language


def test_the_list_is_faster_whispers_and_every_code_has_a_name() -> None:
    """Our own copy, so the API needs no faster-whisper: it must stay the tokenizer's."""
    assert list(LANGUAGES) == list(_LANGUAGE_CODES)
    assert LANGUAGES["vi"] == "Vietnamese"
    assert all(name != code for code, name in LANGUAGES.items())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", None),
        ("AUTO", None),
        ("vi", "vi"),
        ("EN", "en"),
        (" fr ", "fr"),
        ("English", "en"),
        ("vietnamese", "vi"),
        ("en-US", "en"),
        ("pt_BR", "pt"),
        ("haw", "haw"),
        ("Mandarin", "zh"),
        ("Haitian Creole", "ht"),
    ],
)
def test_normalize_language_accepts_codes_names_and_tags(value: str, expected: str | None) -> None:
    assert normalize_language(value) == expected


@pytest.mark.parametrize("value", ["", "xx", "klingon", "e", "english!"])
def test_unknown_language_is_a_422_listing_the_codes(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        normalize_language(value)
    assert caught.value.status_code == 422
    assert "auto" in str(caught.value)
    assert "vi" in str(caught.value).split(": ", 1)[1].split(", ")
