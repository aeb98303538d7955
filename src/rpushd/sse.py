"""Server-Sent Events (docs/STREAMS.md, "Server-Sent Events").

Each message is an unnamed event with an ``id:`` line, so that a plain
``EventSource`` tracks the last id for its own reconnections; ``hello``,
``gap`` and ``close`` are named events; a heartbeat is a comment line. The
envelope is compact JSON and so never holds a raw newline, which keeps
every event to a single ``data:`` line.
"""

from __future__ import annotations

from rpushd.deliveries import Delivery, Wire, close_envelope
from rpushd.frames import chunked
from rpushd.http11 import NO_CACHE_HEADERS, http_date

RETRY_MILLISECONDS = 2000
PREAMBLE = b"retry: %d\n\n" % RETRY_MILLISECONDS


def encode_event(data: bytes, *, event: str = "", event_id: str | None = None) -> bytes:
    """One event: optional name and id lines, then one data line."""
    lines = b""
    if event:
        lines += b"event: %s\n" % event.encode()
    if event_id is not None:
        lines += b"id: %s\n" % event_id.encode()
    return lines + b"data: %s\n\n" % data


def _message(delivery: Delivery) -> bytes:
    return encode_event(delivery.envelope(), event_id=delivery.id)


def _control(kind: str, envelope: bytes, item_id: str | None) -> bytes:
    return encode_event(envelope, event=kind, event_id=item_id)


EVENTS = Wire(
    "server-sent events",
    _message,
    _control,
    b":\n\n",
    _control("close", close_envelope("shutdown"), None),
    _control("close", close_envelope("token_expired"), None),
    _control("close", close_envelope("slow"), None),
)
EVENTS_CHUNKED = chunked(EVENTS, "server-sent events, chunked")


def response_head(*, chunked: bool) -> bytes:
    """The head of an event stream; HTTP/1.0 gets a close-delimited body."""
    lines = [
        "HTTP/1.1 200 OK",
        f"Date: {http_date()}",
        "Content-Type: text/event-stream; charset=utf-8",
        *(f"{name}: {value}" for name, value in NO_CACHE_HEADERS),
        "X-Accel-Buffering: no",
        "Transfer-Encoding: chunked" if chunked else "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
