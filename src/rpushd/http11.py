"""HTTP requests and responses as plain values, and their bytes on the wire.

No sockets here: the connection (:mod:`rpushd.connection`) assembles a
:class:`Request` from parser callbacks and writes what
:func:`serialize_response` returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

import orjson

JSON_TYPE = "application/json"

# PROTOCOL.md lists these on streams and stats responses.
NO_CACHE_HEADERS = (
    ("Cache-Control", "no-cache, no-store, must-revalidate, no-transform"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
)

STREAM_HEADERS = (
    ("Content-Type", "application/octet-stream"),
    *NO_CACHE_HEADERS,
    ("X-Content-Type-Options", "nosniff"),
    # Tells nginx not to buffer the body even if its config would.
    ("X-Accel-Buffering", "no"),
)


@dataclass(slots=True)
class Request:
    """One parsed request; header names are lowercase."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""
    http_version: str = "1.1"


@dataclass(slots=True)
class Response:
    """A complete response with a body of known length."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def error_response(
    status: int, message: str, *, close: bool = False, **headers: str
) -> Response:
    """A short JSON error body: ``{"error": "..."}``."""
    return Response(
        status,
        orjson.dumps({"error": message}),
        JSON_TYPE,
        [(name.replace("_", "-"), value) for name, value in headers.items()],
        close,
    )


def serialize_response(
    response: Response, *, keep_alive: bool, head_only: bool = False
) -> bytes:
    """The status line, headers and body of ``response``."""
    lines = [_status_line(response.status), f"Date: {http_date()}"]
    if response.content_type:
        lines.append(f"Content-Type: {response.content_type}")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    if response.status != 204:
        lines.append(f"Content-Length: {len(response.body)}")
    if not keep_alive or response.close:
        lines.append("Connection: close")

    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def stream_head(*, chunked: bool) -> bytes:
    """The head of a stream response; HTTP/1.0 gets a close-delimited body."""
    lines = ["HTTP/1.1 200 OK", f"Date: {http_date()}"]
    lines.extend(f"{name}: {value}" for name, value in STREAM_HEADERS)
    lines.append("Transfer-Encoding: chunked" if chunked else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time as an IMF-fixdate, computed once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


# Computed once: looking a status up in the HTTPStatus enum costs more than
# the rest of a small response.
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status} {status.phrase}" for status in HTTPStatus
}


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown"
