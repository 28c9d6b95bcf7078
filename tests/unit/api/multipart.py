"""A multipart upload as the ASGI server hands it to the parser, in pieces of a chosen size,
for the in-process tests of `receive_upload`."""

from __future__ import annotations

from starlette.requests import Request

BOUNDARY = "xyzBOUNDARYxyz"


def multipart_body(file_field: str, data: bytes, fields: list[tuple[str, str]]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; '
        'filename="clip.raw"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def streamed_request(body: bytes, chunk: int) -> Request:
    """A POST of `body` whose stream yields it `chunk` bytes at a time."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]

    async def receive() -> dict[str, object]:
        piece = pieces.pop(0) if pieces else b""
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/asr",
        "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())],
    }
    return Request(scope, receive)
