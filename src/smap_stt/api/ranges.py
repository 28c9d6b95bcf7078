"""HTTP byte ranges (RFC 9110 §14) for serving stored audio: pure parsing, no I/O.

One range is served as 206; a header we cannot use (bad syntax, another unit, several ranges)
is ignored and the whole object is sent, which the RFC allows and every player handles. A range
that starts past the end is the one case answered with 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "RangeNotSatisfiable", "parse_range"]

_SINGLE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(ValueError):
    """The Range header is well formed but no byte of it is inside the object."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range `header` asks for within an object of `size` bytes, clamped to it;
    None means "send the whole object"; `RangeNotSatisfiable` means answer 416."""
    if not header:
        return None
    match = _SINGLE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None  # invalid syntax: ignored, per RFC 9110 §14.1.1
        if start >= size:
            raise RangeNotSatisfiable(f"the range starts at byte {start}; the file has {size}")
        return ByteRange(start, min(end, size - 1))
    if not last:
        return None  # "bytes=-"
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable(f"the range asks for the last {suffix} of {size} bytes")
    return ByteRange(max(size - suffix, 0), size - 1)
