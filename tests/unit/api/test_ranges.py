"""HTTP Range parsing for the audio route (RFC 9110 §14): pure, no server."""

from __future__ import annotations

import pytest

from smap_stt.api.ranges import ByteRange, RangeNotSatisfiable, parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=100-", ByteRange(100, 999)),
        ("bytes=900-5000", ByteRange(900, 999)),  # clamped to the end
        ("bytes=-200", ByteRange(800, 999)),
        ("bytes=-5000", ByteRange(0, 999)),  # a suffix longer than the file is all of it
        ("bytes=999-999", ByteRange(999, 999)),
        (" bytes = 10 - 19 ", ByteRange(10, 19)),
    ],
)
def test_one_range_is_served(header: str, expected: ByteRange) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize(
    "header",
    [None, "", "bytes=", "bytes=-", "bytes=9-3", "items=0-9", "bytes=0-9,20-29", "bytes=a-b"],
)
def test_headers_we_cannot_use_mean_the_whole_file(header: str | None) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(("header", "size"), [("bytes=1000-", 1000), ("bytes=-0", 1000)])
def test_a_range_outside_the_file_is_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_an_empty_file_satisfies_no_range() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-10", 0)


def test_content_range_and_length() -> None:
    wanted = ByteRange(100, 199)
    assert wanted.length == 100
    assert wanted.content_range(1000) == "bytes 100-199/1000"
